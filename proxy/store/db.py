"""The connection pool to PostgreSQL, opened in the background.

The sidecar must start (and report not ready) when PostgreSQL is not there yet, and connect as
soon as it appears, without a restart; so the pool is created by a background task that retries
until it succeeds, then applies migrations once. Requests reach it through the service's
bulkhead (`proxy.resilience.Bulkhead`), which admits no more callers than the pool has
connections for them; the pool holds a few more (`background`) for the journal replay and
maintenance, so they get a connection however busy the front door is.

The pool's DSN may go through a pooler (`pooler`, docs/fleet.md). PgBouncer refuses the startup
parameter that names the sidecar's tenants (row-level security), so behind one the list is set
by statement instead: once per connection in session pooling, and in transaction pooling inside
each use of a connection, which is then one transaction whose BEGIN carries the list (a server
connection is the sidecar's only for a transaction there). Migrations take their advisory lock
on a connection of their own to `direct_dsn`, which a transaction pooler never stands in.

Two refusals get a meaning of their own here. A server that refuses a connection for want of
slots (53300, or PgBouncer's max_client_conn) is full, not away: the caller gets `Overloaded`,
as from a full bulkhead. A write that reaches a server in recovery (25006) means the primary has
moved (a failover behind a multi-host DSN): every pooled connection is expired, so the next ones
are opened to whichever host takes writes now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from proxy.observability.asyncio_noise import quiet_abandoned_connects
from proxy.observability.conditions import POOL_FLOOR, Condition
from proxy.registry.errors import RegistryError
from proxy.resilience import ErrorKind, Overloaded
from proxy.store.lane import Lane
from proxy.store.migrate import migrate
from proxy.store.pg_errors import PRIMARY_MOVED, classify, refuses_connections

log = structlog.get_logger(__name__)


TENANTS_SETTING = "registry_proxy.tenants"
POOLERS = ("none", "session", "transaction")


def tenant_settings(tenants: list[str]) -> dict[str, str]:
    """Startup parameters naming the tenants a connection may see (row-level security).

    A startup parameter is the session's reset value, so it survives the RESET ALL the pool runs
    when a connection is released: the wall costs nothing per request.
    """
    return {TENANTS_SETTING: ",".join(sorted(set(tenants)))}


def tenants_statement(tenants: list[str], *, local: bool) -> str:
    """The statement that names the tenants for the session, or (``local``) the transaction.

    A literal rather than a parameter: it rides in a simple query, with a BEGIN or alone, and
    tenant ids are letters, digits and ``.:_-`` anyway (`proxy.http.auth`); quoted regardless.
    """
    value = tenant_settings(tenants)[TENANTS_SETTING].replace("'", "''")
    return f"SELECT set_config('{TENANTS_SETTING}', '{value}', {'true' if local else 'false'})"


class ScopedConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """A connection behind a transaction pooler: each use is a transaction naming the tenants.

    `scope_next_begin` makes the next BEGIN carry the tenant list in the same simple query, so
    the wall costs no round trip of its own; asyncpg's transaction object still manages the
    transaction, so nested ``conn.transaction()`` blocks (the replay's) become savepoints.
    """

    _scope: str | None = None

    def scope_next_begin(self, statement: str) -> None:
        self._scope = statement

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        scope, self._scope = self._scope, None
        if scope is not None and not args and query.startswith("BEGIN"):
            query = f"{query} {scope}"
        result: str = await super().execute(query, *args, timeout=timeout)
        return result


async def _release(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before reuse here: no open transaction, nothing else.

    asyncpg's default reset (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlock) is a round trip on
    every release. Pooled connections here change no session state (the tenant list is a
    startup parameter, or set when the connection opens, or with each BEGIN behind a transaction
    pooler; LISTEN has its own connection, migrations theirs), so that round trip would buy
    nothing but half the database path's throughput. A connection whose use was interrupted is
    terminated in `Database.connection` instead.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class DatabaseNotConnected(ConnectionError):
    """No pool yet: PostgreSQL has not been reachable since the sidecar started."""


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        direct_dsn: str | None = None,
        pooler: str = "none",
        min_size: int = 2,
        max_size: int = 10,
        background: int = 0,
        acquire_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        statement_cache_size: int = 256,
        idle_timeout_s: float = 30.0,
        reconnect_interval_s: float = 0.5,
        run_migrations: bool = True,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        tenants: list[str] | None = None,
    ) -> None:
        if pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, not {pooler!r}")
        self._dsn = dsn
        self.direct_dsn = direct_dsn or dsn
        self.pooler = pooler
        self._min = min_size
        self._max = max_size + background
        self.background = background
        self.acquire_timeout_s = acquire_timeout_s
        self._connect_timeout = connect_timeout_s
        # Named prepared statements do not survive a change of server connection.
        self._cache = 0 if pooler == "transaction" else statement_cache_size
        self._idle_timeout = idle_timeout_s
        self._interval = reconnect_interval_s
        self._migrate = run_migrations
        # Awaited once the pool is open and migrated. Public, to be set after construction:
        # what it wakes (the journal's replay) is built after the database.
        self.on_ready = on_ready
        self.pool: asyncpg.Pool | None = None
        # Connections that ended their call cleanly, kept out of the pool for the next one.
        self._lane: Lane | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.server_settings: dict[str, str] = {}
        self._scope = ""
        self._set_scope(tenants or [])
        # Tried every `reconnect_interval_s` until it answers: one line when it begins, a
        # summary a minute, one when it ends; not a line per attempt.
        self._unreachable = Condition(
            log, "database not reachable yet", end_event="database reachable"
        )

    @property
    def dsn(self) -> str:
        return self._dsn

    def start(self) -> None:
        # Openings cut short by a caller's deadline are expected here: proxy.observability.
        # asyncio_noise says why, and why its report is dropped.
        quiet_abandoned_connects(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._open_loop(), name="database-open")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        return self.ready.is_set()

    def _set_scope(self, tenants: list[str]) -> None:
        # A pooler refuses the startup parameter; the probe's connections take these too.
        self.server_settings = tenant_settings(tenants) if self.pooler == "none" else {}
        self._scope = tenants_statement(tenants, local=self.pooler == "transaction")

    async def _name_tenants(self, conn: asyncpg.Connection) -> None:
        # Session pooling: the server connection is this client's until it disconnects.
        await conn.execute(self._scope)

    async def _open_loop(self) -> None:
        while self.pool is None:
            try:
                if self._migrate:
                    await self._run_migrations()
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min,
                    max_size=self._max,
                    timeout=self._connect_timeout,
                    statement_cache_size=self._cache,
                    # Idle connections go back to the server (a fleet's sum is what it pays for);
                    # one idle for long may be on the far side of a dead network anyway. Half
                    # here, half in the lane, whose idle ones come back here first: closed
                    # within the idle timeout either way.
                    max_inactive_connection_lifetime=self._idle_timeout / 2,
                    server_settings=self.server_settings,
                    init=self._name_tenants if self.pooler == "session" else None,
                    connection_class=(
                        ScopedConnection if self.pooler == "transaction" else asyncpg.Connection
                    ),
                    reset=_release,
                )
                self._lane = Lane(
                    pool, idle_s=self._idle_timeout / 2, release_timeout_s=self._connect_timeout
                )
                self.pool = pool
                self.last_error = None
            except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._unreachable.occurred(error=self.last_error)
                await asyncio.sleep(self._interval)
        self._unreachable.ended()
        self.ready.set()
        log.info("database pool open", max_size=self._max)
        if self.on_ready is not None:
            await self.on_ready()

    async def _run_migrations(self) -> None:
        """On a connection of its own to the direct DSN: the advisory lock that serializes a
        fleet's migrations is a session's, which a transaction pooler would hand around."""
        conn = await asyncpg.connect(
            self.direct_dsn, timeout=self._connect_timeout, statement_cache_size=0
        )
        try:
            applied = await migrate(conn)
        finally:
            await conn.close(timeout=self._connect_timeout)
        if applied:
            log.info("schema migrated", versions=applied)

    @contextlib.asynccontextmanager
    async def connection(
        self, timeout: float | None = None, *, bounded: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection within `timeout`; `bounded`: the caller already awaits this
        under a timeout scope of its own, of at most `timeout`."""
        pool = self.pool
        if pool is None:
            raise DatabaseNotConnected(self.last_error or "database not connected yet")
        lane = self._lane
        assert lane is not None  # made with the pool
        epoch = lane.epoch
        conn = lane.take()
        if conn is None:
            conn = await self._acquire(pool, timeout, bounded)
        scoped = None
        kept = False
        try:
            if self.pooler == "transaction":
                scoped = conn.transaction()
                conn.scope_next_begin(self._scope)
                await scoped.start()
            yield conn
            if scoped is not None:
                done, scoped = scoped, None
                await done.commit()
            kept = lane.keep(conn, epoch)
        except BaseException as exc:
            # A domain rejection or a data error reported by a healthy server leaves the protocol
            # in step. Anything else (a timeout, a cancellation, a broken socket, a server going
            # down mid-statement) may have left an operation half done, and the cheap release
            # below would hand that connection to the next caller: it goes instead.
            healthy = isinstance(exc, RegistryError) or (
                isinstance(exc, asyncpg.PostgresError)
                and classify(exc) in (ErrorKind.PERMANENT, ErrorKind.TRANSIENT)
            )
            if getattr(exc, "sqlstate", None) == PRIMARY_MOVED:
                # This server no longer takes writes: neither do the pool's other connections
                # to it. Those in use go when released, the idle ones at their next acquire.
                await self.expire()
            if not healthy:
                # Already handed back when the pool noticed the socket die: nothing to end.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            elif scoped is not None:
                await self._roll_back(conn, scoped)
            raise
        finally:
            if not kept:
                # Bounds the reset's ROLLBACK, if one is needed (acquire no longer passes a
                # timeout for release to inherit).
                await pool.release(conn, timeout=self._connect_timeout)

    async def _acquire(
        self, pool: asyncpg.Pool, timeout: float | None, bounded: bool
    ) -> asyncpg.Connection:
        # Callers were admitted by the bulkhead, so a connection is free or being opened: the
        # wait is spent connecting, and bounded by the caller's time.
        wait = self.acquire_timeout_s if timeout is None else timeout
        try:
            if bounded and pool.get_idle_size():
                # An open connection is free, so nothing is waited for, and the caller's own
                # scope bounds the call: a second timer would be armed and cancelled for nothing.
                conn = await pool.acquire()
            else:
                # A timeout scope rather than acquire(timeout=): that one wraps the wait in
                # asyncio.wait_for, a task per call.
                async with asyncio.timeout(wait):
                    conn = await pool.acquire()
            if POOL_FLOOR.active:
                self._floor_restored(pool)
        except asyncpg.PostgresError as exc:
            if not refuses_connections(exc):
                raise
            # The server (or the pooler in front of it) has no slot for another connection:
            # a capacity limit, answered like a full bulkhead, never counted as an outage.
            raise Overloaded(
                f"PostgreSQL refuses more connections ({exc})",
                reason="server-full",
                retry_after=1.0,
            ) from exc
        except TimeoutError:
            # Every connection busy with real work explains the wait (more callers than the
            # bulkhead admits, e.g. background work piling up): capacity, not an outage. With
            # some free, the wait was spent connecting: a failure of the database.
            if pool.get_size() - self._idle(pool) >= self._max:
                raise Overloaded(
                    "all database connections are busy", reason="queue-timeout", retry_after=1.0
                ) from None
            raise
        return conn

    async def expire(self) -> None:
        """Every connection open now is closed once its call ends, and none is handed out
        again: a new call opens a new one (to the server the DSN names now)."""
        if self.pool is not None:
            await self.pool.expire_connections()
        if self._lane is not None:
            self._lane.expire()

    @staticmethod
    async def _roll_back(conn: asyncpg.Connection, scoped: Any) -> None:
        # The release's reset would roll back too, but as an unmanaged transaction, with a
        # complaint; a connection that cannot even do this goes.
        try:
            await scoped.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()

    async def set_tenants(self, tenants: list[str]) -> None:
        """After a token reload: new connections carry the new tenant list, old ones go."""
        self._set_scope(tenants)
        if self.pool is not None:
            self.pool.set_connect_args(self._dsn, server_settings=self.server_settings)
        await self.expire()

    def _floor_restored(self, pool: asyncpg.Pool) -> None:
        # asyncpg logs each failure to reopen its minimum of connections, never the success
        # (`proxy.observability.conditions.POOL_FLOOR`): the pool at its floor again is that.
        if pool.get_size() >= self._min:
            POOL_FLOOR.ended()

    def _idle(self, pool: asyncpg.Pool) -> int:
        # Connections kept in the lane wait for a call like the pool's idle ones.
        idle: int = pool.get_idle_size()
        return idle + (len(self._lane) if self._lane is not None else 0)

    def stats(self) -> dict[str, Any]:
        pool = self.pool
        if pool is not None and POOL_FLOOR.active:
            self._floor_restored(pool)
        if pool is None:
            return {
                "connected": False,
                "in_use": 0,
                "idle": 0,
                "max": self._max,
                "last_error": self.last_error,
            }
        size, idle = pool.get_size(), self._idle(pool)
        return {
            "connected": True,
            "in_use": size - idle,
            "idle": idle,
            "max": self._max,
            "background": self.background,
            "last_error": self.last_error,
        }

    async def close(self, timeout: float = 5.0) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.pool is not None:
            try:
                async with asyncio.timeout(timeout):
                    if self._lane is not None:
                        # The pool's close waits for every connection out, the lane's too.
                        await self._lane.drain()
                    await self.pool.close()
            except TimeoutError:
                self.pool.terminate()
