"""``python -m bench.backlog``: what a deep journal costs reads, and how fast it drains.

One sidecar app, in this process, on an embedded PostgreSQL. Agents are registered, the breaker
is forced open (an outage as the service sees it), and reads are timed with no journaled write
pending: get by id, a capability query and stats, each answered from the replica. Then
``--pending`` writes (20,000 by default: performance posts, heartbeats and load reports spread over
the agents) are journaled, and the same reads are timed again. Finally the breaker returns to
automatic and the replay is timed until the journal is empty.

The reads are timed on the service itself (no HTTP in front), so the figure is what the backlog
adds to a read, not the noise of a client. Both sets are measured in the same run and reported as
a ratio: the machine is shared and its speed varies.

    python -m bench.backlog
    python -m bench.backlog --agents 1000 --pending 20000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from bench.provenance import machine
from bench.reporting import logger, result_path

TENANT = "backlog"
_log = logger("backlog")


def _agent(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "agent_id": f"agent-{i:05d}",
        "name": f"Agent {i}",
        "model_family": rng.choice(["gpt", "claude", "llama"]),
        "capabilities": {
            "task_types": rng.sample(["code", "review", "test", "docs", "data"], 2),
            "languages": rng.sample(["python", "go", "rust", "sql", "ts"], 2),
            "specializations": rng.sample(["ml", "web", "infra"], 1),
        },
    }


async def _time_reads(service: Any, ctx_for: Any, ids: list[str], rounds: int) -> dict[str, Any]:
    from proxy.registry.models import AgentQuery

    query = AgentQuery.model_validate({"task_type": "code", "languages": ["python"], "limit": 10})
    out: dict[str, Any] = {}
    for name in ("get", "query", "stats"):
        samples = []
        for n in range(rounds):
            ctx = ctx_for()
            started = time.perf_counter()
            if name == "get":
                answer = await service.get_agent(ctx, ids[n % len(ids)])
            elif name == "query":
                answer = await service.query(ctx, query)
            else:
                answer = await service.stats(ctx)
            samples.append(time.perf_counter() - started)
            assert answer.status == 200, (name, answer)
            assert answer.source == "replica", (name, answer)
        samples.sort()
        out[name] = {
            "mean_us": round(statistics.fmean(samples) * 1e6, 1),
            "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1] * 1e6, 1),
        }
    return out


async def run(agents: int, pending: int, rounds: int) -> dict[str, Any]:
    from proxy.app import SYNC, create_app
    from proxy.http import keys
    from proxy.http.auth import TokenStore
    from proxy.registry.requests import WriteKind, request_hash
    from proxy.resilience import Deadline
    from proxy.service import RequestContext
    from proxy.settings import Settings
    from proxy.store.embedded import EmbeddedPostgres

    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="backlog-") as tmp, EmbeddedPostgres() as pg:
        tokens = [{"token": "backlog-" + "x" * 24, "tenant": TENANT, "role": "admin"}]
        settings = Settings(
            database_url=SecretStr(pg.dsn),
            tokens=SecretStr(orjson.dumps(tokens).decode()),
            journal={"dir": Path(tmp) / "journal"},
            max_agents=agents * 2,
        )
        app = create_app(settings, tokens=TokenStore.from_json(settings.tokens_json()))
        app.freeze()
        await app.startup()  # the app's resources, without a listening server
        try:
            service = app[keys.SERVICE]
            assert await service.db.wait_ready(30)
            sync = app[SYNC]
            assert sync is not None
            async with asyncio.timeout(30):
                await sync.synced.wait()

            def ctx_for() -> RequestContext:
                return RequestContext(TENANT, "bench", "r", Deadline.after(30.0))

            async def write(kind: WriteKind, payload: dict[str, Any], target: str | None) -> int:
                answer = await service.write(
                    ctx_for(), kind, payload, req_hash=request_hash(kind, target, payload)
                )
                return answer.status

            _log(f"registering {agents} agents")
            ids = []
            for i in range(agents):
                body = _agent(i, rng)
                ids.append(body["agent_id"])
                assert await write(WriteKind.REGISTER, {"body": body}, None) == 201
            assert service.replica is not None
            async with asyncio.timeout(30):
                while service.replica.size < agents:
                    await asyncio.sleep(0.05)

            service.set_breaker("forced_open", "backlog benchmark")
            _log("timing reads with no backlog")
            before = await _time_reads(service, ctx_for, ids, rounds)

            _log(f"journaling {pending} writes")
            started = time.perf_counter()

            async def one(n: int) -> int:
                agent = ids[n % len(ids)]
                if n % 3 == 0:
                    payload = {
                        "agent_id": agent,
                        "body": {
                            "event_id": f"ev-{n}",
                            "success": n % 5 != 0,
                            "quality_score": 0.5,
                            "latency_ms": 10,
                        },
                    }
                    return await write(WriteKind.PERFORMANCE, payload, agent)
                if n % 3 == 1:
                    seen = datetime.now(UTC).isoformat()
                    return await write(
                        WriteKind.HEARTBEAT, {"agent_id": agent, "observed_at": seen}, agent
                    )
                body = {
                    "active_tasks": n % 7,
                    "queued_tasks": 0,
                    "observed_at": datetime.now(UTC).isoformat(),
                }
                return await write(WriteKind.LOAD, {"agent_id": agent, "body": body}, agent)

            statuses: dict[int, int] = {}
            for chunk in range(0, pending, 500):
                for status in await asyncio.gather(
                    *(one(n) for n in range(chunk, min(pending, chunk + 500)))
                ):
                    statuses[status] = statuses.get(status, 0) + 1
            journal_s = time.perf_counter() - started
            assert statuses == {202: pending}, statuses
            assert service.journal is not None
            assert service.journal.depth == pending

            _log("timing reads with the backlog")
            after = await _time_reads(service, ctx_for, ids, rounds)

            _log("replaying")
            started = time.perf_counter()
            service.set_breaker("automatic", "backlog benchmark over")
            async with asyncio.timeout(600):
                while service.journal.depth:
                    await asyncio.sleep(0.01)
            replay_s = time.perf_counter() - started
        finally:
            await app.cleanup()

    ratios = {name: round(after[name]["mean_us"] / before[name]["mean_us"], 2) for name in before}
    return {
        "command": " ".join(["python -m bench.backlog", *sys.argv[1:]]),
        "machine": machine(),
        "agents": agents,
        "pending": pending,
        "reads_without_backlog": before,
        "reads_with_backlog": after,
        "read_cost_ratio": ratios,
        "journal_append_per_s": round(pending / journal_s),
        "replay_s": round(replay_s, 2),
        "replay_entries_per_s": round(pending / replay_s),
        "acceptance": {
            "reads within 2x": all(r <= 2.0 for r in ratios.values()),
            "replay >= 2000/s": pending / replay_s >= 2000,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--pending", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2000, help="timed reads of each kind")
    args = parser.parse_args(argv)
    doc = asyncio.run(run(args.agents, args.pending, args.rounds))
    path = result_path("backlog")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    shown = {k: v for k, v in doc.items() if k != "machine"}
    print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    print(f"result: {path}")
    return 0 if all(doc["acceptance"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
