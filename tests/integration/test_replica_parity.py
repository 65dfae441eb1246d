"""The replica answers capability queries and stats exactly as PostgreSQL does."""

from __future__ import annotations

import random
from typing import Any

from tests.conftest import Api, AppFactory, Tokens, agent_body, eventually

TASKS = ["code", "review", "docs"]
LANGS = ["python", "go", "rust", "ts"]


async def _answers(api: Api, queries: list[str]) -> list[Any]:
    out = []
    for q in queries:
        status, body, headers = await api.call("GET", q)
        assert status == 200, body
        out.append((headers["X-Registry-Source"], body))
    return out


async def test_replica_and_database_give_the_same_order_scores_and_stats(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api()
    rng = random.Random(7)
    for i in range(60):
        body = agent_body(
            f"p{i:03d}",
            task_types=rng.sample(TASKS, rng.randint(1, 2)),
            languages=rng.sample(LANGS, rng.randint(1, 3)),
            max_concurrent_tasks=rng.choice([4, 10]),
        )
        assert (await api.call("POST", "/v1/agents", body))[0] == 201
        for n in range(rng.randint(0, 4)):
            await api.call(
                "POST",
                f"/v1/agents/p{i:03d}/performance",
                {
                    "event_id": f"p{i}-{n}",
                    "success": rng.random() < 0.7,
                    "quality_score": round(rng.random(), 2),
                    "latency_ms": 5,
                },
            )
        await api.call(
            "PUT",
            f"/v1/agents/p{i:03d}/load",
            {
                "active_tasks": rng.randint(0, 4),
                "queued_tasks": 0,
                "observed_at": "2026-01-01T00:00:00+00:00",
            },
        )
    queries = [
        "/v1/agents?limit=100",
        "/v1/agents?task_type=code&limit=100",
        "/v1/agents?task_type=review&languages=python,go&limit=100",
        "/v1/agents?max_utilization=0.5&limit=100",
        "/v1/agents?min_success_rate=0.5&limit=100",
        "/v1/stats",
    ]
    from_db = await _answers(api, queries)
    assert {source for source, _ in from_db} == {"database"}

    async def replica_caught_up() -> bool:
        _, status, _ = await api.call("GET", "/v1/status")
        return bool(status["replica"]["agents"] == 60)

    await eventually(replica_caught_up, message="replica has every agent")
    admin = api.as_token(tokens.admin)
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    from_replica = await _answers(api, queries)
    assert {source for source, _ in from_replica} == {"replica"}
    for (_, db_body), (_, rep_body), q in zip(from_db, from_replica, queries, strict=True):
        if q == "/v1/stats":
            for key, value in db_body.items():
                if isinstance(value, float):
                    assert abs(value - rep_body[key]) < 1e-9, (key, value, rep_body[key])
                else:
                    assert value == rep_body[key], key
            continue
        db_rows = [
            (r["agent"]["agent_id"], r["match_score"], r["match_reasons"])
            for r in db_body["results"]
        ]
        rep_rows = [
            (r["agent"]["agent_id"], r["match_score"], r["match_reasons"])
            for r in rep_body["results"]
        ]
        assert db_rows == rep_rows, q
    await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
