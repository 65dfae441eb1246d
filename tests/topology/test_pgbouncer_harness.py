"""The PgBouncer harness works, and what transaction pooling does to a PostgreSQL client.

Besides proving the harness, these tests pin down facts about Debian bookworm's PgBouncer 1.18
in transaction pooling that the sidecar's design relies on: session state (named prepared
statements, session advisory locks, LISTEN) stays with the server connection, not the client,
and a startup parameter PgBouncer does not know is refused, or dropped when ignored, so it never
reaches PostgreSQL. If a newer PgBouncer changes one of them, the test that fails says which.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from proxy.store.db import TENANTS_SETTING
from tests.topology.conftest import BouncerFactory
from tests.topology.pgbouncer import PgBouncer
from tests.topology.support import wait_until

PID = "SELECT pg_backend_pid()"


@asynccontextmanager
async def client(bouncer: PgBouncer, **kw: object) -> AsyncIterator[asyncpg.Connection]:
    # No statement cache: its named statements would not survive a change of server connection.
    conn = await asyncpg.connect(bouncer.dsn, statement_cache_size=0, **kw)
    try:
        yield conn
    finally:
        await conn.close()


async def test_queries_and_transactions_pass_through_the_pool(
    make_bouncer: BouncerFactory,
) -> None:
    bouncer = await make_bouncer(default_pool_size=2, max_client_conn=20)
    assert (await bouncer.show("VERSION"))[0]["version"].startswith("PgBouncer 1.18")
    async with client(bouncer) as conn:
        # Parameters go through unnamed statements of the extended protocol.
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE pooled (n int) ON COMMIT DROP")
            await conn.executemany("INSERT INTO pooled VALUES ($1)", [(1,), (2,), (3,)])
            assert await conn.fetchval("SELECT sum(n) FROM pooled") == 6
    pool = await bouncer.pool()
    assert pool["pool_mode"] == "transaction"
    assert int(pool["sv_active"]) + int(pool["sv_idle"]) + int(pool["sv_used"]) <= 2

    # Two transactions went through: the lone query's implicit one, and the explicit one.
    async def counted() -> bool:
        return (await bouncer.stats())["total_xact_count"] == "2"

    await wait_until("SHOW STATS counting the transactions", counted, 10)


async def test_two_clients_share_one_server_connection(make_bouncer: BouncerFactory) -> None:
    bouncer = await make_bouncer(default_pool_size=1)
    async with client(bouncer) as first, client(bouncer) as second:
        assert await first.fetchval(PID) == await second.fetchval(PID)
        pool = await bouncer.pool()
        assert (pool["cl_active"], int(pool["sv_idle"]) + int(pool["sv_active"])) == ("2", 1)

        # The server connection is the first client's for the whole of its transaction: the
        # second client's query waits for it, and runs once the transaction ends.
        tx = first.transaction()
        await tx.start()
        pid = await first.fetchval(PID)
        waiting = asyncio.create_task(second.fetchval(PID))

        async def queued() -> bool:
            return (await bouncer.pool())["cl_waiting"] == "1"

        await wait_until("the second client queued for the server", queued, 10)
        assert not waiting.done()
        await tx.commit()
        assert await asyncio.wait_for(waiting, 10) == pid


async def test_named_prepared_statements_stay_on_their_server_connection(
    make_bouncer: BouncerFactory,
) -> None:
    """PgBouncer 1.18 has no prepared statement support in transaction pooling (1.21 added it)."""
    bouncer = await make_bouncer(default_pool_size=2)
    async with client(bouncer) as owner, client(bouncer) as other:
        where = await owner.fetchval(PID)
        stmt = await owner.prepare("SELECT $1::int * 2", name="sidecar_stmt")
        # asyncpg ends a prepare with Flush, not Sync: the owner keeps the server connection
        # until its next command, whatever the pool mode.
        assert (await bouncer.pool())["sv_active"] == "1"
        assert await owner.fetchval("SELECT 1") == 1
        # The statement lives on that server connection; another client now holds it in a
        # transaction, so the owner's next transaction gets the pool's other connection.
        async with other.transaction():
            assert await other.fetchval(PID) == where
            with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
                await stmt.fetchval(21)
            assert await owner.fetchval(PID) != where
        # Back on the server that has it, the statement works again: only chance decides.
        assert await owner.fetchval(PID) == where
        assert await stmt.fetchval(21) == 42


async def test_two_clients_naming_the_same_statement_collide(
    make_bouncer: BouncerFactory,
) -> None:
    bouncer = await make_bouncer(default_pool_size=1)
    async with client(bouncer) as first, client(bouncer) as second:
        await first.prepare("SELECT 1", name="sidecar_stmt")
        await first.execute("SELECT 1")  # its Sync hands the server connection back
        with pytest.raises(asyncpg.DuplicatePreparedStatementError, match="already exists"):
            await second.prepare("SELECT 2", name="sidecar_stmt")
        # asyncpg's own names (__asyncpg_stmt_N__) count from 1 in every connection, so its
        # statement cache would collide the same way: statement_cache_size=0 is required.
        assert await second.fetchval("SELECT 2") == 2


async def test_session_advisory_locks_belong_to_the_server_connection(
    make_bouncer: BouncerFactory,
) -> None:
    """A migration's lock taken through the pool can be released by any client, or leaked."""
    bouncer = await make_bouncer(default_pool_size=1)
    async with client(bouncer) as locker, client(bouncer) as stranger:
        await locker.execute("SELECT pg_advisory_lock(4242)")
        assert await stranger.fetchval("SELECT pg_advisory_unlock(4242)") is True
        assert await locker.fetchval("SELECT pg_advisory_unlock(4242)") is False


async def test_listen_through_the_pool_hears_nothing(
    make_bouncer: BouncerFactory, pg_dsn: str
) -> None:
    bouncer = await make_bouncer(default_pool_size=1)
    pooled_heard: asyncio.Queue[str] = asyncio.Queue()
    direct_heard: asyncio.Queue[str] = asyncio.Queue()
    direct = await asyncpg.connect(pg_dsn)
    try:
        async with client(bouncer) as pooled:
            await pooled.add_listener("topology", lambda *a: pooled_heard.put_nowait(a[3]))
            await direct.add_listener("topology", lambda *a: direct_heard.put_nowait(a[3]))
            notifier = await asyncpg.connect(pg_dsn)
            try:
                await notifier.execute("NOTIFY topology, 'changed'")
            finally:
                await notifier.close()
            # The direct listener hears it: the notification was sent.
            assert await asyncio.wait_for(direct_heard.get(), 10) == "changed"
            # The pooled one's LISTEN ran on a server connection that went back to the pool,
            # where PgBouncer drops what arrives for no client; a bounded wait shows nothing.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pooled_heard.get(), 1)
            assert "when not linked" in bouncer.log()
    finally:
        await direct.close()


async def test_unknown_startup_parameters_never_reach_postgresql(
    make_bouncer: BouncerFactory,
) -> None:
    """The sidecar names its tenants in a startup parameter (row-level security).

    PgBouncer 1.18 forwards only the parameters it tracks (client_encoding, DateStyle,
    TimeZone, standard_conforming_strings, application_name): any other is refused, or, when
    listed in ignore_startup_parameters, accepted and dropped.
    """
    tenants = {TENANTS_SETTING: "tenant-a"}
    strict = await make_bouncer()
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(strict.dsn, statement_cache_size=0, server_settings=tenants)
    with pytest.raises(asyncpg.ProtocolViolationError, match="statement_timeout"):
        await asyncpg.connect(
            strict.dsn, statement_cache_size=0, server_settings={"statement_timeout": "5s"}
        )
    async with client(strict, server_settings={"application_name": "sidecar"}) as conn:
        assert await conn.fetchval("SELECT current_setting('application_name')") == "sidecar"

    lenient = await make_bouncer(ignore_startup_parameters=[TENANTS_SETTING])
    async with client(lenient, server_settings=tenants) as conn:
        setting = await conn.fetchval("SELECT current_setting($1, true)", TENANTS_SETTING)
        assert setting is None
