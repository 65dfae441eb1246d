"""The replica's periodic resync reads what changed, not every agent, and finds a late commit.

A fleet of sidecars that each reloaded every agent of their tenants every minute would read the
whole table once a minute per pod. The periodic resync reads the rows changed since the resync
before it instead; the window it reads again is what makes it a repair: a transaction that drew
its version before a newer change was seen, and committed after (so a catch-up by watermark
skips it), is still inside the window. Here the late commit's notification is suppressed too,
the worst case. A full reload stays, rarer, and follows a change of tenants.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from proxy.store import repository
from proxy.store.replica import Replica
from proxy.store.replica_sync import ReplicaSync
from tests.conftest import eventually


class Calls:
    """Counts the replica's full loads and records where each incremental read started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        self.since: list[int] = []
        fetch_all, changes = repository.fetch_all, repository.fetch_changes_since

        async def counted_all(*args: Any) -> Any:
            self.full += 1
            return await fetch_all(*args)

        async def counted_changes(conn: Any, tenants: Any, since: int, limit: int) -> Any:
            self.since.append(since)
            return await changes(conn, tenants, since, limit)

        monkeypatch.setattr(repository, "fetch_all", counted_all)
        monkeypatch.setattr(repository, "fetch_changes_since", counted_changes)


async def _insert(db: asyncpg.Connection, tenant: str, agent_id: str) -> int:
    version: int = await db.fetchval(
        "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
        "VALUES ($1, $2, 'n', 'm', '{code}') RETURNING version",
        tenant,
        agent_id,
    )
    return version


@pytest.fixture
async def synced(
    migrated_dsn: str, db: asyncpg.Connection
) -> AsyncIterator[tuple[ReplicaSync, str]]:
    tenant = f"rs-{uuid.uuid4().hex[:8]}"
    await _insert(db, tenant, "first")
    sync = ReplicaSync(Replica(), migrated_dsn, tenants=[tenant], resync_interval_s=3600)
    sync.start()
    try:
        async with asyncio.timeout(10):
            await sync.synced.wait()
        yield sync, tenant
    finally:
        await sync.stop()


async def test_the_periodic_resync_reads_only_what_changed_and_finds_a_late_commit(
    synced: tuple[ReplicaSync, str], db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, tenant = synced
    calls = Calls(monkeypatch)
    before = sync.replica.watermark

    # A write that drew its version first and commits last, with no notification.
    late = await db.fetchval("SELECT nextval('agent_version_seq')")
    await _insert(db, tenant, "seen")
    await eventually(lambda: sync.replica.get(tenant, "seen") is not None, message="notified")
    assert sync.replica.watermark > late
    await db.execute("SET session_replication_role = replica")  # no trigger, no NOTIFY
    try:
        await db.execute(
            "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types, version) "
            "VALUES ($1, 'late', 'n', 'm', '{code}', $2)",
            tenant,
            late,
        )
    finally:
        await db.execute("SET session_replication_role = origin")

    seen = sync.replica.watermark
    sync.request_resync()
    await eventually(lambda: sync.replica.get(tenant, "late") is not None, message="late found")
    # It read from the watermark of the load before it, and loaded nothing whole; the next one
    # reads from where this one started.
    assert calls.since[0] == before < late
    sync.request_resync()
    await eventually(lambda: len(calls.since) >= 2, message="second resync")
    assert calls.since[1] == seen
    assert calls.full == 0


async def test_a_change_of_tenants_loads_them_whole(
    synced: tuple[ReplicaSync, str], db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, tenant = synced
    other = f"rs-{uuid.uuid4().hex[:8]}"
    await _insert(db, other, "older")  # a row older than anything the next one will see
    await _insert(db, tenant, "newer")
    await eventually(lambda: sync.replica.get(tenant, "newer") is not None, message="notified")
    calls = Calls(monkeypatch)
    sync.set_tenants([tenant, other])
    await eventually(lambda: sync.replica.get(other, "older") is not None, message="loaded")
    assert calls.full == 1


def test_periods_are_jittered_around_their_setting() -> None:
    draws = iter([0.0, 1.0, 0.5])

    class Draws(random.Random):
        def random(self) -> float:
            return next(draws)

    sync = ReplicaSync(Replica(), "postgresql://unused", tenants=["t"], rng=Draws())
    assert [sync._jittered(60.0) for _ in range(3)] == pytest.approx([48.0, 72.0, 60.0])
