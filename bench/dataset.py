"""The data every run works on: its tenants, the capability vocabulary, the queries, the agents.

The benchmark, the soak and the pressure run seed the same agents (same seed, same shapes), and
the baselines read the same tenant, so their figures describe the same data set. The benchmark
also measures capability queries over a larger tenant (``LARGE_TENANT``); its agents have the
same shapes but are written straight into PostgreSQL with ``COPY``, since registering ten
thousand agents through the sidecar would take a minute of the run for nothing it measures.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from bench.client import bounded_gather, http

READ_TENANT = "bench"
WRITE_TENANT = "bench-w"
BASELINE_WRITE_TENANT = "bench-base"
LARGE_TENANT = "bench-large"

TASK_TYPES = ("code", "review", "test", "docs", "data")
LANGUAGES = ("python", "go", "rust", "typescript", "java", "sql")
SPECIALIZATIONS = ("backend", "frontend", "ml", "security", "devops")

# The capability queries of the benchmark, cycled; each is a realistic "find me an agent" call.
QUERIES = (
    "/v1/agents?task_type=code&languages=python&limit=10",
    "/v1/agents?task_type=review&languages=go&max_utilization=0.8&limit=10",
    "/v1/agents?task_type=test&limit=10",
    "/v1/agents?task_type=data&languages=sql&specializations=ml&limit=5",
    "/v1/agents?task_type=docs&max_utilization=0.5&limit=10",
)


def agent_body(agent_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "name": f"Agent {agent_id}",
        "model_family": rng.choice(("gpt", "claude", "llama", "mistral")),
        "capabilities": {
            "task_types": rng.sample(TASK_TYPES, rng.randint(1, 3)),
            "languages": rng.sample(LANGUAGES, rng.randint(1, 3)),
            "specializations": rng.sample(SPECIALIZATIONS, rng.randint(0, 2)),
        },
        "max_concurrent_tasks": rng.choice((4, 8, 10, 16)),
    }


def agent_ids(n: int) -> list[str]:
    return [f"agent-{i:05d}" for i in range(n)]


def _draw(
    ids: list[str], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each agent's registration, load report and one task outcome, in this order of draws."""
    bodies = [agent_body(a, rng) for a in ids]
    loads = [
        {
            "active_tasks": rng.randint(0, b["max_concurrent_tasks"]),
            "queued_tasks": rng.randint(0, 3),
            "observed_at": datetime.now(UTC).isoformat(),
        }
        for b in bodies
    ]
    outcomes = [
        {
            "event_id": f"seed-{a}",
            "success": rng.random() < 0.85,
            "quality_score": round(rng.uniform(0.5, 1.0), 3),
            "latency_ms": round(rng.uniform(200, 5000), 1),
        }
        for a in ids
    ]
    return bodies, loads, outcomes


async def seed_with_copy(dsn: str, tenant: str, n: int, *, seed_value: int = 43) -> list[str]:
    """`n` agents of the same shapes as `seed`'s, written with COPY in one transaction: the rows,
    their performance events and the tenant's agent count. The trigger on ``agents`` announces
    every row to the sidecars' replicas, as it does for the sidecar's own writes."""
    import asyncpg

    rng = random.Random(seed_value)
    ids = agent_ids(n)
    bodies, loads, outcomes = _draw(ids, rng)
    agents = []
    for b, ld, o in zip(bodies, loads, outcomes, strict=True):
        caps = b["capabilities"]
        agents.append(
            (
                tenant,
                b["agent_id"],
                b["name"],
                b["model_family"],
                caps["task_types"],
                caps["languages"],
                caps["specializations"],
                b["max_concurrent_tasks"],
                ld["active_tasks"],
                ld["queued_tasks"],
                datetime.fromisoformat(ld["observed_at"]),
                1,
                1 if o["success"] else 0,
                o["quality_score"],
                o["latency_ms"],
            )
        )
    events = [
        (tenant, o["event_id"], a, o["success"], o["quality_score"], o["latency_ms"])
        for a, o in zip(ids, outcomes, strict=True)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "agents",
                records=agents,
                columns=[
                    "tenant_id",
                    "agent_id",
                    "name",
                    "model_family",
                    "task_types",
                    "languages",
                    "specializations",
                    "max_concurrent_tasks",
                    "active_tasks",
                    "queued_tasks",
                    "load_observed_at",
                    "task_count",
                    "success_count",
                    "quality_sum",
                    "latency_ms_sum",
                ],
            )
            await conn.copy_records_to_table(
                "performance_events",
                records=events,
                columns=[
                    "tenant_id",
                    "event_id",
                    "agent_id",
                    "success",
                    "quality_score",
                    "latency_ms",
                ],
            )
            await conn.execute(
                "INSERT INTO tenants (tenant_id, agent_count) VALUES ($1, $2) "
                "ON CONFLICT (tenant_id) DO UPDATE SET agent_count = tenants.agent_count + $2",
                tenant,
                n,
            )
    finally:
        await conn.close()
    return ids


async def seed(url: str, token: str, n: int, *, seed_value: int = 42) -> list[str]:
    """Register `n` agents with varied capabilities, load and a performance record."""
    import aiohttp

    rng = random.Random(seed_value)
    ids = agent_ids(n)
    bodies, loads, outcomes = _draw(ids, rng)
    async with aiohttp.ClientSession() as s:

        def call(method: str, path: str, body: Any, ok: tuple[int, ...]) -> Any:
            async def job() -> None:
                status, answer = await http(
                    url + path, method=method, token=token, body=body, session=s, timeout_s=30
                )
                if status not in ok:
                    raise RuntimeError(f"seeding {method} {path}: {status} {answer}")

            return job

        await bounded_gather([call("POST", "/v1/agents", b, (201, 409)) for b in bodies], 16, 300)
        await bounded_gather(
            [
                call("PUT", f"/v1/agents/{a}/load", ld, (200,))
                for a, ld in zip(ids, loads, strict=True)
            ],
            16,
            300,
        )
        await bounded_gather(
            [
                call("POST", f"/v1/agents/{a}/performance", o, (200, 201))
                for a, o in zip(ids, outcomes, strict=True)
            ],
            16,
            300,
        )
    return ids
