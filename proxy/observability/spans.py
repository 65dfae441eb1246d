"""Tracing as the rest of the sidecar sees it, without OpenTelemetry: whether it is on, what a
request's span offers the HTTP layer, and the one call that loads it.

Tracing is off unless the environment names an exporter (`OTEL_TRACES_EXPORTER`, or an OTLP
endpoint, whose exporter is the specification's default). Off, `load` gives None: nothing of
OpenTelemetry is imported, no tracer provider exists, and every place that could trace checks
one attribute and goes on. On, it imports `proxy.observability.tracing`, which needs the
`tracing` extra; without the packages the sidecar says so once and runs untraced, since a
missing diagnostic must not take it out of its app's request path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog

if TYPE_CHECKING:
    from proxy.observability.tracing import Tracing

log = structlog.get_logger(__name__)

KNOWN_EXPORTERS = ("otlp", "console")


class ServerSpan(Protocol):
    """A request's span, from the gate's `enter` to its `account`."""

    @property
    def trace_id(self) -> int:
        """For the log lines of the request (sampled or not)."""
        ...

    def end(self, status: int, source: str) -> None:
        """The answer went out with ``status``, from ``source`` (`X-Registry-Source`)."""
        ...


class ServerSpans(Protocol):
    def start(
        self, method: str, route: str, request_id: str, headers: Mapping[str, str]
    ) -> ServerSpan:
        """The span of a request to ``route`` (a route's name), continuing the caller's trace
        when ``headers`` carry a `traceparent`; current until it ends, if it records."""
        ...


def exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in raw.split(",")]
    unknown = [name for name in names if name and name != "none" and name not in KNOWN_EXPORTERS]
    if unknown:
        log.warning(
            "tracing: unknown exporter ignored", exporters=unknown, known=list(KNOWN_EXPORTERS)
        )
    return [name for name in names if name in KNOWN_EXPORTERS]


def load(
    *,
    routes: Mapping[str, str],
    classify: Callable[[BaseException], str],
    describe: Callable[[BaseException], str],
    exporter: Any = None,
) -> Tracing | None:
    """The sidecar's tracing as the environment configures it, or None when it is off.

    ``routes`` maps route names to their paths (the spans' names), ``classify`` and
    ``describe`` say what a failed database attempt was. ``exporter`` (an OpenTelemetry
    `SpanExporter`) turns tracing on with it alone, whatever the environment says of exporters;
    the tests and the benchmark use it."""
    names = exporters(os.environ)
    if exporter is None and not names:
        return None
    try:
        from proxy.observability.tracing import build
    except ImportError as exc:
        log.warning(
            "tracing asked for, but OpenTelemetry is not installed: running untraced "
            "(install registry-proxy[tracing])",
            error=str(exc),
        )
        return None
    return build(names, exporter=exporter, routes=routes, classify=classify, describe=describe)
