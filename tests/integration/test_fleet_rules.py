"""What a fleet of sidecars meets at the server: its connection limit, a primary that moved, and
what the tenant wall costs on the wire.

- A server at its connection limit (53300: max_connections, or here a role's CONNECTION LIMIT)
  is full, not away: a write is answered 503 overloaded and nothing is journaled, a read comes
  from the replica with `X-Registry-Fallback: overload`, and the breaker never counts it.
- A write on a server in recovery (25006, a primary demoted by a failover whose connections the
  pool still holds) is an infrastructure failure: the pool's connections are expired and the
  retry, on a fresh connection, reaches a server that takes writes. Never a 4xx.
- Straight to PostgreSQL (`pooler=none`) the tenant list stays a startup parameter: a read and a
  write are one round trip each, as before. Behind a transaction pooler each use of a connection
  is a transaction whose BEGIN carries the list: one round trip to open it, one to commit, and
  without prepared statements each statement is two.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from proxy.app import DATABASE
from proxy.http import keys
from proxy.store import repository
from proxy.store.db import Database
from tests.conftest import AppFactory, agent_body, app_of, eventually
from tests.integration.test_write_statement import RoundTrips


@pytest.fixture
async def limited_role(migrated_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """(role, DSN) of an ordinary role allowed two connections at once."""
    role = f"lim_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    finally:
        await conn.close()
    url = urlsplit(migrated_dsn)
    yield role, f"postgresql://{role}@{url.hostname}:{url.port}{url.path}"


async def test_a_server_at_its_connection_limit_is_overload_not_an_outage(
    make_api: AppFactory, limited_role: tuple[str, str], db: asyncpg.Connection
) -> None:
    role, dsn = limited_role
    # No pooled connection kept idle: the next request must open one. The replica's listener
    # holds one of the role's two. The failover guard's reads would take the other now and then:
    # off, so that the role's connections are counted exactly.
    api = await make_api(
        dsn, database={"pool_min_size": 0, "idle_timeout_ms": 100}, failover={"guard": False}
    )

    def written(agent_id: str) -> Callable[[], Awaitable[bool]]:
        # Through PgBouncer the server connections that clients have left (the sidecar's start,
        # the squatter) are PgBouncer's to reset and hand on; on a busy machine a write can come
        # first and find the role at its limit, answered as what that is (503 overloaded,
        # nothing done), so it is sent again.
        async def attempt() -> bool:
            status, body, _ = await api.call("POST", "/v1/agents", agent_body(agent_id))
            assert status == 201 or (status == 503 and body["type"].endswith("/overloaded")), body
            return status == 201

        return attempt

    await eventually(
        written("known"), timeout=30, interval=0.2, message="a first write was admitted"
    )
    database = app_of(api)[DATABASE]
    await eventually(
        lambda: database.pool is not None and database.pool.get_size() == 0,
        timeout=5,
        message="the pool's idle connection closed",
    )
    squatter = await asyncpg.connect(dsn)  # the role's last connection
    try:
        status, body, headers = await api.call("POST", "/v1/agents", agent_body("refused"))
        assert status == 503, body
        assert body["type"].endswith("/overloaded") and "refuses more connections" in body["detail"]
        assert "Retry-After" in headers
        status, body, headers = await api.call("GET", "/v1/agents/known")
        assert status == 200, body
        assert headers["X-Registry-Source"] == "replica"
        assert headers["X-Registry-Fallback"] == "overload"
        service = app_of(api)[keys.SERVICE]
        assert service.journal is not None and service.journal.depth == 0
        assert service.breaker.state.value == "closed"
        assert not any(t.to_state.value == "open" for t in service.breaker.transitions)
    finally:
        await squatter.close()
    await eventually(
        written("admitted"), timeout=30, interval=0.2, message="a write after the squatter left"
    )
    backends = await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
    assert backends <= 2


async def test_a_write_on_a_demoted_primary_expires_the_pool_and_is_retried(
    make_api: AppFactory, db: asyncpg.Connection
) -> None:
    api = await make_api(database={"pool_min_size": 1, "pool_max_size": 1})
    database = app_of(api)[DATABASE]
    # The pool's one idle connection now behaves as one to a demoted primary would.
    async with database.connection() as conn:
        await conn.execute("SET SESSION default_transaction_read_only = on")
        demoted = await conn.fetchval("SELECT pg_backend_pid()")
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("moved"))
    assert status == 201, body
    async with database.connection() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") != demoted
        assert await conn.fetchval("SHOW transaction_read_only") == "off"
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None and service.journal.depth == 0
    tenant = next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))
    count = await db.fetchval(
        "SELECT count(*) FROM operations WHERE tenant_id = $1 AND kind = 'register'", tenant
    )
    assert count == 1


async def _trips_per_use(database: Database, trips: RoundTrips, tenant: str) -> tuple[int, int]:
    """Round trips of a read and of a write, each in a use of a pooled connection, warmed."""
    ctx = repository.WriteContext(tenant, "tester", None, 10)
    counts = []
    for n in range(2):
        before = trips.count
        async with database.connection() as conn:
            await repository.fetch_agent(conn, tenant, "absent")
        read = trips.count - before
        before = trips.count
        async with database.connection() as conn:
            await repository.execute_write(
                conn,
                ctx,
                kind="register",
                payload={"body": agent_body(f"a{n}")},
                op_id=f"op-{n}",
                req_hash="h",
            )
        counts.append((read, trips.count - before))
    return counts[-1]


@pytest.mark.parametrize(("pooler", "read", "write"), [("none", 1, 1), ("transaction", 4, 6)])
async def test_round_trips_of_the_tenant_wall(
    migrated_dsn: str, pooler: str, read: int, write: int
) -> None:
    trips = RoundTrips(migrated_dsn)
    await trips.start()
    tenant = f"rt-{uuid.uuid4().hex[:8]}"
    database = Database(
        trips.dsn, direct_dsn=migrated_dsn, pooler=pooler, min_size=1, max_size=1, tenants=[tenant]
    )
    database.start()
    try:
        assert await database.wait_ready(10), database.last_error
        assert await _trips_per_use(database, trips, tenant) == (read, write)
    finally:
        await database.close()
        await trips.close()
