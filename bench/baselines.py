"""The baseline servers the sidecar is measured against, in the same run.

- ``bare``: an aiohttp app answering every registry path with a fixed, pre-encoded document: the
  ceiling of any aiohttp service on this machine (routing, HTTP parsing, one write per answer).
- ``asyncpg``: a minimal aiohttp app reading and writing the same tables with asyncpg directly:
  what a host app would do without a sidecar (no auth, no breaker, no replica, no journal, no
  ledger, no audit, no metrics, no logs). Its writes are the effect alone: one ``INSERT`` for a
  registration, the event and the sums for a task outcome.
- ``asyncpg --writes ledger`` (or ``ledger-1rt``): the same app whose writes also leave the rows
  the sidecar leaves for them, a ledger row and an audit row (``bench.baselines_ledger``). The
  ratio against it is what the sidecar itself costs; the ratio against the one-statement writes
  adds what its guarantees cost.
- ``--extra-cpu-us N``: the asyncpg app's writes each spend N microseconds more CPU on the
  request path, to measure what a server's own CPU per write does to its tail at a fixed rate
  (``bench.cpu_tail``).

All serve the sidecar's paths, so one workload definition drives all targets, and run like the
sidecar does: uvloop, an ``AppRunner`` without access log, backlog 1024.

    python -m bench.baselines bare --port 18001
    python -m bench.baselines asyncpg --port 18002 --dsn postgresql://... --tenant bench
    python -m bench.baselines asyncpg --port 18003 --dsn postgresql://... --writes ledger
    python -m bench.baselines asyncpg --port 18004 --dsn ... --writes ledger-1rt --extra-cpu-us 120
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web

JSON = "application/json"

AGENT_DOCUMENT: dict[str, Any] = {
    "agent_id": "agent-00042",
    "name": "Agent agent-00042",
    "model_family": "gpt",
    "capabilities": {
        "task_types": ["code", "review"],
        "languages": ["python", "go"],
        "specializations": ["backend"],
    },
    "max_concurrent_tasks": 10,
    "status": "active",
    "registered_at": "2025-01-01T00:00:00.000000+00:00",
    "last_heartbeat_at": "2025-01-01T00:00:00.000000+00:00",
    "updated_at": "2025-01-01T00:00:00.000000+00:00",
    "version": 1042,
    "load": {"active_tasks": 3, "queued_tasks": 1, "utilization": 0.3},
    "performance": {
        "task_count": 1,
        "success_rate": 1.0,
        "average_quality": 0.87,
        "average_latency_ms": 1250.0,
    },
}

# ---- bare --------------------------------------------------------------------------------------


def bare_app() -> web.Application:
    agent = orjson.dumps(AGENT_DOCUMENT)
    query = orjson.dumps(
        {
            "results": [
                {"agent": AGENT_DOCUMENT, "match_score": 0.9, "match_reasons": ["task_type"]}
            ]
            * 10
        }
    )
    performance = orjson.dumps(
        {
            "agent_id": AGENT_DOCUMENT["agent_id"],
            "event_id": "0" * 32,
            "counted": True,
            "performance": AGENT_DOCUMENT["performance"],
        }
    )

    async def get_agent(request: web.Request) -> web.Response:
        return web.Response(body=agent, content_type=JSON)

    async def query_agents(request: web.Request) -> web.Response:
        return web.Response(body=query, content_type=JSON)

    async def register(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=agent, content_type=JSON)

    async def post_performance(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=performance, content_type=JSON)

    app = web.Application()
    app.router.add_get("/v1/agents/{agent_id}", get_agent)
    app.router.add_get("/v1/agents", query_agents)
    app.router.add_post("/v1/agents", register)
    app.router.add_post("/v1/agents/{agent_id}/performance", post_performance)
    app.router.add_get("/healthz", get_agent)
    return app


# ---- asyncpg -----------------------------------------------------------------------------------

COLUMNS = (
    "agent_id, name, model_family, task_types, languages, specializations, max_concurrent_tasks, "
    "active_tasks, queued_tasks, registered_at, last_heartbeat_at, updated_at, version, "
    "task_count, success_count, quality_sum, latency_ms_sum"
)
_HEARTBEAT_TIMEOUT = timedelta(minutes=5)


def document(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The same agent document a host app would build from the row."""
    n = row["task_count"]
    return {
        "agent_id": row["agent_id"],
        "name": row["name"],
        "model_family": row["model_family"],
        "capabilities": {
            "task_types": row["task_types"],
            "languages": row["languages"],
            "specializations": row["specializations"],
        },
        "max_concurrent_tasks": row["max_concurrent_tasks"],
        "status": (
            "active" if now - row["last_heartbeat_at"] <= _HEARTBEAT_TIMEOUT else "unresponsive"
        ),
        "registered_at": row["registered_at"],
        "last_heartbeat_at": row["last_heartbeat_at"],
        "updated_at": row["updated_at"],
        "version": row["version"],
        "load": {
            "active_tasks": row["active_tasks"],
            "queued_tasks": row["queued_tasks"],
            "utilization": min(1.0, row["active_tasks"] / row["max_concurrent_tasks"]),
        },
        "performance": {
            "task_count": n,
            "success_rate": row["success_count"] / n if n else None,
            "average_quality": row["quality_sum"] / n if n else None,
            "average_latency_ms": row["latency_ms_sum"] / n if n else None,
        },
    }


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON)


PoolKey = web.AppKey("pool", asyncpg.Pool)
Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True)
class Writes:
    """The asyncpg app's two write handlers, when they are not its one-statement ones."""

    register: Handler
    performance: Handler


def spin(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (not of the wall clock: time spent preempted
    does not count)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def with_extra_cpu(writes: Writes, extra_us: float) -> Writes:
    """The same writes, each spending ``extra_us`` more CPU on the request path: half before
    its statements are sent, half after their answer is in, as a server's own work would."""
    half = extra_us / 2e6

    def costlier(handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            spin(half)
            response = await handler(request)
            spin(half)
            return response

        return handle

    return Writes(register=costlier(writes.register), performance=costlier(writes.performance))


def asyncpg_app(
    dsn: str,
    tenant: str,
    write_tenant: str,
    writes: Writes | None = None,
    *,
    extra_cpu_us: float = 0.0,
) -> web.Application:
    async def get_agent(request: web.Request) -> web.Response:
        row = await request.app[PoolKey].fetchrow(
            f"SELECT {COLUMNS} FROM agents "
            "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL",
            tenant,
            request.match_info["agent_id"],
        )
        if row is None:
            return json_response({"title": "not found"}, 404)
        return json_response(document(row, datetime.now(UTC)))

    async def query_agents(request: web.Request) -> web.Response:
        q = request.query
        langs = [v for v in q.get("languages", "").split(",") if v]
        specs = [v for v in q.get("specializations", "").split(",") if v]
        limit = int(q.get("limit", "10"))
        rows = await request.app[PoolKey].fetch(
            f"SELECT {COLUMNS} FROM agents "
            "WHERE tenant_id = $1 AND deleted_at IS NULL "
            "AND ($2::text IS NULL OR $2 = ANY(task_types)) "
            "AND languages @> $3::text[] AND specializations @> $4::text[] "
            "ORDER BY LEAST(1.0, active_tasks::float8 / max_concurrent_tasks), agent_id "
            "LIMIT $5",
            tenant,
            q.get("task_type"),
            langs,
            specs,
            limit,
        )
        now = datetime.now(UTC)
        return json_response({"results": [{"agent": document(r, now)} for r in rows]})

    async def register(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        caps = body["capabilities"]
        try:
            row = await request.app[PoolKey].fetchrow(
                "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types, "
                "languages, specializations, max_concurrent_tasks) "
                f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}",
                write_tenant,
                body["agent_id"],
                body["name"],
                body["model_family"],
                caps["task_types"],
                caps.get("languages", []),
                caps.get("specializations", []),
                body.get("max_concurrent_tasks", 10),
            )
        except asyncpg.UniqueViolationError:
            return json_response({"title": "already registered"}, 409)
        assert row is not None
        return json_response(document(row, datetime.now(UTC)), 201)

    async def post_performance(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        agent_id = request.match_info["agent_id"]
        event_id = body.get("event_id") or uuid.uuid4().hex
        async with request.app[PoolKey].acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO performance_events (tenant_id, event_id, agent_id, success, "
                "quality_score, latency_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                tenant,
                event_id,
                agent_id,
                bool(body["success"]),
                float(body["quality_score"]),
                float(body["latency_ms"]),
            )
            row = await conn.fetchrow(
                "UPDATE agents SET task_count = task_count + 1, "
                "success_count = success_count + $3, quality_sum = quality_sum + $4, "
                "latency_ms_sum = latency_ms_sum + $5, updated_at = now(), "
                "version = nextval('agent_version_seq') "
                "WHERE tenant_id = $1 AND agent_id = $2 "
                "RETURNING task_count, success_count, quality_sum, latency_ms_sum",
                tenant,
                agent_id,
                1 if body["success"] else 0,
                float(body["quality_score"]),
                float(body["latency_ms"]),
            )
        if row is None:
            return json_response({"title": "not found"}, 404)
        n = row["task_count"]
        return json_response(
            {
                "agent_id": agent_id,
                "event_id": event_id,
                "counted": True,
                "performance": {
                    "task_count": n,
                    "success_rate": row["success_count"] / n,
                    "average_quality": row["quality_sum"] / n,
                    "average_latency_ms": row["latency_ms_sum"] / n,
                },
            },
            201,
        )

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def pool_ctx(app: web.Application) -> Any:
        # The sidecar's defaults: 2 to 10 connections.
        app[PoolKey] = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        yield
        await app[PoolKey].close()

    if writes is None:
        writes = Writes(register=register, performance=post_performance)
    if extra_cpu_us > 0:
        writes = with_extra_cpu(writes, extra_cpu_us)
    app = web.Application()
    app.router.add_get("/v1/agents/{agent_id}", get_agent)
    app.router.add_get("/v1/agents", query_agents)
    app.router.add_post("/v1/agents", writes.register)
    app.router.add_post("/v1/agents/{agent_id}/performance", writes.performance)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(pool_ctx)
    return app


# ---- running -----------------------------------------------------------------------------------


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("kind", choices=("bare", "asyncpg"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", help="PostgreSQL DSN (asyncpg only)")
    parser.add_argument("--tenant", default="bench", help="tenant read by the asyncpg baseline")
    parser.add_argument(
        "--write-tenant", default="bench-base", help="tenant the asyncpg baseline registers into"
    )
    parser.add_argument(
        "--writes",
        choices=("one", "ledger", "ledger-1rt"),
        default="one",
        help="asyncpg writes: the effect alone (one), or the same rows as the sidecar "
        "in a transaction (ledger) or in one statement (ledger-1rt)",
    )
    parser.add_argument(
        "--extra-cpu-us",
        type=float,
        default=0.0,
        help="CPU each write spends besides its own work, in microseconds (bench.cpu_tail)",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("baselines listen on loopback only")
    if args.extra_cpu_us < 0:
        parser.error("--extra-cpu-us must not be negative")
    if args.kind == "bare":
        app = bare_app()
    else:
        if not args.dsn:
            parser.error("asyncpg needs --dsn")
        writes = None
        if args.writes != "one":
            # Imported here: bench.baselines_ledger builds on this module.
            from bench.baselines_ledger import ledger_writes

            writes = ledger_writes(
                args.tenant, args.write_tenant, one_round_trip=args.writes == "ledger-1rt"
            )
        app = asyncpg_app(
            args.dsn, args.tenant, args.write_tenant, writes, extra_cpu_us=args.extra_cpu_us
        )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(app, args.host, args.port))
    else:
        uvloop.run(serve(app, args.host, args.port))
    return 0


if __name__ == "__main__":
    # Run from the module imported by its name: bench.baselines_ledger imports it so, and its
    # handlers must find the pool under the same AppKey object as this app stores it under.
    from bench.baselines import main as imported_main

    sys.exit(imported_main())
