"""The data every run works on: its tenants, the capability vocabulary, the queries, the agents.

The benchmark, the soak and the pressure run seed the same agents (same seed, same shapes), and
the baselines read the same tenant, so their figures describe the same data set.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from bench.client import bounded_gather, http

READ_TENANT = "bench"
WRITE_TENANT = "bench-w"
BASELINE_WRITE_TENANT = "bench-base"

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


async def seed(url: str, token: str, n: int, *, seed_value: int = 42) -> list[str]:
    """Register `n` agents with varied capabilities, load and a performance record."""
    import aiohttp

    rng = random.Random(seed_value)
    ids = agent_ids(n)
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
