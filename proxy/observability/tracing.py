"""OpenTelemetry tracing of the sidecar: a server span per request, a client span per attempt at
a PostgreSQL call, events for what the resilience did, and the replay linked to the requests
whose writes it applies.

Imported only when tracing is on (`proxy.observability.spans.load`), so that the sidecar runs
without the packages and pays nothing for them when off. Configured by the standard variables:
`OTEL_TRACES_EXPORTER` (`otlp`, over HTTP with protobuf, and `console`), `OTEL_EXPORTER_OTLP_*`,
`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (read by the SDK; `parentbased_always_on`
unless set), `OTEL_SERVICE_NAME` (`registry-proxy` unless set), `OTEL_RESOURCE_ATTRIBUTES` and
`OTEL_BSP_*`.

The provider is the sidecar's own, not OpenTelemetry's global one: several apps in one process
(the tests) each keep theirs, and a library that traces through the global API is not sent to
the sidecar's exporter by surprise. For the same reason the caller's context is read with the
W3C propagator itself (`traceparent`, `tracestate`), not the global one.

A span is started only where it can be recorded: the attempts of a request that is not sampled
(or of background work outside a replay) get none, so a 1% sample costs little more than the
sampling decision on the other 99%.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import metadata

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "registry-proxy"
# A context with no span in it: what a request without `traceparent`, or a replay, starts from
# (not whatever the task that runs it happens to carry).
_ROOT = Context()
_NOTHING = nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()
_CLOSE_TIMEOUT_S = 5.0


def build(
    exporters: Sequence[str],
    *,
    exporter: SpanExporter | None,
    routes: Mapping[str, str],
    classify: Callable[[BaseException], str],
    describe: Callable[[BaseException], str],
) -> Tracing:
    """A tracer provider exporting to ``exporter`` as each span ends (tests, benchmark), or in
    batches to the named ``exporters``."""
    # What the environment says (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) wins.
    resource = Resource({"service.version": _version()}).merge(Resource.create())
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # Shut down by the app when it stops (`Tracing.close`), not at interpreter exit.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in exporters:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return Tracing(provider, routes=routes, classify=classify, describe=describe)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Its endpoint, headers, timeout and compression come from OTEL_EXPORTER_OTLP_*.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _version() -> str:
    try:
        return metadata.version(SERVICE_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


class _ServerSpan:
    """A request's span; current, when it records, until it ends. One that does not record (not
    sampled) is not made current: what would look for it there records nothing either."""

    __slots__ = ("_span", "_token", "trace_id")

    def __init__(self, span: trace.Span, parent: Context) -> None:
        self._span = span
        self.trace_id = span.get_span_context().trace_id
        self._token = (
            otel_context.attach(trace.set_span_in_context(span, parent))
            if span.is_recording()
            else None
        )

    def end(self, status: int, source: str) -> None:
        token = self._token
        if token is None:
            return  # a span that does not record has nothing to end
        span = self._span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("registry_proxy.source", source)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(token)


class Tracing:
    """The sidecar's tracer: the HTTP layer's `ServerSpans` and the service's `Spans`."""

    def __init__(
        self,
        provider: TracerProvider,
        *,
        routes: Mapping[str, str],
        classify: Callable[[BaseException], str],
        describe: Callable[[BaseException], str],
    ) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("proxy", _version())
        self._routes = routes
        self._classify = classify
        self._describe = describe

    # -- the HTTP layer ------------------------------------------------------------------------

    def start(
        self, method: str, route: str, request_id: str, headers: Mapping[str, str]
    ) -> _ServerSpan:
        parent = _PROPAGATOR.extract(headers, _ROOT) if "traceparent" in headers else _ROOT
        path = self._routes.get(route)
        span = self._tracer.start_span(
            f"{method} {path}" if path is not None else method, context=parent, kind=SpanKind.SERVER
        )
        if span.is_recording():  # the attributes of the other 99% would be thrown away
            span.set_attribute("http.request.method", method)
            span.set_attribute("registry_proxy.request_id", request_id)
            if path is not None:
                span.set_attribute("http.route", path)
        return _ServerSpan(span, parent)

    # -- the service ---------------------------------------------------------------------------

    def event(self, name: str, attributes: Mapping[str, str | int | float | bool]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    def retried(self, attempt: int, exc: BaseException, delay_s: float) -> None:
        """A retry of the current call is coming (from the retry loop's hook)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "retry",
                {
                    "attempt": attempt,
                    "delay_s": delay_s,
                    "error.kind": self._classify(exc),
                    "error": self._describe(exc),
                },
            )

    def attempt(self, operation: str, number: int) -> AbstractContextManager[object]:
        if not trace.get_current_span().is_recording():
            return _NOTHING
        return self._attempt(operation, number)

    @contextmanager
    def _attempt(self, operation: str, number: int) -> Iterator[None]:
        span = self._tracer.start_span(
            f"PostgreSQL {operation}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": operation,
                "registry_proxy.attempt": number,
            },
        )
        try:
            yield
        except asyncio.CancelledError:
            # The request's deadline ran out during the call, or the request went away.
            span.set_attribute("registry_proxy.outcome", "cancelled")
            raise
        except Exception as exc:
            span.set_attribute("registry_proxy.outcome", self._classify(exc))
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, self._describe(exc)))
            raise
        else:
            span.set_attribute("registry_proxy.outcome", "success")
        finally:
            span.end()

    def context(self) -> str | None:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"

    @contextmanager
    def replay(self, journaled: Sequence[tuple[str, str]]) -> Iterator[None]:
        links = []
        for op_id, traceparent in journaled:
            linked = trace.get_current_span(
                _PROPAGATOR.extract({"traceparent": traceparent}, _ROOT)
            ).get_span_context()
            if linked.is_valid:
                links.append(Link(linked, {"registry_proxy.op_id": op_id}))
        # A trace of its own: the requests it applies ended long ago, in traces of their own.
        span = self._tracer.start_span("journal replay", context=_ROOT, links=links)
        token = otel_context.attach(trace.set_span_in_context(span, _ROOT))
        try:
            yield
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, self._describe(exc)))
            raise
        finally:
            span.end()
            otel_context.detach(token)

    # -- the app -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Export what is left and stop, waiting a few seconds at most: an exporter retrying
        against an unreachable collector must not hold up the sidecar's exit."""
        done = threading.Event()

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        await asyncio.to_thread(done.wait, _CLOSE_TIMEOUT_S)
