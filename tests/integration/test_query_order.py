"""The order and score of capability queries over 1,000 agents, against a reference.

The reference is written here from the documented rules (the docstring of
`proxy.registry.matching`), not imported: it reads the rows straight from PostgreSQL, applies
the filters, computes

    score = 0.5 * smoothed_success + 0.2 * smoothed_quality + 0.3 * (1 - utilization)
    smoothed_x = (x_sum + 5 * 0.5) / (task_count + 5)
    utilization = min(1, active_tasks / max_concurrent_tasks)

and orders by score (rounded to 9 decimals) descending, then agent id ascending.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, AppFactory, Tokens, agent_body

N_AGENTS = 1000
PREFIXES = ["A-", "a-", "B.", "b:", "Z_", "z-", "0-", "9.", "m", "M"]
TASK_TYPES = ["code", "review", "plan"]
LANGUAGES = ["python", "go", "rust", "ts"]
SPECIALIZATIONS = ["security", "web", "data"]
# (task_count, success_count, quality_sum, active_tasks, max_concurrent_tasks) shared by each
# member of a tie group: identical inputs, identical scores, so only the agent id orders them.
TIE_GROUPS = [
    (40, 38, 36.0, 0, 10),
    (20, 19, 17.5, 1, 10),
    (10, 10, 9.0, 2, 8),
    (0, 0, 0.0, 0, 4),
    (30, 15, 15.0, 5, 10),
    (12, 9, 8.4, 0, 2),
]
TIE_SIZE = 6


# ---- the reference ---------------------------------------------------------------------------


def utilization(row: dict[str, Any]) -> float:
    return min(1.0, row["active_tasks"] / row["max_concurrent_tasks"])


def success_rate(row: dict[str, Any]) -> float | None:
    n = row["task_count"]
    return row["success_count"] / n if n else None


def reference_score(row: dict[str, Any]) -> float:
    n = row["task_count"]
    smoothed_success = (row["success_count"] + 5.0 * 0.5) / (n + 5.0)
    smoothed_quality = (row["quality_sum"] + 5.0 * 0.5) / (n + 5.0)
    free_capacity = 1.0 - utilization(row)
    return 0.5 * smoothed_success + 0.2 * smoothed_quality + 0.3 * free_capacity


def passes(row: dict[str, Any], query: dict[str, Any]) -> bool:
    if row["deleted_at"] is not None:
        return False
    task_type = query.get("task_type")
    if task_type is not None and task_type not in row["task_types"]:
        return False
    if not set(query.get("languages", [])) <= set(row["languages"]):
        return False
    if not set(query.get("specializations", [])) <= set(row["specializations"]):
        return False
    max_util = query.get("max_utilization")
    if max_util is not None and not utilization(row) < max_util:
        return False
    min_rate = query.get("min_success_rate")
    if min_rate:  # None or 0: everyone passes, agents without history included
        rate = success_rate(row)
        if rate is None or rate < min_rate:
            return False
    return True


def reference(rows: list[dict[str, Any]], query: dict[str, Any]) -> list[tuple[str, float]]:
    chosen = [r for r in rows if passes(r, query)]
    chosen.sort(key=lambda r: (-round(reference_score(r), 9), r["agent_id"]))
    limit = query.get("limit", 10)
    return [(r["agent_id"], reference_score(r)) for r in chosen[:limit]]


def to_params(query: dict[str, Any]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for key, value in query.items():
        if isinstance(value, list):
            params.append((key, ",".join(value)))
        else:
            params.append((key, str(value)))
    return params


# ---- the data --------------------------------------------------------------------------------


async def bounded(n: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(n)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(j) for j in jobs))


@pytest.fixture
async def populated(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> tuple[Api, list[dict[str, Any]]]:
    api = await make_api(
        database={"pool_max_size": 10, "acquire_timeout_ms": 5000},
        request={"default_timeout_ms": 30000},
    )
    rng = random.Random(20240611)
    agents: list[dict[str, Any]] = []
    for i in range(N_AGENTS):
        agent_id = f"{PREFIXES[i % len(PREFIXES)]}{rng.randrange(10_000):04d}-{i}"
        max_tasks = rng.choice([1, 2, 4, 5, 8, 10, 16, 20])
        tie = i // TIE_SIZE if i < len(TIE_GROUPS) * TIE_SIZE else None
        if tie is not None:
            n, ok, quality, active, max_tasks = TIE_GROUPS[tie]
        else:
            n = rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 21, 50, 100])
            ok = rng.randint(0, n)
            quality = round(sum(rng.random() for _ in range(n)), 4)
            active = rng.randint(0, max_tasks + 2)  # some above capacity: capped at 1
        agents.append(
            {
                "agent_id": agent_id,
                "task_types": rng.sample(TASK_TYPES, rng.randint(1, 3)),
                "languages": rng.sample(LANGUAGES, rng.randint(0, 4)),
                "specializations": rng.sample(SPECIALIZATIONS, rng.randint(0, 2)),
                "max_concurrent_tasks": max_tasks,
                "perf": (n, ok, quality, float(10 * n)),
                "active": active,
            }
        )

    def register(a: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        body = agent_body(
            a["agent_id"],
            task_types=a["task_types"],
            languages=a["languages"],
            specializations=a["specializations"],
            max_concurrent_tasks=a["max_concurrent_tasks"],
        )
        return lambda: api.call("POST", "/v1/agents", body)

    answers = await bounded(20, [register(a) for a in agents])
    assert [status for status, _, _ in answers] == [201] * N_AGENTS

    observed = datetime.now(UTC).isoformat()

    def put_load(a: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        body = {
            "active_tasks": a["active"],
            "queued_tasks": a["active"] // 2,
            "observed_at": observed,
        }
        return lambda: api.call("PUT", f"/v1/agents/{a['agent_id']}/load", body)

    loaded = [a for a in agents if a["active"]]
    answers = await bounded(20, [put_load(a) for a in loaded])
    assert [status for status, _, _ in answers] == [200] * len(loaded)

    await db.executemany(
        "UPDATE agents SET task_count = $3, success_count = $4, quality_sum = $5, "
        "latency_ms_sum = $6, updated_at = now(), version = nextval('agent_version_seq') "
        "WHERE tenant_id = $1 AND agent_id = $2",
        [(tokens.tenant, a["agent_id"], *a["perf"]) for a in agents],
    )
    # a few unregistered agents, among them a tie-group member: they must never appear
    for a in (agents[0], agents[100], agents[500]):
        status, _, _ = await api.call("DELETE", f"/v1/agents/{a['agent_id']}")
        assert status == 204
    rows = [
        dict(r) for r in await db.fetch("SELECT * FROM agents WHERE tenant_id = $1", tokens.tenant)
    ]
    assert len(rows) == N_AGENTS
    return api, rows


QUERIES: list[dict[str, Any]] = [
    {"limit": 100},
    {},
    {"task_type": "code", "languages": ["python", "go"], "max_utilization": 0.5, "limit": 100},
    {"min_success_rate": 0.6, "limit": 100},
    {"min_success_rate": 0, "specializations": ["security"], "limit": 100},
    {"task_type": "review", "max_utilization": 0.25, "min_success_rate": 0.5, "limit": 40},
    {"languages": ["rust"], "specializations": ["web", "data"], "limit": 100},
]


async def test_query_order_and_scores_match_the_reference(
    populated: tuple[Api, list[dict[str, Any]]],
) -> None:
    api, rows = populated
    by_id = {r["agent_id"]: r for r in rows}
    ties_seen = 0
    for query in QUERIES:
        expected = reference(rows, query)
        status, body, headers = await api.call("GET", "/v1/agents", params=to_params(query))
        assert status == 200, body
        assert headers["X-Registry-Source"] == "database"
        got = [(r["agent"]["agent_id"], r["match_score"]) for r in body["results"]]
        assert [a for a, _ in got] == [a for a, _ in expected], query
        for (agent_id, score), (_, ref) in zip(got, expected, strict=True):
            assert score == round(ref, 6), (query, agent_id, score, ref)
        for result in body["results"]:
            row = by_id[result["agent"]["agent_id"]]
            assert result["agent"]["load"]["utilization"] == utilization(row)
            assert result["agent"]["performance"]["task_count"] == row["task_count"]
            assert result["agent"]["version"] == row["version"]
        rounded = [round(ref, 9) for _, ref in expected]
        ties_seen += sum(1 for x, y in itertools.pairwise(rounded) if x == y)
    assert ties_seen >= 10, "the data must exercise the agent id tie-break"


async def test_tie_groups_are_ordered_by_agent_id(
    populated: tuple[Api, list[dict[str, Any]]],
) -> None:
    api, rows = populated
    status, body, _ = await api.call("GET", "/v1/agents", params={"limit": "100"})
    assert status == 200
    results = body["results"]
    top_group = sorted(
        r["agent_id"]
        for r in rows
        if r["deleted_at"] is None
        and (
            r["task_count"],
            r["success_count"],
            r["quality_sum"],
            r["active_tasks"],
            r["max_concurrent_tasks"],
        )
        == TIE_GROUPS[0]
    )
    assert len(top_group) == TIE_SIZE - 1  # one of them was unregistered
    positions = [i for i, r in enumerate(results) if r["agent"]["agent_id"] in top_group]
    assert len(positions) == len(top_group)
    assert positions == list(range(positions[0], positions[0] + len(top_group)))
    assert [results[i]["agent"]["agent_id"] for i in positions] == top_group
    assert len({results[i]["match_score"] for i in positions}) == 1
