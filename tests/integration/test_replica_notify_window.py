"""The replica's listener reads close notifications together, and loses none, against PostgreSQL.

Each change is committed on its own, so PostgreSQL sends each notification on its own; with a
window the listener reads those that follow one closely in one go. What must hold besides: every
change reaches the replica, and a query on the listening connection (the ping, a resync) is not
held back by a window.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from proxy.store.replica import Replica
from proxy.store.replica_sync import ReplicaSync
from tests.conftest import eventually


async def _insert(db: asyncpg.Connection, tenant: str, agent_id: str) -> None:
    await db.execute(
        "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
        "VALUES ($1, $2, 'n', 'm', '{code}')",
        tenant,
        agent_id,
    )


Start = Callable[[float], Awaitable[ReplicaSync]]


@pytest.fixture
async def listening(migrated_dsn: str, db: asyncpg.Connection) -> AsyncIterator[tuple[Start, str]]:
    tenant = f"nw-{uuid.uuid4().hex[:8]}"
    await _insert(db, tenant, "first")
    started: list[ReplicaSync] = []

    async def start(window_s: float) -> ReplicaSync:
        """A listener for the tenant, in step with PostgreSQL."""
        sync = ReplicaSync(
            Replica(),
            migrated_dsn,
            tenants=[tenant],
            resync_interval_s=3600,
            notify_window_s=window_s,
        )
        sync.start()
        started.append(sync)
        async with asyncio.timeout(10):
            await sync.synced.wait()
        return sync

    try:
        yield start, tenant
    finally:
        for sync in started:
            await sync.stop()


async def test_changes_committed_close_together_are_all_applied_in_few_reads(
    listening: tuple[Start, str], db: asyncpg.Connection
) -> None:
    start, tenant = listening
    sync = await start(0.2)
    ids = [f"a{i}" for i in range(40)]
    for agent_id in ids:
        await _insert(db, tenant, agent_id)
    await eventually(
        lambda: all(sync.replica.holds(tenant, a, 0) for a in ids),
        message="a change committed inside a window never reached the replica",
    )
    assert sync.notifications >= len(ids)
    # Forty notifications, sent one by one, read in a handful of windows.
    assert 1 <= sync.notify_windows < len(ids) // 2


async def test_without_a_window_the_socket_is_never_paused(
    listening: tuple[Start, str], db: asyncpg.Connection
) -> None:
    start, tenant = listening
    sync = await start(0.0)
    for i in range(10):
        await _insert(db, tenant, f"b{i}")
    await eventually(lambda: sync.replica.holds(tenant, "b9", 0))
    assert sync.notify_windows == 0


async def test_pings_and_a_resync_inside_a_window_do_not_wait_for_it(
    listening: tuple[Start, str], db: asyncpg.Connection
) -> None:
    start, tenant = listening
    # A window far longer than the test: were a query held back by it, the ping (whose
    # timeout is a second) would fail and the listener reconnect.
    sync = await start(60.0)
    conn = sync._conn
    await _insert(db, tenant, "opens")
    await eventually(lambda: sync.replica.holds(tenant, "opens", 0))
    assert sync.notify_windows == 1
    loop = asyncio.get_running_loop()
    opened = loop.time()

    def pinged_since_opened() -> bool:
        age = sync.replica.age()
        return age is not None and age < loop.time() - opened

    await eventually(pinged_since_opened, message="no ping answered inside the window")
    # The ping read on the socket: a change committed now is read with the next one.
    await _insert(db, tenant, "later")
    await eventually(lambda: sync.replica.holds(tenant, "later", 0))
    resyncs = sync.resyncs
    sync.request_resync()
    await eventually(lambda: sync.resyncs > resyncs)
    assert sync._conn is conn, "the listener reconnected"
