"""Overload is not an outage: bursts against a healthy PostgreSQL are committed (201), or
refused as overloaded (503 with Retry-After, nothing journaled), never turned into 202."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from proxy.http import keys
from tests.conftest import Api, AppFactory, agent_body, app_of

CLIENTS = 64  # client connections of the bursts


async def _burst(api: Api, calls: list[tuple[str, str, Any]]) -> list[tuple[int, Any, Any]]:
    gate = asyncio.Semaphore(CLIENTS)

    async def one(method: str, path: str, body: Any) -> tuple[int, Any, Any]:
        async with gate:
            return await api.call(method, path, body)

    return await asyncio.gather(*(one(*c) for c in calls))


def _perf(n: int) -> dict[str, Any]:
    return {"event_id": f"e-{n}", "success": n % 3 != 0, "quality_score": 0.5, "latency_ms": 10}


async def test_bursts_on_a_healthy_database_are_committed_never_journaled(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    # Default settings, the rate limit included.
    api = await make_api(rate_limit={"enabled": True})
    service = app_of(api)[keys.SERVICE]

    registered = await _burst(
        api, [("POST", "/v1/agents", agent_body(f"burst-{i}")) for i in range(200)]
    )
    assert Counter(status for status, _, _ in registered) == {201: 200}

    posted = await _burst(
        api, [("POST", "/v1/agents/burst-0/performance", _perf(i)) for i in range(500)]
    )
    statuses = Counter(status for status, _, _ in posted)
    assert statuses == {201: 500}, statuses

    assert service.journal is not None and service.journal.depth == 0
    st = (await api.call("GET", "/v1/status"))[1]
    assert st["breaker"]["state"] == "closed"
    metrics = await (await api.client.get("/metrics")).text()
    assert "registry_proxy_writes_accepted_total 0.0" in metrics
    count = await db.fetchval(
        "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = 'burst-0'",
        tokens.tenant,
    )
    assert count == 500
    journaled = await db.fetchval(
        "SELECT count(*) FROM operations WHERE tenant_id = $1", tokens.tenant
    )
    assert journaled == 700  # every write committed directly, each once
    overload = st["overload"]["bulkhead"]
    assert overload["queued_total"] > 0, "the burst never queued: it proves nothing"
    assert sum(overload["shed_total"].values()) == 0


async def test_past_the_queue_bound_writes_are_refused_as_overloaded_and_nothing_is_kept(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    api = await make_api(database={"pool_max_size": 2, "queue_max": 2})
    status, _, _ = await api.call("POST", "/v1/agents", agent_body("hot"))
    assert status == 201

    answers = await _burst(
        api, [("POST", "/v1/agents/hot/performance", _perf(i)) for i in range(300)]
    )
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[503] > 0, "a queue of 2 should shed part of a burst of 300"
    for status, body, headers in answers:
        if status == 503:
            assert body["type"].endswith("/overloaded"), body
            assert int(headers["Retry-After"]) >= 1
            assert "nothing was done" in body["detail"]
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None and service.journal.depth == 0
    count = await db.fetchval(
        "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = 'hot'", tokens.tenant
    )
    assert count == statuses[201]  # exactly the acknowledged ones, none of the refused
    st = (await api.call("GET", "/v1/status"))[1]
    assert st["breaker"]["state"] == "closed"
    assert st["overload"]["bulkhead"]["shed_total"]["queue-full"] == statuses[503]
    metrics = await (await api.client.get("/metrics")).text()
    assert f'registry_proxy_shed_total{{reason="queue-full"}} {float(statuses[503])}' in metrics


async def test_reads_beyond_the_queue_come_from_the_replica_and_say_why(
    make_api: AppFactory,
) -> None:
    api = await make_api(database={"pool_min_size": 1, "pool_max_size": 1, "queue_max": 1})
    assert (await api.call("POST", "/v1/agents", agent_body("r-1")))[0] == 201
    answers = await _burst(api, [("GET", "/v1/agents/r-1", None) for _ in range(200)])
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 200}, statuses
    fallbacks = Counter(
        (h["X-Registry-Source"], h.get("X-Registry-Fallback")) for _, _, h in answers
    )
    assert fallbacks[("replica", "overload")] > 0, fallbacks
    assert set(fallbacks) <= {("database", None), ("replica", "overload")}, fallbacks


async def test_a_sidecar_behind_on_its_loop_sheds_database_work_until_it_catches_up(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    api = await make_api()
    service = app_of(api)[keys.SERVICE]
    assert service.lag is not None
    assert (await api.call("POST", "/v1/agents", agent_body("lagged")))[0] == 201
    # The monitor stopped, so that its next on-time sample cannot end the episode mid-test.
    await service.lag.stop()
    service.lag.behind = True  # as if the loop had stood behind for a whole window
    try:
        status, body, headers = await api.call("POST", "/v1/agents/lagged/heartbeat", {})
        assert status == 503 and body["type"].endswith("/overloaded"), body
        assert "event loop lag" in body["detail"]
        status, body, headers = await api.call("GET", "/v1/agents/lagged")
        assert status == 200
        assert headers["X-Registry-Fallback"] == "overload"
    finally:
        service.lag.behind = False
    assert (await api.call("POST", "/v1/agents/lagged/heartbeat", {}))[0] == 200
    assert service.journal is not None and service.journal.depth == 0
    assert service.breaker.state.value == "closed"


async def test_a_replica_read_always_says_why_it_did_not_come_from_postgresql(
    make_api: AppFactory,
) -> None:
    api = await make_api(read_mode="replica")
    assert (await api.call("POST", "/v1/agents", agent_body("m-1")))[0] == 201
    _, _, headers = await api.call("GET", "/v1/agents/m-1")
    assert headers["X-Registry-Source"] == "replica"
    assert headers["X-Registry-Fallback"] == "read-mode"
    _, _, headers = await api.call("GET", "/v1/agents?task_type=code")
    assert headers["X-Registry-Fallback"] == "read-mode"


def test_fallback_reasons_are_the_documented_ones() -> None:
    import proxy.service as service

    assert {
        service.UNREACHABLE,
        service.OVERLOAD,
        service.DEADLINE,
        service.READ_MODE,
        service.PENDING,
    } == {"unreachable", "overload", "deadline", "read-mode", "pending-writes"}
