"""Connections kept between calls (`proxy.store.lane`): reused only when that is what the pool's
release would have allowed, and handed back to the pool whenever it would have acted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from proxy.store.db import Database
from tests.conftest import eventually


@pytest.fixture
async def make_db(migrated_dsn: str) -> AsyncIterator[Callable[..., Awaitable[Database]]]:
    made: list[Database] = []

    async def make(**options: object) -> Database:
        db = Database(migrated_dsn, run_migrations=False, **options)  # type: ignore[arg-type]
        db.start()
        assert await db.wait_ready(10)
        made.append(db)
        return db

    yield make
    for db in made:
        await db.close()


async def backend(db: Database) -> int:
    async with db.connection(5.0) as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid


def ended(conn: asyncpg.Connection) -> bool:
    """Whether the client saw its connection end (asyncpg takes it back when the socket closes,
    after which asking raises)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def gone(dsn: str, pid: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await conn.close()


async def test_a_clean_call_leaves_its_connection_to_the_next(
    make_db: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_db(min_size=1, max_size=3)
    first = await backend(db)
    assert await backend(db) == first
    assert await backend(db) == first
    # Kept between calls, it counts as idle, not in use.
    stats = db.stats()
    assert stats["in_use"] == 0 and stats["idle"] >= 1, stats


async def test_a_connection_left_in_a_transaction_goes_through_the_pools_reset(
    make_db: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_db(min_size=1, max_size=1)
    async with db.connection(5.0) as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TEMP TABLE left_open (x int)")
    async with db.connection(5.0) as conn:
        assert not conn.is_in_transaction()
        # Rolled back, not committed: the table went with the transaction.
        assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None


async def test_a_failed_call_never_leaves_its_connection(
    make_db: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_db(min_size=1, max_size=2)
    first = await backend(db)

    async def cut_off() -> None:
        async with db.connection(5.0) as conn:
            await conn.fetchval("SELECT 1")
            raise RuntimeError("cut off mid-call")

    with pytest.raises(RuntimeError):
        await cut_off()
    assert await backend(db) != first


@pytest.mark.parametrize("during_the_call", [False, True])
async def test_expire_closes_the_kept_connections(
    make_db: Callable[..., Awaitable[Database]], migrated_dsn: str, during_the_call: bool
) -> None:
    """Kept ones go at once; one out during the expiry is not kept when its call ends."""
    db = await make_db(min_size=1, max_size=2)
    async with db.connection(5.0) as conn:
        first = await conn.fetchval("SELECT pg_backend_pid()")
        if during_the_call:
            await db.expire()
    if not during_the_call:
        await db.expire()
    assert await backend(db) != first
    await eventually(lambda: gone(migrated_dsn, first))


async def test_a_connection_kept_past_the_idle_timeout_goes_back_and_closes(
    make_db: Callable[..., Awaitable[Database]], migrated_dsn: str
) -> None:
    db = await make_db(min_size=0, max_size=2, idle_timeout_s=0.2)
    first = await backend(db)
    # Back in the pool after half the idle timeout, closed by its inactivity timer after the
    # other half.
    await eventually(lambda: gone(migrated_dsn, first))
    assert db.stats()["idle"] == 0
    assert await backend(db) != first


async def test_a_connection_the_server_ended_while_kept_is_not_handed_out(
    make_db: Callable[..., Awaitable[Database]], migrated_dsn: str
) -> None:
    db = await make_db(min_size=1, max_size=2)
    async with db.connection(5.0) as kept:
        first = await kept.fetchval("SELECT pg_backend_pid()")
    admin = await asyncpg.connect(migrated_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    await eventually(lambda: ended(kept))
    for _ in range(3):
        assert await backend(db) != first


async def test_a_call_whose_connection_died_as_it_ended_still_ends_cleanly(
    make_db: Callable[..., Awaitable[Database]], migrated_dsn: str
) -> None:
    db = await make_db(min_size=1, max_size=2)
    admin = await asyncpg.connect(migrated_dsn)
    try:
        async with db.connection(5.0) as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
            await eventually(lambda: ended(conn))
        # The call's work was done: its end raises nothing, and the dead connection is not kept.
    finally:
        await admin.close()
    assert await backend(db) != first


async def test_close_does_not_wait_for_the_kept_connections(
    make_db: Callable[..., Awaitable[Database]],
) -> None:
    db = await make_db(min_size=1, max_size=3)
    # Three connections out at once, all kept afterwards.
    gate = asyncio.Event()

    async def hold() -> int:
        async with db.connection(5.0) as conn:
            await gate.wait()
            pid: int = await conn.fetchval("SELECT pg_backend_pid()")
            return pid

    tasks = [asyncio.create_task(hold()) for _ in range(3)]
    await eventually(lambda: db.stats()["in_use"] == 3)
    gate.set()
    assert len(set(await asyncio.gather(*tasks))) == 3
    assert db.stats()["in_use"] == 0
    # The pool's close waits for every connection out: without the lane given back first it
    # would run into its timeout and terminate them.
    async with asyncio.timeout(20):
        await db.close(timeout=60)
    assert db.pool is not None and db.pool.is_closing()
