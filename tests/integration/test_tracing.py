"""Tracing through the sidecar, on a real PostgreSQL: the caller's trace continued by a server
span per request (the front door's get by id included), a span per database attempt under it,
events for retries, breaker refusals, fallbacks and journaled writes, and the replay of a
journaled write linked to the request that was answered 202.

The spans are caught by the SDK's in-memory exporter, given to the app factory: the same path
the environment's exporters take (`proxy.observability.spans.load`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import proxy.resilience as resilience
from proxy.app import BREAKER, SYNC, TRACING, create_app
from proxy.http import keys
from proxy.http.front import FrontDoor
from proxy.observability.logging import configure
from proxy.store.embedded import EmbeddedPostgres
from tests.conftest import (
    Api,
    SidecarTestServer,
    Tokens,
    agent_body,
    app_of,
    eventually,
    make_settings,
)

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
FAST_BREAKER = {
    "failure_threshold": 3,
    "open_base_ms": 200,
    "open_max_ms": 1000,
    "probe_interval_ms": 50,
    "probe_timeout_ms": 300,
    "half_open_successes": 2,
}

Traced = Callable[..., Awaitable[tuple[Api, InMemorySpanExporter]]]


def traceparent(trace_id: int = CALLER_TRACE, span_id: int = CALLER_SPAN) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01", "tracestate": "caller=1"}


@pytest.fixture(autouse=True)
def _no_exporter_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory exporter is the only one: a developer's OTEL_* must not add theirs."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def traced(
    migrated_dsn: str,
    tokens: Tokens,
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> Traced:
    """A sidecar app whose spans go to an in-memory exporter, with settings overrides."""
    resilience.set_testing(False)

    async def factory(dsn: str | None = None, **overrides: Any) -> tuple[Api, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        settings = make_settings(dsn or migrated_dsn, tokens, tmp_path / "journal", **overrides)
        app = create_app(settings, span_exporter=exporter)
        client = await aiohttp_client(SidecarTestServer(app))
        assert await app[keys.SERVICE].db.wait_ready(20), "database did not become ready"
        sync = app[SYNC]
        if sync is not None:
            async with asyncio.timeout(20):
                await sync.synced.wait()
        assert isinstance(client.server.runner.server.request_handler, FrontDoor)  # type: ignore[union-attr]
        return Api(client, tokens.writer), exporter

    return factory


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone, so stopping it hurts no other test."""
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.cleanup()


def server_span(exporter: InMemorySpanExporter, trace_id: int = CALLER_TRACE) -> ReadableSpan:
    [span] = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.context.trace_id == trace_id
    ]
    return span


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (
            s
            for s in exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ),
        key=lambda s: s.start_time or 0,
    )


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_a_request_continues_the_callers_trace_with_a_span_per_database_call(
    traced: Traced,
) -> None:
    api, exporter = await traced()
    status, _, _ = await api.call(
        "POST", "/v1/agents", agent_body("t-1"), headers=traceparent(span_id=1)
    )
    assert status == 201
    register = server_span(exporter)
    assert register.name == "POST /v1/agents"
    assert register.parent is not None and register.parent.is_remote
    assert register.parent.span_id == 1
    [write] = children(exporter, register)
    assert (write.name, write.kind) == ("PostgreSQL register", SpanKind.CLIENT)
    exporter.clear()

    # The front door's get by id: the same span, the same continuation, in database mode.
    status, _, headers = await api.call("GET", "/v1/agents/t-1", headers=traceparent())
    assert status == 200 and headers["X-Registry-Source"] == "database"
    span = server_span(exporter)
    assert span.name == "GET /v1/agents/{agent_id}"
    assert span.parent is not None and span.parent.span_id == CALLER_SPAN
    assert span.context.trace_state.get("caller") == "1"
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/v1/agents/{agent_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["registry_proxy.source"] == "database"
    assert attributes["registry_proxy.request_id"] == headers["X-Request-ID"]
    [read] = children(exporter, span)
    assert read.name == "PostgreSQL get_agent"
    assert dict(read.attributes or {}) == {
        "db.system.name": "postgresql",
        "db.operation.name": "get_agent",
        "registry_proxy.attempt": 1,
        "registry_proxy.outcome": "success",
    }

    # Without a traceparent the request starts a trace of its own; the access line of an
    # answered error names it beside the request id.
    exporter.clear()
    configure(level="info", fmt="json")
    try:
        with structlog.testing.capture_logs() as logs:
            status, _, headers = await api.call("GET", "/v1/agents/nobody")
    finally:
        configure(level="warning", fmt="json")
    assert status == 404
    [own] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert own.parent is None
    [line] = [e for e in logs if e["event"] == "request"]
    assert line["request_id"] == headers["X-Request-ID"]
    assert line["trace_id"] == f"{own.context.trace_id:032x}"


async def test_a_retried_call_has_an_event_and_a_span_per_attempt(
    traced: Traced, db: asyncpg.Connection
) -> None:
    api, exporter = await traced()
    status, _, _ = await api.call("POST", "/v1/agents", agent_body("r-1"))
    assert status == 201
    exporter.clear()
    # The read waits on a lock held here; its backend is terminated while it waits (57P01, an
    # infrastructure failure), so the retry loop tries again on a new connection.
    async with db.transaction():
        await db.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        read = asyncio.ensure_future(api.call("GET", "/v1/agents/r-1", headers=traceparent()))
        waiting: list[int] = []

        async def blocked() -> bool:
            waiting[:] = [
                r["pid"]
                for r in await db.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
            return bool(waiting)

        await eventually(blocked, message="the read waits on the lock")
        for pid in waiting:
            await db.execute("SELECT pg_terminate_backend($1)", pid)
    status, _, headers = await read
    assert status == 200 and headers["X-Registry-Source"] == "database"

    span = server_span(exporter)
    [retry] = events(span, "retry")
    assert retry["attempt"] == 1 and retry["error.kind"] == "infrastructure"
    assert isinstance(retry["delay_s"], float) and retry["delay_s"] >= 0
    attempts = children(exporter, span)
    outcomes = [
        (
            dict(a.attributes or {})["registry_proxy.attempt"],
            dict(a.attributes or {})["registry_proxy.outcome"],
        )
        for a in attempts
    ]
    assert outcomes == [(1, "infrastructure"), (2, "success")]
    assert not attempts[0].status.is_ok


async def test_an_outage_shows_in_events_and_the_replay_links_to_the_acknowledged_request(
    own_pg: EmbeddedPostgres, traced: Traced
) -> None:
    api, exporter = await traced(
        own_pg.dsn, breaker=FAST_BREAKER, request={"default_timeout_ms": 500}
    )
    app = app_of(api)
    for agent_id in ("o-1", "o-2"):
        status, _, _ = await api.call("POST", "/v1/agents", agent_body(agent_id))
        assert status == 201
    await asyncio.to_thread(own_pg.stop)
    exporter.clear()

    status, body, _ = await api.call(
        "POST", "/v1/agents/o-1/heartbeat", {}, headers=traceparent(trace_id=1)
    )
    assert status == 202, body
    acknowledged = server_span(exporter, trace_id=1)
    assert events(acknowledged, "journaled") == [{"op_id": body["op_id"], "uncertain": False}]
    assert acknowledged.attributes is not None
    assert acknowledged.attributes["registry_proxy.source"] == "journal"

    async def breaker_open() -> bool:
        if app[BREAKER].state.value == "open":
            return True
        await api.call("GET", "/v1/agents/o-2")  # more failures, until it trips
        return False

    await eventually(breaker_open, message="the breaker opened")
    status, _, headers = await api.call("GET", "/v1/agents/o-2", headers=traceparent(trace_id=2))
    assert status == 200 and headers["X-Registry-Fallback"] == "unreachable"
    outage_read = server_span(exporter, trace_id=2)
    assert [e["operation"] for e in events(outage_read, "breaker refused")] == ["get_agent"]
    assert events(outage_read, "fallback") == [{"reason": "unreachable"}]
    assert children(exporter, outage_read) == []  # refused: no attempt was made
    status, _, headers = await api.call("GET", "/v1/agents/o-1", headers=traceparent(trace_id=3))
    assert status == 200 and headers["X-Registry-Fallback"] == "pending-writes"
    assert events(server_span(exporter, trace_id=3), "fallback") == [{"reason": "pending-writes"}]

    await asyncio.to_thread(own_pg.start)

    async def drained() -> bool:
        _, status_body, _ = await api.call("GET", "/v1/status")
        return bool(status_body["journal"]["depth"] == 0)

    await eventually(drained, timeout=20, message="journal drained")
    replays = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "journal replay" and s.status.is_ok and s.links
    ]
    [replay] = replays
    assert replay.parent is None
    [link] = replay.links
    assert link.context.trace_id == acknowledged.context.trace_id == 1
    assert link.context.span_id == acknowledged.context.span_id
    assert dict(link.attributes or {}) == {"registry_proxy.op_id": body["op_id"]}
    assert [c.name for c in children(exporter, replay)][-1] == "PostgreSQL replay"
    assert dict(children(exporter, replay)[-1].attributes or {})["registry_proxy.outcome"] == (
        "success"
    )


async def test_the_front_door_in_replica_mode_continues_the_callers_trace(
    traced: Traced,
) -> None:
    api, exporter = await traced(read_mode="replica")
    status, _, _ = await api.call("POST", "/v1/agents", agent_body("f-1"))
    assert status == 201
    app = app_of(api)
    dispatched: list[str] = []
    handle = app._handle

    async def counted(request: web.Request) -> web.StreamResponse:
        dispatched.append(request.raw_path)
        return await handle(request)

    app._handle = counted  # type: ignore[method-assign]
    exporter.clear()
    status, _, headers = await api.call("GET", "/v1/agents/f-1", headers=traceparent())
    assert status == 200 and headers["X-Registry-Source"] == "replica"
    assert dispatched == []  # answered by the front door, not aiohttp's dispatch
    span = server_span(exporter)
    assert span.name == "GET /v1/agents/{agent_id}"
    assert span.parent is not None and span.parent.span_id == CALLER_SPAN
    assert events(span, "fallback") == [{"reason": "read-mode"}]
    assert dict(span.attributes or {})["registry_proxy.source"] == "replica"
    assert children(exporter, span) == []
    assert app[TRACING] is not None


async def test_the_otlp_exporter_of_the_environment_reaches_the_collector(
    tmp_path: Path,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    """The production path: exporter, endpoint and service name from OTEL_*, spans batched and
    posted over OTLP/HTTP, the last batch flushed when the app stops."""
    received: list[tuple[str, str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(collector)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sidecar-under-test")
    app = create_app(make_settings("postgresql://nobody@127.0.0.1:1/none", tokens, tmp_path))
    assert app[TRACING] is not None
    client = await aiohttp_client(SidecarTestServer(app))
    assert (await client.get("/v1/agents/a-1", headers=traceparent())).status == 401
    assert received == []  # batched, not posted per span
    await client.close()  # the app stops: the batch goes out
    [(path, content_type, body)] = received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert b"sidecar-under-test" in body
    assert b"GET /v1/agents/{agent_id}" in body
    assert CALLER_TRACE.to_bytes(16, "big") in body
