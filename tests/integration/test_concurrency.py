"""Bursts of concurrent requests through one test client: capacity and counting stay exact.

The app is built with a pool that queues (5 s acquire timeout, 30 s request deadline), so a
burst waits for a connection instead of falling back: every answer must come from PostgreSQL,
and a 202 (journaled) answer fails the test.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, AppFactory, Tokens, agent_body

QUEUEING = {
    "database": {"pool_max_size": 10, "acquire_timeout_ms": 5000},
    "request": {"default_timeout_ms": 30000},
}


@pytest.fixture
async def burst_api(make_api: AppFactory) -> Api:
    return await make_api(max_agents=50, **QUEUEING)


async def perf_row(db: asyncpg.Connection, tenant: str, agent_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT task_count, success_count, quality_sum, latency_ms_sum FROM agents "
        "WHERE tenant_id = $1 AND agent_id = $2",
        tenant,
        agent_id,
    )
    assert row is not None
    return row


async def test_concurrent_registrations_never_overshoot_capacity(
    burst_api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    answers = await asyncio.gather(
        *(burst_api.call("POST", "/v1/agents", agent_body(f"burst-{i:03d}")) for i in range(200))
    )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {201, 409}, sorted(set(statuses))
    assert statuses.count(201) == 50
    assert statuses.count(409) == 150
    for status, body, headers in answers:
        assert headers["X-Registry-Source"] == "database"
        if status == 409:
            assert body["type"].endswith("/registry-full"), body
    created = {body["agent_id"] for status, body, _ in answers if status == 201}
    rows = await db.fetch(
        "SELECT agent_id FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL", tokens.tenant
    )
    assert {r["agent_id"] for r in rows} == created
    assert len(rows) == 50
    assert (
        await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", tokens.tenant)
        == 50
    )
    # the API agrees
    status, stats, _ = await burst_api.call("GET", "/v1/stats")
    assert status == 200
    assert stats["total_agents"] == 50


async def test_concurrent_performance_posts_are_all_counted_exactly(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> None:
    api = await make_api(**QUEUEING)
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("busy"))
    assert status == 201, body
    rng = random.Random(7)
    outcomes = [rng.random() < 0.7 for _ in range(500)]
    expected_success = sum(outcomes)
    qualities = [round(rng.random(), 3) for _ in range(500)]

    answers = await asyncio.gather(
        *(
            api.call(
                "POST",
                "/v1/agents/busy/performance",
                {"event_id": f"ev-{i:04d}", "success": ok, "quality_score": q, "latency_ms": 10.0},
            )
            for i, (ok, q) in enumerate(zip(outcomes, qualities, strict=True))
        )
    )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {201}, sorted(set(statuses))
    assert all(body["counted"] is True for _, body, _ in answers)
    counts = sorted(body["performance"]["task_count"] for _, body, _ in answers)
    assert counts == list(range(1, 501))  # each post saw its own increment, none lost

    status, agent, _ = await api.call("GET", "/v1/agents/busy")
    assert status == 200
    assert agent["performance"]["task_count"] == 500
    assert agent["performance"]["success_rate"] == pytest.approx(expected_success / 500)
    assert agent["performance"]["average_quality"] == pytest.approx(sum(qualities) / 500)
    assert agent["performance"]["average_latency_ms"] == pytest.approx(10.0)
    row = await perf_row(db, tokens.tenant, "busy")
    assert row["task_count"] == 500
    assert row["success_count"] == expected_success
    assert row["quality_sum"] == pytest.approx(sum(qualities))
    assert row["latency_ms_sum"] == pytest.approx(5000.0)
    events = await db.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE success) AS ok "
        "FROM performance_events WHERE tenant_id = $1 AND agent_id = 'busy'",
        tokens.tenant,
    )
    assert (events["n"], events["ok"]) == (500, expected_success)


async def test_same_event_id_is_counted_once_sequentially_and_concurrently(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> None:
    api = await make_api(**QUEUEING)
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("dedup"))
    assert status == 201, body
    event = {"event_id": "once", "success": True, "quality_score": 0.9, "latency_ms": 5.0}

    first = await api.call("POST", "/v1/agents/dedup/performance", event)
    second = await api.call("POST", "/v1/agents/dedup/performance", event)
    assert (first[0], first[1]["counted"]) == (201, True)
    assert (second[0], second[1]["counted"]) == (200, False)
    assert second[1]["performance"]["task_count"] == 1

    racing = {**event, "event_id": "raced", "success": False}
    answers = await asyncio.gather(
        *(api.call("POST", "/v1/agents/dedup/performance", racing) for _ in range(20))
    )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    assert statuses.count(201) == 1
    assert sum(1 for _, body, _ in answers if body["counted"]) == 1
    for status, body, _ in answers:
        assert body["counted"] is (status == 201)
        assert body["event_id"] == "raced"

    row = await perf_row(db, tokens.tenant, "dedup")
    assert (row["task_count"], row["success_count"]) == (2, 1)
    assert row["quality_sum"] == pytest.approx(1.8)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tokens.tenant
        )
        == 2
    )
    status, agent, _ = await api.call("GET", "/v1/agents/dedup")
    assert agent["performance"]["task_count"] == 2
    assert agent["performance"]["success_rate"] == 0.5


async def test_concurrent_duplicate_registrations_create_one_agent(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> None:
    api = await make_api(**QUEUEING)
    answers = await asyncio.gather(
        *(api.call("POST", "/v1/agents", agent_body("twin", name=f"Twin {i}")) for i in range(30))
    )
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {201, 409}, sorted(set(statuses))
    assert statuses.count(201) == 1
    winner: dict[str, Any] = next(body for status, body, _ in answers if status == 201)
    for status, body, _ in answers:
        if status == 409:
            assert body["type"].endswith("/duplicate-agent"), body
    rows = await db.fetch("SELECT name FROM agents WHERE tenant_id = $1", tokens.tenant)
    assert [r["name"] for r in rows] == [winner["name"]]
    assert (
        await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", tokens.tenant)
        == 1
    )


async def test_concurrent_idempotent_retries_apply_once(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> None:
    api = await make_api(**QUEUEING)
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("retry"))
    assert status == 201, body
    # no event_id: each request generates its own, so only the key can deduplicate
    event = {"success": True, "quality_score": 0.5, "latency_ms": 1.0}
    answers = await asyncio.gather(
        *(
            api.call(
                "POST",
                "/v1/agents/retry/performance",
                event,
                headers={"Idempotency-Key": "same-retry"},
            )
            for _ in range(20)
        )
    )
    statuses = {status for status, _, _ in answers}
    assert statuses == {201}, statuses
    bodies = {body["event_id"] for _, body, _ in answers}
    assert len(bodies) == 1
    row = await perf_row(db, tokens.tenant, "retry")
    assert row["task_count"] == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tokens.tenant
        )
        == 1
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM operations WHERE tenant_id = $1 AND op_id = 'same-retry'",
            tokens.tenant,
        )
        == 1
    )
