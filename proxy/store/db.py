"""The connection pool to PostgreSQL, opened in the background.

The sidecar must start (and report not ready) when PostgreSQL is not there yet, and connect as
soon as it appears, without a restart; so the pool is created by a background task that retries
until it succeeds, then applies migrations once. Requests reach it through the service's
bulkhead (`proxy.resilience.Bulkhead`), which admits no more callers than the pool has
connections for them; the pool holds a few more (`background`) for the journal replay and
maintenance, so they get a connection however busy the front door is.
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
from proxy.store.migrate import migrate
from proxy.store.pg_errors import classify

log = structlog.get_logger(__name__)


TENANTS_SETTING = "registry_proxy.tenants"


def tenant_settings(tenants: list[str]) -> dict[str, str]:
    """Startup parameters naming the tenants a connection may see (row-level security).

    A startup parameter is the session's reset value, so it survives the RESET ALL the pool runs
    when a connection is released: the wall costs nothing per request.
    """
    return {TENANTS_SETTING: ",".join(sorted(set(tenants)))}


async def _release(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before reuse here: no open transaction, nothing else.

    asyncpg's default reset (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlock) is a round trip on
    every release. Pooled connections here change no session state (the tenant list is a
    startup parameter, LISTEN has its own connection, the migration lock is released by its
    owner), so that round trip would buy nothing but half the database path's throughput. A
    connection whose use was interrupted is terminated in `Database.connection` instead.
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
        min_size: int = 2,
        max_size: int = 10,
        background: int = 0,
        acquire_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        statement_cache_size: int = 256,
        reconnect_interval_s: float = 0.5,
        run_migrations: bool = True,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        tenants: list[str] | None = None,
    ) -> None:
        self._dsn = dsn
        self._min = min_size
        self._max = max_size + background
        self.background = background
        self.acquire_timeout_s = acquire_timeout_s
        self._connect_timeout = connect_timeout_s
        self._cache = statement_cache_size
        self._interval = reconnect_interval_s
        self._migrate = run_migrations
        # Awaited once the pool is open and migrated. Public, to be set after construction:
        # what it wakes (the journal's replay) is built after the database.
        self.on_ready = on_ready
        self.pool: asyncpg.Pool | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.server_settings = tenant_settings(tenants or [])
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

    async def _open_loop(self) -> None:
        while self.pool is None:
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min,
                    max_size=self._max,
                    timeout=self._connect_timeout,
                    statement_cache_size=self._cache,
                    # A connection idle for a while may be on the far side of a dead network.
                    max_inactive_connection_lifetime=60.0,
                    server_settings=self.server_settings,
                    reset=_release,
                )
                if self._migrate:
                    async with pool.acquire() as conn:
                        applied = await migrate(conn)
                        if applied:
                            log.info("schema migrated", versions=applied)
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

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        pool = self.pool
        if pool is None:
            raise DatabaseNotConnected(self.last_error or "database not connected yet")
        # Callers were admitted by the bulkhead, so a connection is free or being opened: the
        # wait is spent connecting, and bounded by the caller's time.
        wait = self.acquire_timeout_s if timeout is None else timeout
        try:
            # A timeout scope rather than acquire(timeout=): that one wraps the wait in
            # asyncio.wait_for, a task per call, for a wait that is nearly always zero.
            async with asyncio.timeout(wait):
                conn = await pool.acquire()
            if POOL_FLOOR.active:
                self._floor_restored(pool)
        except TimeoutError:
            # Every connection busy with real work explains the wait (more callers than the
            # bulkhead admits, e.g. background work piling up): capacity, not an outage. With
            # some free, the wait was spent connecting: a failure of the database.
            if pool.get_size() - pool.get_idle_size() >= self._max:
                raise Overloaded(
                    "all database connections are busy", reason="queue-timeout", retry_after=1.0
                ) from None
            raise
        try:
            yield conn
        except BaseException as exc:
            # A domain rejection or a data error reported by a healthy server leaves the protocol
            # in step. Anything else (a timeout, a cancellation, a broken socket, a server going
            # down mid-statement) may have left an operation half done, and the cheap release
            # below would hand that connection to the next caller: it goes instead.
            healthy = isinstance(exc, RegistryError) or (
                isinstance(exc, asyncpg.PostgresError)
                and classify(exc) in (ErrorKind.PERMANENT, ErrorKind.TRANSIENT)
            )
            if not healthy:
                # Already handed back when the pool noticed the socket die: nothing to end.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            raise
        finally:
            # Bounds the reset's ROLLBACK, if one is needed (acquire no longer passes a timeout
            # for release to inherit).
            await pool.release(conn, timeout=self._connect_timeout)

    async def set_tenants(self, tenants: list[str]) -> None:
        """After a token reload: new connections carry the new tenant list, old ones go."""
        self.server_settings = tenant_settings(tenants)
        if self.pool is not None:
            self.pool.set_connect_args(self._dsn, server_settings=self.server_settings)
            await self.pool.expire_connections()

    def _floor_restored(self, pool: asyncpg.Pool) -> None:
        # asyncpg logs each failure to reopen its minimum of connections, never the success
        # (`proxy.observability.conditions.POOL_FLOOR`): the pool at its floor again is that.
        if pool.get_size() >= self._min:
            POOL_FLOOR.ended()

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
        size, idle = pool.get_size(), pool.get_idle_size()
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
                    await self.pool.close()
            except TimeoutError:
                self.pool.terminate()
