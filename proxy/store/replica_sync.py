"""Keeps the replica in step with PostgreSQL: initial load, LISTEN/NOTIFY, catch-up, resync.

A dedicated connection (outside the pool, so a saturated pool cannot starve it, and on the direct
DSN, since LISTEN hears nothing through a transaction pooler) listens on the ``registry_agents``
channel. While it lives, a short ping every fraction of the staleness bound proves the replica is
current. When it dies, the replica ages; on reconnect (to whichever host the DSN leads to: after
a failover, the new primary) it fetches every row changed after its watermark, then listens again.
Notifications that follow one another closely are read together (`NotifyWindow`): one wake-up
per window instead of one per write, for a sidecar hearing every write of a fleet.

A catch-up can miss a transaction that drew its version before, but committed after, the
watermark was taken. The periodic resync repairs that without reloading every agent: it reads
the rows changed since the watermark of the resync before it, so each window is read twice and
a late commit is found unless it took longer than an interval. A full reload, far rarer, is the
backstop, and follows a change of tenants. Both periods are jittered (+/- `JITTER`), as is the
pause between reconnects, so a fleet started together does not query PostgreSQL in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog

from proxy.observability.conditions import Condition
from proxy.registry.agent import AgentRecord
from proxy.store import repository
from proxy.store.db import tenants_statement
from proxy.store.notify_window import NotifyWindow
from proxy.store.replica import Replica

log = structlog.get_logger(__name__)

CHANNEL = "registry_agents"
# Rows per read of a catch-up. A periodic resync reads again every row changed since the one
# before (a minute of writes: tens of thousands of rows under load), so it goes in batches the
# event loop can take between requests.
CATCH_UP_BATCH = 1_000
JITTER = 0.2


_TIMESTAMPS = ("load_observed_at", "registered_at", "last_heartbeat_at", "updated_at", "deleted_at")


def record_from_json(row: dict[str, Any]) -> AgentRecord:
    """A row as `row_to_json` renders it in the notification payload."""
    parsed = dict(row)
    for key in _TIMESTAMPS:
        if parsed[key] is not None:
            parsed[key] = datetime.fromisoformat(parsed[key])
    return repository.record_from_row(parsed)


class ReplicaSync:
    def __init__(
        self,
        replica: Replica,
        dsn: str,
        *,
        tenants: list[str],
        max_staleness_s: float = 1.0,
        resync_interval_s: float = 60.0,
        full_resync_interval_s: float = 3_600.0,
        connect_timeout_s: float = 1.0,
        reconnect_interval_s: float = 0.5,
        notify_window_s: float = 0.0,
        on_change: Callable[[AgentRecord], None] | None = None,
        schema_ready: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.replica = replica
        self._dsn = dsn
        self.tenants = sorted(set(tenants))
        self._tenant_set = set(self.tenants)
        self._ping_every = max(0.05, min(max_staleness_s / 2, 1.0))
        self._resync_every = resync_interval_s
        self._full_every = full_resync_interval_s
        self._rng = rng if rng is not None else random.Random()
        # Where the next incremental resync starts reading: the watermark of the one before.
        self._since = 0
        self._full_due: float | None = None
        self._full_next = False
        self._connect_timeout = connect_timeout_s
        self._reconnect_every = reconnect_interval_s
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._notify_window_s = notify_window_s
        self._window: NotifyWindow | None = None
        self._windows_before = 0
        self._fetch_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.synced = asyncio.Event()
        self.resyncs = 0
        self.catch_ups = 0
        self.notifications = 0
        self._resync_now = asyncio.Event()
        self._schema_ready = schema_ready
        # Reconnects every `reconnect_interval_s` while PostgreSQL is away: logged when the
        # listener goes, summarised once a minute, and when it is back.
        self._down = Condition(log, "replica listener lost", end_event="replica listener back")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replica-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    def set_tenants(self, tenants: list[str]) -> None:
        self.tenants = sorted(set(tenants))
        self._tenant_set = set(self.tenants)
        # A tenant added has rows older than any watermark: only a full load brings them.
        self._full_next = True
        if self._conn is not None:
            # Reconnect so the listener's session carries the new tenant list.
            self._conn.terminate()

    @property
    def notify_windows(self) -> int:
        """Windows opened since start: each read the notifications that came in it at once."""
        return self._windows_before + (self._window.windows if self._window else 0)

    def request_resync(self) -> None:
        self._resync_now.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        window, self._window = self._window, None
        if window is not None:
            window.close()
            self._windows_before += window.windows
        self.replica.connected = False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _run(self) -> None:
        if self._schema_ready is not None:
            # Until the schema exists there is nothing to listen to; the snapshot (if any)
            # serves meanwhile.
            await self._schema_ready.wait()
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: the connection is gone, start over
                error = f"{type(exc).__name__}: {exc}"
                self._down.occurred(
                    None if self.replica.connected else "replica listener cannot connect",
                    error=error,
                )
                await self._drop()
            await asyncio.sleep(self._jittered(self._reconnect_every))

    def _jittered(self, seconds: float) -> float:
        return seconds * (1 + JITTER * (2 * self._rng.random() - 1))

    async def _session(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=self._connect_timeout, statement_cache_size=0
        )
        self._conn = conn
        # By statement, not as a startup parameter: the direct DSN may still be a session
        # pooler's, and those refuse parameters they do not know.
        await conn.execute(tenants_statement(self.tenants, local=False))
        await conn.add_listener(CHANNEL, self._notified)
        # Listen first, then read: a change committed in between arrives twice, never zero times.
        if self.replica.warm and not self.replica.from_snapshot and not self._full_next:
            await self._catch_up(conn, self.replica.watermark)
        elif self.replica.from_snapshot:
            await self._catch_up(conn, self.replica.watermark)
            await self._resync(conn)
        else:
            await self._resync(conn)
        self.replica.connected = True
        self.replica.touch()
        self.synced.set()
        self._down.ended(agents=self.replica.size)
        loop = asyncio.get_running_loop()
        window = self._window = NotifyWindow(
            conn._transport, window_s=self._notify_window_s, loop=loop
        )
        next_resync = loop.time() + self._jittered(self._resync_every)
        if self._full_due is None:
            self._full_due = loop.time() + self._jittered(self._full_every)
        while True:
            try:
                async with asyncio.timeout(self._ping_every):
                    await self._resync_now.wait()
            except TimeoutError:
                pass
            with window.querying():
                if loop.time() >= self._full_due:
                    await self._resync(conn)
                    self._full_due = loop.time() + self._jittered(self._full_every)
                    next_resync = loop.time() + self._jittered(self._resync_every)
                elif self._resync_now.is_set() or loop.time() >= next_resync:
                    self._resync_now.clear()
                    await self._refresh(conn)
                    next_resync = loop.time() + self._jittered(self._resync_every)
                async with asyncio.timeout(max(self._ping_every, 0.5)):
                    await conn.execute("SELECT 1")
                await self._fetch_pending(conn)
            self.replica.touch()

    async def _resync(self, conn: asyncpg.Connection) -> None:
        """A full reload: every agent of the tenants, the replica replaced by them."""
        self._full_next = False
        self.replica.begin_reload()
        try:
            records = await repository.fetch_all(conn, self.tenants, self.replica.max_agents + 1)
        except BaseException:
            self.replica.end_reload()
            raise
        self.replica.replace_all(self.tenants, records)
        self._since = self.replica.watermark
        self.resyncs += 1
        log.debug("replica resynced", agents=self.replica.size, partial=self.replica.partial)

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        """An incremental resync: the rows changed since the previous resync's watermark."""
        since, self._since = self._since, self.replica.watermark
        await self._catch_up(conn, since)
        self.resyncs += 1
        log.debug("replica refreshed", since=since, watermark=self.replica.watermark)

    async def _catch_up(self, conn: asyncpg.Connection, since: int) -> None:
        replica = self.replica
        while True:
            rows = await repository.fetch_changes_since(conn, self.tenants, since, CATCH_UP_BATCH)
            # Most rows a resync reads again are held already (their notification came): only
            # the others are read whole.
            missing: dict[str, list[str]] = {}
            for row in rows:
                if not replica.holds(row["tenant_id"], row["agent_id"], row["version"]):
                    missing.setdefault(row["tenant_id"], []).append(row["agent_id"])
            for tenant, agent_ids in missing.items():
                for rec in await repository.fetch_rows(conn, tenant, agent_ids):
                    self._apply(rec)
            if len(rows) < CATCH_UP_BATCH:
                break
            since = rows[-1]["version"]
            await asyncio.sleep(0)
        self.catch_ups += 1

    def _apply(self, rec: AgentRecord) -> None:
        if self.replica.upsert(rec) and self._on_change is not None:
            self._on_change(rec)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        if self._window is not None:
            self._window.heard()
        try:
            data = orjson.loads(payload)
            row = data.get("row")
            if row is not None:
                if row["tenant_id"] in self._tenant_set and not self.replica.holds(
                    row["tenant_id"], row["agent_id"], row["version"]
                ):
                    # Not held yet: the write's own answer did not file it first.
                    self._apply(record_from_json(row))
            elif data.get("tenant_id") in self._tenant_set:
                self._fetch_queue.put_nowait((data["tenant_id"], data["agent_id"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable change notification", error=str(exc))

    async def _fetch_pending(self, conn: asyncpg.Connection) -> None:
        """Rows too large to ride in their notification are fetched here."""
        while not self._fetch_queue.empty():
            tenant, agent_id = self._fetch_queue.get_nowait()
            row = await conn.fetchrow(
                f"SELECT {repository.COLUMNS} FROM agents WHERE tenant_id = $1 AND agent_id = $2",
                tenant,
                agent_id,
            )
            if row is not None:
                self._apply(repository.record_from_row(row))
