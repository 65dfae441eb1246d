"""The sidecar behind PgBouncer in transaction pooling, with a direct DSN beside it.

`database.pooler=transaction` sends requests through PgBouncer (no prepared statements, the
tenant list named by each transaction's BEGIN) and the replica's LISTEN straight to PostgreSQL
(`database_direct_url`). The sidecar runs as an ordinary role, so row-level security holds: had
the tenant list not travelled with each transaction, every read would come back empty and every
write would be refused. PgBouncer's pool is small (three server connections) and stays so,
however many requests the sidecar has in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from proxy.app import DATABASE, REPLICA, SYNC
from proxy.http import keys
from tests.conftest import Api, AppFactory, Tokens, agent_body, app_of, eventually
from tests.topology.pgbouncer import PgBouncer

POOL_SIZE = 3
FAST_BREAKER = {
    "failure_threshold": 3,
    "open_base_ms": 200,
    "open_max_ms": 1000,
    "probe_interval_ms": 50,
    "probe_timeout_ms": 300,
    "half_open_successes": 2,
}


@pytest.fixture
async def bouncer(app_role: str) -> AsyncIterator[PgBouncer]:
    async with PgBouncer(app_role, default_pool_size=POOL_SIZE, max_client_conn=200) as pooler:
        yield pooler


@pytest.fixture
async def pooled(make_api: AppFactory, bouncer: PgBouncer, app_role: str) -> Api:
    return await make_api(
        bouncer.dsn,
        database_direct_url=SecretStr(app_role),
        database={"pooler": "transaction", "pool_min_size": 1, "pool_max_size": 8},
        breaker=FAST_BREAKER,
    )


def _tenant(api: Api) -> str:
    return next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))


async def _server_connections(bouncer: PgBouncer) -> int:
    pool = await bouncer.pool()
    return sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))


async def _backends(superuser: asyncpg.Connection, role: str) -> int:
    count: int = await superuser.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
    )
    return count


async def test_the_registry_works_through_transaction_pooling(
    pooled: Api, bouncer: PgBouncer, tokens: Tokens, db: asyncpg.Connection, app_role: str
) -> None:
    api = pooled
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("pooled-1"))
    assert status == 201, body
    status, body, headers = await api.call("GET", "/v1/agents/pooled-1")
    assert (status, headers["X-Registry-Source"]) == (200, "database"), body
    status, body, _ = await api.call(
        "PATCH", "/v1/agents/pooled-1", {"name": "renamed"}, {"If-Match": headers["ETag"]}
    )
    assert (status, body["name"]) == (200, "renamed"), body
    status, body, _ = await api.call("GET", "/v1/agents?task_type=code")
    assert status == 200 and [r["agent"]["agent_id"] for r in body["results"]] == ["pooled-1"]

    # Sent twice under one Idempotency-Key (a retry): one effect, the same answer.
    key = "perf-" + uuid.uuid4().hex[:8]
    event = {"success": True, "quality_score": 0.5, "latency_ms": 7}
    first = await api.call(
        "POST", "/v1/agents/pooled-1/performance", event, {"Idempotency-Key": key}
    )
    again = await api.call(
        "POST", "/v1/agents/pooled-1/performance", event, {"Idempotency-Key": key}
    )
    assert first[0] == again[0] == 201 and first[1] == again[1]
    status, body, _ = await api.call("GET", "/v1/agents/pooled-1")
    assert body["performance"]["task_count"] == 1

    # The wall travels with each transaction: the sidecar's connections see its tenants only,
    # however many tenants the database holds.
    assert (await api.as_token(tokens.other_writer).call("POST", "/v1/agents", agent_body("o")))[
        0
    ] == 201
    await db.execute(
        "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
        "VALUES ($1, 'x', 'n', 'm', '{code}')",
        f"stranger-{uuid.uuid4().hex[:6]}",
    )
    async with app_of(api)[DATABASE].connection() as conn:
        seen = {r["tenant_id"] for r in await conn.fetch("SELECT DISTINCT tenant_id FROM agents")}
    assert seen == {tokens.tenant, tokens.other_tenant}

    # Forty requests at once: PgBouncer's server connections stay within its pool; the
    # role's backends are those and the replica's listener.
    role = app_role.split("//")[1].split("@")[0]
    peak = {"servers": 0, "backends": 0}
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            peak["servers"] = max(peak["servers"], await _server_connections(bouncer))
            peak["backends"] = max(peak["backends"], await _backends(db, role))
            await asyncio.sleep(0.02)

    async def one(i: int) -> int:
        if i % 2:
            return (await api.call("GET", "/v1/agents/pooled-1"))[0]
        return (await api.call("POST", "/v1/agents", agent_body(f"burst-{i}")))[0]

    watcher = asyncio.create_task(watch())
    try:
        statuses = await asyncio.gather(*(one(i) for i in range(40)))
    finally:
        done.set()
        await watcher
    assert set(statuses) <= {200, 201}, statuses
    assert 0 < peak["servers"] <= POOL_SIZE
    assert peak["backends"] <= POOL_SIZE + 1, peak


async def test_an_outage_of_pgbouncer_is_journaled_and_replayed(
    pooled: Api, bouncer: PgBouncer, db: asyncpg.Connection
) -> None:
    api = pooled
    assert (await api.call("POST", "/v1/agents", agent_body("before")))[0] == 201
    await bouncer.stop()
    try:
        acknowledged = []
        for i in range(6):
            status, body, _ = await api.call("POST", "/v1/agents", agent_body(f"during-{i}"))
            assert status in (201, 202), body
            acknowledged.append(f"during-{i}")
        assert status == 202
        # Reads come from the replica, which still listens on the direct DSN: it is fresh.
        status, _, headers = await api.call("GET", "/v1/agents/before")
        assert status == 200 and headers["X-Registry-Source"] == "replica"
        replica = app_of(api)[REPLICA]
        assert replica is not None and replica.connected
        journal = app_of(api)[keys.SERVICE].journal
        assert journal is not None and journal.depth > 0
    finally:
        await bouncer.start()

    service = app_of(api)[keys.SERVICE]

    def drained() -> bool:
        assert service.journal is not None
        return service.journal.depth == 0 and service.breaker.state.value == "closed"

    await eventually(drained, timeout=20, message="breaker closed and journal drained")
    held = await db.fetch(
        "SELECT agent_id FROM agents WHERE tenant_id = $1 AND agent_id LIKE 'during-%'",
        _tenant(api),
    )
    assert sorted(r["agent_id"] for r in held) == sorted(acknowledged)


async def test_the_replica_follows_a_change_made_in_postgresql(
    pooled: Api, db: asyncpg.Connection
) -> None:
    api = pooled
    assert (await api.call("POST", "/v1/agents", agent_body("watched")))[0] == 201
    replica = app_of(api)[REPLICA]
    assert replica is not None
    await db.execute(
        "UPDATE agents SET name = 'renamed by SQL', version = nextval('agent_version_seq') "
        "WHERE tenant_id = $1 AND agent_id = 'watched'",
        _tenant(api),
    )

    def renamed() -> bool:
        rec = replica.get(_tenant(api), "watched")
        return rec is not None and rec.name == "renamed by SQL"

    await eventually(renamed, timeout=2, message="the change reached the replica")
    sync = app_of(api)[SYNC]
    assert sync is not None and sync.notifications > 0


async def test_without_a_direct_dsn_transaction_pooling_is_refused(
    make_api: AppFactory, bouncer: PgBouncer
) -> None:
    with pytest.raises(ValueError, match="database_direct_url"):
        await make_api(bouncer.dsn, database={"pooler": "transaction"})


async def test_idle_connections_go_back(
    make_api: AppFactory, bouncer: PgBouncer, app_role: str
) -> None:
    """An idle sidecar keeps pool_min_size client connections to PgBouncer and its listener."""
    api = await make_api(
        bouncer.dsn,
        database_direct_url=SecretStr(app_role),
        database={
            "pooler": "transaction",
            "pool_min_size": 0,
            "pool_max_size": 8,
            "idle_timeout_ms": 300,
        },
    )
    statuses = await asyncio.gather(
        *(api.call("GET", "/v1/agents?task_type=code") for _ in range(12))
    )
    assert {s for s, *_ in statuses} == {200}
    database = app_of(api)[DATABASE]
    assert database.pool is not None and database.pool.get_size() > 0

    def released() -> bool:
        pool = database.pool
        return pool is not None and pool.get_size() == 0

    await eventually(released, timeout=5, message="idle connections closed")
    with contextlib.suppress(LookupError):
        clients = await bouncer.pool()
        assert int(clients["cl_active"]) + int(clients.get("cl_idle", "0") or 0) == 0


async def test_pgbouncer_at_max_client_conn_is_overload_not_an_outage(
    make_api: AppFactory, app_role: str
) -> None:
    """PgBouncer refuses a client past max_client_conn (08P01, by its text): a full server."""
    async with PgBouncer(app_role, default_pool_size=POOL_SIZE, max_client_conn=2) as small:
        api = await make_api(
            small.dsn,
            database_direct_url=SecretStr(app_role),
            database={"pooler": "transaction", "pool_min_size": 0, "idle_timeout_ms": 100},
        )
        database = app_of(api)[DATABASE]
        # Start-up's own connections count against max_client_conn until they idle out; on a
        # busy machine they can still be open at the first write, which is then refused.
        await eventually(
            lambda: database.pool is None or database.pool.get_size() == 0,
            timeout=5,
            message="start-up's idle connections closed",
        )
        assert (await api.call("POST", "/v1/agents", agent_body("known")))[0] == 201
        await eventually(
            lambda: database.pool is not None and database.pool.get_size() == 0,
            timeout=5,
            message="the pool's idle connection closed",
        )
        squatters = [await asyncpg.connect(small.dsn, statement_cache_size=0) for _ in range(2)]
        try:
            status, body, _ = await api.call("POST", "/v1/agents", agent_body("refused"))
            assert status == 503 and body["type"].endswith("/overloaded"), body
            status, _, headers = await api.call("GET", "/v1/agents/known")
            assert (status, headers["X-Registry-Fallback"]) == (200, "overload")
            service = app_of(api)[keys.SERVICE]
            assert service.journal is not None and service.journal.depth == 0
            assert service.breaker.state.value == "closed"
        finally:
            for conn in squatters:
                await conn.close()
        assert (await api.call("POST", "/v1/agents", agent_body("admitted")))[0] == 201


async def test_session_pooling_needs_no_direct_dsn(
    make_api: AppFactory, app_role: str, db: asyncpg.Connection
) -> None:
    """In session pooling a client keeps its server connection: the tenant list is set once
    when it opens, prepared statements stay, and LISTEN works through the pooler too."""
    async with PgBouncer(app_role, pool_mode="session", default_pool_size=8) as session:
        api = await make_api(session.dsn, database={"pooler": "session"})
        assert (await api.call("POST", "/v1/agents", agent_body("s1")))[0] == 201
        status, _, headers = await api.call("GET", "/v1/agents/s1")
        assert (status, headers["X-Registry-Source"]) == (200, "database")
        await db.execute(
            "UPDATE agents SET name = 'renamed', version = nextval('agent_version_seq') "
            "WHERE tenant_id = $1 AND agent_id = 's1'",
            _tenant(api),
        )
        replica = app_of(api)[REPLICA]
        assert replica is not None

        def renamed() -> bool:
            rec = replica.get(_tenant(api), "s1")
            return rec is not None and rec.name == "renamed"

        await eventually(renamed, timeout=2, message="LISTEN through the session pooler")
