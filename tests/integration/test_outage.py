"""A real PostgreSQL stopped and started under a workload: fallback, switch-back, no loss."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.app import SYNC
from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually

FAST_BREAKER = {
    "failure_threshold": 3,
    "open_base_ms": 200,
    "open_max_ms": 1000,
    "probe_interval_ms": 50,
    "probe_timeout_ms": 300,
    "half_open_successes": 2,
}


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone, so stopping it hurts no other test."""
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.cleanup()


async def _status(api: Api) -> dict[str, Any]:
    status, body, _ = await api.call("GET", "/v1/status")
    assert status == 200
    return body  # type: ignore[no-any-return]


def _states(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["from"], t["to"]) for t in status["breaker"]["transitions"]]


async def test_outage_reads_from_replica_journals_writes_and_switches_back(
    own_pg: EmbeddedPostgres, make_api: AppFactory, db: Any
) -> None:
    api = await make_api(own_pg.dsn, breaker=FAST_BREAKER, request={"default_timeout_ms": 500})
    known = [f"known-{i}" for i in range(5)]
    for agent_id in known:
        status, body, _ = await api.call("POST", "/v1/agents", agent_body(agent_id))
        assert status == 201, body
    for i in range(4):
        status, _, _ = await api.call(
            "POST",
            f"/v1/agents/{known[0]}/performance",
            {"event_id": f"before-{i}", "success": True, "quality_score": 0.5, "latency_ms": 10},
        )
        assert status == 201

    await asyncio.to_thread(own_pg.stop)

    acknowledged: list[tuple[int, dict[str, Any]]] = []
    open_latencies: list[float] = []
    read_statuses: list[int] = []
    sources: set[str] = set()
    perf_posted = 0
    new_agents: list[str] = []
    for i in range(60):
        breaker_open = app_of(api)[keys.SERVICE].breaker.state.value == "open"
        started = time.perf_counter()
        status, body, headers = await api.call("GET", f"/v1/agents/{known[i % 5]}")
        read_statuses.append(status)
        sources.add(headers.get("X-Registry-Source", ""))
        q_status, _, _ = await api.call("GET", "/v1/agents?task_type=code&limit=50")
        read_statuses.append(q_status)
        if breaker_open:
            open_latencies.append(time.perf_counter() - started)
        if i % 3 == 0:
            agent_id = f"new-{i}"
            w_status, w_body, w_headers = await api.call("POST", "/v1/agents", agent_body(agent_id))
            acknowledged.append((w_status, w_body))
            new_agents.append(agent_id)
            assert w_status in (201, 202), w_body
            if w_status == 202:
                assert w_headers["X-Registry-Source"] == "journal"
                assert w_headers["Location"] == f"/v1/operations/{w_body['op_id']}"
        w_status, w_body, _ = await api.call(
            "POST",
            f"/v1/agents/{known[0]}/performance",
            {
                "event_id": f"during-{i}",
                "success": i % 2 == 0,
                "quality_score": 0.9,
                "latency_ms": 20,
            },
        )
        assert w_status in (201, 202), w_body
        perf_posted += 1
        acknowledged.append((w_status, w_body))

    assert set(read_statuses) == {200}, read_statuses
    assert "replica" in sources
    assert open_latencies, "the breaker never opened"
    open_latencies.sort()
    p99 = open_latencies[int(len(open_latencies) * 0.99) - 1]
    assert p99 < 0.050, f"p99 while open was {p99 * 1000:.1f} ms"

    # Read-your-writes: a journaled registration is visible before PostgreSQL has it.
    status, body, headers = await api.call("GET", f"/v1/agents/{new_agents[-1]}")
    assert status == 200 and headers["X-Registry-Source"] == "replica"
    status, body, _ = await api.call("GET", f"/v1/agents/{known[0]}")
    assert body["performance"]["task_count"] == 4 + perf_posted

    st = await _status(api)
    assert st["journal"]["depth"] > 0
    assert ("closed", "open") in _states(st)

    await asyncio.to_thread(own_pg.start)

    async def drained() -> bool:
        s = await _status(api)
        return bool(s["breaker"]["state"] == "closed" and s["journal"]["depth"] == 0)

    await eventually(drained, timeout=20, message="breaker closed and journal drained")
    st = await _status(api)
    states = _states(st)
    for edge in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]:
        assert edge in states, states

    # Every acknowledged write is in PostgreSQL, or rejected with a reason; nothing twice.
    import asyncpg

    conn = await asyncpg.connect(own_pg.dsn)
    try:
        tenant = app_of(api)[keys.TOKENS].tenants()[0]
        tenant = next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))
        rows = await conn.fetch(
            "SELECT agent_id FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL", tenant
        )
        assert {r["agent_id"] for r in rows} == set(known) | set(new_agents)
        perf = await conn.fetchrow(
            "SELECT task_count, success_count FROM agents WHERE tenant_id = $1 AND agent_id = $2",
            tenant,
            known[0],
        )
        assert perf["task_count"] == 4 + perf_posted
        assert perf["success_count"] == 4 + sum(1 for i in range(60) if i % 2 == 0)
        events = await conn.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tenant
        )
        assert events == 4 + perf_posted
        for status, body in acknowledged:
            if status == 202:
                op = await conn.fetchrow(
                    "SELECT status, reason FROM operations WHERE tenant_id = $1 AND op_id = $2",
                    tenant,
                    body["op_id"],
                )
                assert op is not None and op["status"] == "applied", (body, op)
    finally:
        await conn.close()

    # The operation endpoint tells the same story, and the replica caught up without a restart.
    op_id = next(body["op_id"] for status, body in acknowledged if status == 202)
    status, body, _ = await api.call("GET", f"/v1/operations/{op_id}")
    assert status == 200 and body["status"] == "applied"

    async def replica_current() -> bool:
        s = await _status(api)
        return bool(s["replica"]["connected"] and s["replica"]["pending_writes"] == 0)

    await eventually(replica_current, timeout=10, message="replica reconnected")
    status, body, headers = await api.call("GET", f"/v1/agents/{new_agents[-1]}")
    assert status == 200 and headers["X-Registry-Source"] == "database"

    # The outage as the metrics tell it: attempts that failed on the lost connection, refusals
    # while open, failed probes and then one that found PostgreSQL back.
    seen = _samples(await (await api.client.get("/metrics")).text())
    assert seen[("registry_proxy_db_attempts_total", "infrastructure")] > 0
    assert seen[("registry_proxy_db_attempts_total", "rejected")] > 0
    assert seen[("registry_proxy_db_attempts_total", "success")] > 0
    assert seen[("registry_proxy_probes_total", "failed")] > 0
    assert seen[("registry_proxy_probes_total", "ok")] > 0
    retried = {kind for name, kind in seen if name == "registry_proxy_retries_total"}
    assert retried == {"infrastructure", "transient"}, retried


def _samples(text: str) -> dict[tuple[str, str], float]:
    """Counter samples with one label, by (name, label value)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and len(sample.labels) == 1:
                out[(sample.name, next(iter(sample.labels.values())))] = sample.value
    return out


async def test_write_fallback_reject_answers_503_with_retry_after(
    own_pg: EmbeddedPostgres, make_api: AppFactory
) -> None:
    api = await make_api(own_pg.dsn, breaker=FAST_BREAKER, write_fallback="reject")
    assert (await api.call("POST", "/v1/agents", agent_body("r1")))[0] == 201
    await asyncio.to_thread(own_pg.stop)
    status, body, headers = await api.call("POST", "/v1/agents", agent_body("r2"))
    assert status == 503
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) >= 1
    assert body["type"].endswith("database-unavailable")
    # reads still work from the replica
    status, _, headers = await api.call("GET", "/v1/agents/r1")
    assert status == 200 and headers["X-Registry-Source"] == "replica"


async def test_data_errors_never_open_the_breaker_but_connection_failures_do(
    own_pg: EmbeddedPostgres, make_api: AppFactory
) -> None:
    api = await make_api(own_pg.dsn, breaker=FAST_BREAKER)
    assert (await api.call("POST", "/v1/agents", agent_body("dup")))[0] == 201
    for _ in range(20):
        status, body, _ = await api.call("POST", "/v1/agents", agent_body("dup"))
        assert status == 409 and body["type"].endswith("duplicate-agent")
    service = app_of(api)[keys.SERVICE]
    assert service.breaker.state.value == "closed"
    assert service.breaker.transitions == []

    await asyncio.to_thread(own_pg.stop)
    for _ in range(FAST_BREAKER["failure_threshold"]):
        await api.call("GET", "/v1/agents/dup")
    assert service.breaker.state.value in ("open", "half_open")
    first = service.breaker.transitions[0]
    assert (first.from_state.value, first.to_state.value) == ("closed", "open")
    assert "consecutive" in first.cause


async def test_change_made_in_postgres_reaches_replica_within_a_second_and_after_reconnect(
    own_pg: EmbeddedPostgres, make_api: AppFactory
) -> None:
    import asyncpg

    api = await make_api(own_pg.dsn, breaker=FAST_BREAKER)
    assert (await api.call("POST", "/v1/agents", agent_body("x1")))[0] == 201
    app = app_of(api)
    replica = app[keys.SERVICE].replica
    assert replica is not None
    tenant = next(t for t in app[keys.TOKENS].tenants() if t.startswith("t-"))
    conn = await asyncpg.connect(own_pg.dsn)
    try:
        started = time.perf_counter()
        await conn.execute(
            "UPDATE agents SET name = 'renamed by SQL', version = nextval('agent_version_seq') "
            "WHERE tenant_id = $1 AND agent_id = 'x1'",
            tenant,
        )

        def renamed() -> bool:
            rec = replica.get(tenant, "x1")
            return rec is not None and rec.name == "renamed by SQL"

        await eventually(renamed, timeout=1.0, interval=0.005, message="NOTIFY reached replica")
        assert time.perf_counter() - started < 1.0
    finally:
        await conn.close()

    # Cut the listener off, change rows while it is away, and let it come back.
    sync = app[SYNC]
    assert sync is not None
    catch_ups = sync.catch_ups
    await asyncio.to_thread(own_pg.stop)
    await eventually(lambda: not replica.connected, timeout=10, message="listener noticed")
    await asyncio.to_thread(own_pg.start)
    conn = await asyncpg.connect(own_pg.dsn)
    try:
        await conn.execute(
            "UPDATE agents SET name = 'changed while away', "
            "version = nextval('agent_version_seq') WHERE tenant_id = $1 AND agent_id = 'x1'",
            tenant,
        )
    finally:
        await conn.close()

    def caught_up() -> bool:
        rec = replica.get(tenant, "x1")
        return rec is not None and rec.name == "changed while away"

    await eventually(caught_up, timeout=10, message="replica caught up after reconnect")
    assert sync.catch_ups > catch_ups or replica.connected


async def test_idempotent_write_is_applied_once_across_journal_and_retry(
    own_pg: EmbeddedPostgres, make_api: AppFactory
) -> None:
    api = await make_api(own_pg.dsn, breaker=FAST_BREAKER)
    assert (await api.call("POST", "/v1/agents", agent_body("i1")))[0] == 201
    await asyncio.to_thread(own_pg.stop)
    key = "perf-" + uuid.uuid4().hex[:8]
    body = {"success": True, "quality_score": 1.0, "latency_ms": 5}
    first = await api.call("POST", "/v1/agents/i1/performance", body, {"Idempotency-Key": key})
    again = await api.call("POST", "/v1/agents/i1/performance", body, {"Idempotency-Key": key})
    assert first[0] == again[0] == 202
    assert first[1]["op_id"] == again[1]["op_id"] == key
    await asyncio.to_thread(own_pg.start)
    await eventually(
        lambda: app_of(api)[keys.SERVICE].journal.depth == 0,  # type: ignore[union-attr]
        timeout=20,
        message="journal drained",
    )
    status, agent, _ = await api.call("GET", "/v1/agents/i1")
    assert status == 200 and agent["performance"]["task_count"] == 1


async def test_ledger_forgets_operations_past_the_retention(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    from proxy.store.repository import prune_ledger

    api = await make_api()
    status, _, _ = await api.call(
        "POST", "/v1/agents", agent_body("old"), headers={"Idempotency-Key": "old-key"}
    )
    assert status == 201
    await db.execute(
        "UPDATE operations SET completed_at = now() - interval '200 hours' "
        "WHERE tenant_id = $1 AND op_id = 'old-key'",
        tokens.tenant,
    )
    assert await prune_ledger(db, 168) >= 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM operations WHERE tenant_id = $1 AND op_id = 'old-key'",
            tokens.tenant,
        )
        == 0
    )
    status, _, _ = await api.call("POST", "/v1/agents", agent_body("new"))
    assert status == 201
    assert await prune_ledger(db, 168) == 0
    assert (
        await db.fetchval("SELECT count(*) FROM operations WHERE tenant_id = $1", tokens.tenant)
        == 1
    )


async def test_a_poisoned_journal_entry_is_retried_then_rejected_durably(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    from datetime import UTC, datetime

    from proxy.service import REPLAY_ATTEMPTS, journal_id

    api = await make_api()
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None
    await service.stop()  # drive replay by hand, round by round
    # A patch without a body cannot be applied by any round: not the database's fault.
    await service.journal.append(
        op_id=journal_id(tokens.tenant, "poison"),
        kind="patch",
        tenant=tokens.tenant,
        key="ghost",
        payload={
            "payload": {"agent_id": "ghost"},
            "hash": "h",
            "actor": "writer",
            "request_id": "r1",
            "received_at": datetime.now(UTC).isoformat(),
        },
    )
    for _ in range(REPLAY_ATTEMPTS - 1):
        assert await service.replay() == 0
        assert service.journal.depth == 1
    assert await service.replay() == 1
    assert service.journal.depth == 0
    row = await db.fetchrow(
        "SELECT status, reason FROM operations WHERE tenant_id = $1 AND op_id = 'poison'",
        tokens.tenant,
    )
    assert row["status"] == "rejected" and row["reason"].startswith("internal-error")
    status, body, _ = await api.call("GET", "/v1/operations/poison")
    assert status == 200 and body["status"] == "rejected" and body["reason"]
