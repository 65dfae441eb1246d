"""The application factory: one call builds the whole sidecar from its settings.

Resources (pool, journal, replica sync, probe, replay, snapshots) live in one `cleanup_ctx`
generator, so they start with the app and stop with it, in reverse order. Instrumentation is
attached here, through the breaker's listeners and the retry and service hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from proxy.http import keys
from proxy.http.auth import TokenStore
from proxy.http.middleware import Gate, RequestIds, guard, observe
from proxy.http.ratelimit import RateLimiter
from proxy.http.routes import add_routes
from proxy.observability.asyncio_noise import quiet_abandoned_connects
from proxy.observability.metrics import Metrics
from proxy.resilience.breaker import CircuitBreaker, Transition
from proxy.resilience.budget import RetryBudget
from proxy.resilience.bulkhead import Bulkhead, BulkheadHooks
from proxy.resilience.looplag import LoopLag
from proxy.resilience.probe import HealthProbe
from proxy.resilience.retry import RetryHooks
from proxy.service import RegistryService, ServiceHooks
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.journal import Journal
from proxy.store.replica import Replica, snapshot_rows
from proxy.store.replica_sync import ReplicaSync
from proxy.store.repository import prune_ledger
from proxy.store.snapshot import read_snapshot, write_snapshot

log = structlog.get_logger(__name__)

JOURNAL_OUTCOMES = 1_000


class ConfigurationError(RuntimeError):
    pass


def create_app(
    settings: Settings,
    *,
    tokens: TokenStore | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    if settings.database_url is None:
        raise ConfigurationError(
            "no database: set REGISTRY_PROXY_DATABASE_URL or REGISTRY_PROXY_DATABASE_URL_FILE"
        )
    app = web.Application(
        middlewares=[observe, guard],
        client_max_size=settings.request.max_body_bytes,
        handler_args={
            "max_field_size": settings.request.max_header_bytes,
            "max_line_size": settings.request.max_header_bytes,
        },
    )
    app[keys.SETTINGS] = settings
    app[keys.TOKENS] = (
        tokens if tokens is not None else TokenStore.from_json(settings.tokens_json())
    )
    app[keys.METRICS] = metrics or Metrics()
    rl = settings.rate_limit
    app[keys.LIMITER] = (
        RateLimiter(rate_per_s=rl.rate_per_s, burst=rl.burst) if rl.enabled else None
    )
    app[keys.GATE] = Gate(
        settings=settings,
        tokens=app[keys.TOKENS],
        metrics=app[keys.METRICS],
        limiter=app[keys.LIMITER],
        ids=RequestIds(),
    )
    add_routes(app)
    app.cleanup_ctx.append(_resources)
    return app


def _breaker(settings: Settings) -> CircuitBreaker:
    b = settings.breaker
    return CircuitBreaker(
        "postgres",
        failure_threshold=b.failure_threshold,
        window_s=b.window_s,
        min_calls=b.min_calls,
        failure_rate=b.failure_rate,
        slow_call_s=b.slow_call_ms / 1000,
        slow_call_rate=b.slow_call_rate,
        open_base_s=b.open_base_ms / 1000,
        open_max_s=b.open_max_ms / 1000,
        open_multiplier=b.open_multiplier,
        open_jitter=b.open_jitter,
        half_open_max_calls=b.half_open_max_calls,
        half_open_successes=b.half_open_successes,
        retry_hint_s=b.probe_interval_ms / 1000,
    )


def _instrument(metrics: Metrics, breaker: CircuitBreaker) -> ServiceHooks:
    def on_transition(t: Transition) -> None:
        metrics.breaker_transitions.labels(breaker.name, t.from_state.value, t.to_state.value).inc()
        metrics.set_breaker_state(breaker.name, t.to_state.value)
        log.warning(
            "breaker transition",
            dependency=breaker.name,
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            cause=t.cause,
        )

    breaker.add_listener(on_transition)

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        metrics.retries.labels(type(exc).__name__).inc()

    return ServiceHooks(
        db_call=metrics.observe_db_call,
        replica_hit=metrics.replica_hits.inc,  # per read: no wrapper frame
        journal_append=lambda: _both(metrics.journal_appends.inc, metrics.writes_accepted.inc),
        committed=lambda path: metrics.writes_committed.labels(path).inc(),
        replayed=lambda outcome: metrics.journal_replay.labels(outcome).inc(),
        shed=lambda reason: metrics.shed.labels(reason).inc(),
        retry=RetryHooks(
            on_retry=on_retry,
            on_budget_exhausted=metrics.retry_budget_exhausted.inc,
        ),
    )


def _both(a: Callable[[], None], b: Callable[[], None]) -> None:
    a()
    b()


async def _prune_loop(settings: Settings, db: Database) -> None:
    """Idempotency is remembered for `ledger_retention_hours`, not forever."""
    await db.ready.wait()
    while True:
        try:
            async with db.connection(timeout=30) as conn:
                removed = await prune_ledger(conn, settings.database.ledger_retention_hours)
            if removed:
                log.info("operations ledger pruned", removed=removed)
        except Exception as exc:  # maintenance must never take the sidecar down
            log.warning("operations ledger not pruned", error=str(exc))
        await asyncio.sleep(3600)


async def _snapshot_loop(settings: Settings, replica: Replica) -> None:
    while True:
        await asyncio.sleep(settings.replica.snapshot_interval_s)
        await _write_snapshot(settings, replica)


async def _write_snapshot(settings: Settings, replica: Replica) -> None:
    # A replica still running on an old snapshot is not written back: it would refresh the
    # snapshot's timestamp without refreshing its content.
    if not replica.warm or replica.from_snapshot:
        log.debug("replica snapshot skipped", warm=replica.warm)
        return
    view, watermark = replica.snapshot_view(), replica.watermark
    try:
        # Building and encoding the rows takes tens of milliseconds at 10,000 agents: not on
        # the event loop.
        await asyncio.to_thread(
            lambda: write_snapshot(settings.journal.dir, snapshot_rows(view), watermark=watermark)
        )
    except OSError as exc:
        log.error("replica snapshot failed", error=str(exc))
    else:
        log.info("replica snapshot written", agents=replica.size, watermark=replica.watermark)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    metrics = app[keys.METRICS]
    assert settings.database_url is not None
    dsn = settings.database_url.get_secret_value()
    breaker = _breaker(settings)
    r = settings.retry
    budget = RetryBudget(
        ratio=r.budget_ratio, min_per_s=r.budget_min_per_s, window_s=r.budget_window_s
    )
    # Finished operations stay in the journal only so /v1/operations can answer while PostgreSQL
    # is away; the ledger is their durable record. Each costs about 2 KiB of memory.
    journal = await Journal.open(
        settings.journal.dir,
        fsync=settings.journal.fsync,
        max_outcomes=JOURNAL_OUTCOMES,
        reserve_bytes=settings.journal.reserve_bytes,
        on_damage=settings.journal.on_damage.value,
    )
    replica: Replica | None = None
    if settings.replica.enabled:
        replica = Replica(max_agents=settings.replica.max_agents)
        metrics.replica_max_staleness.set(settings.replica.max_staleness_ms / 1000)
        snap = await asyncio.to_thread(read_snapshot, settings.journal.dir)
        if snap is not None:
            replica.load_snapshot(snap.data, watermark=snap.watermark, written_at=snap.written_at)
            log.info("replica loaded from snapshot", agents=replica.size, watermark=snap.watermark)
    hooks = _instrument(metrics, breaker)
    db = Database(
        dsn,
        min_size=settings.database.pool_min_size,
        max_size=settings.database.pool_max_size,
        background=settings.database.background_connections,
        acquire_timeout_s=settings.database.acquire_timeout_ms / 1000,
        connect_timeout_s=settings.database.connect_timeout_ms / 1000,
        statement_cache_size=settings.database.statement_cache_size,
        reconnect_interval_s=settings.database.reconnect_interval_ms / 1000,
        run_migrations=settings.migrate_on_start,
        tenants=app[keys.TOKENS].tenants(),
    )
    bulkhead = Bulkhead(
        limit=settings.database.pool_max_size,
        max_queue=settings.database.queue_max,
        max_wait_s=settings.database.acquire_timeout_ms / 1000,
        hooks=BulkheadHooks(waited=metrics.db_queue_wait.observe),
    )
    lag = LoopLag(
        threshold_s=settings.overload.max_loop_lag_ms / 1000,
        window_s=settings.overload.loop_lag_window_ms / 1000,
    )
    service = RegistryService(
        settings=settings,
        database=db,
        breaker=breaker,
        budget=budget,
        replica=replica,
        journal=journal,
        hooks=hooks,
        bulkhead=bulkhead,
        lag=lag,
    )
    db.on_ready = _wake(service)

    async def probe_query(timeout: float) -> None:
        # A loop of its own per probe: the connect timeout cuts openings short there too.
        quiet_abandoned_connects(asyncio.get_running_loop())
        conn = await asyncpg.connect(dsn, timeout=timeout, server_settings=db.server_settings)
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close(timeout=timeout)

    async def check(timeout: float) -> None:
        # On a thread with an event loop of its own: a sidecar whose loop is behind under load
        # would otherwise time its probe out against a healthy PostgreSQL and stay open.
        await asyncio.to_thread(asyncio.run, probe_query(timeout))

    b = settings.breaker
    probe = HealthProbe(
        breaker, check, interval_s=b.probe_interval_ms / 1000, timeout_s=b.probe_timeout_ms / 1000
    )
    sync: ReplicaSync | None = None
    if replica is not None:
        sync = ReplicaSync(
            replica,
            dsn,
            tenants=app[keys.TOKENS].tenants(),
            max_staleness_s=settings.replica.max_staleness_ms / 1000,
            resync_interval_s=settings.replica.resync_interval_s,
            connect_timeout_s=settings.database.connect_timeout_ms / 1000,
            reconnect_interval_s=settings.database.reconnect_interval_ms / 1000,
            schema_ready=db.ready,
        )
        service.on_replayed = sync.request_resync
    app[keys.SERVICE] = service
    app[keys.PROBE] = probe
    app[keys.SYNC] = sync

    background: set[asyncio.Task[None]] = set()
    if replica is not None:
        rep = replica

        def snapshot_on_open(t: Transition) -> None:
            # The last moment the replica is known good: keep it for a restart mid-outage.
            if t.to_state.value == "open":
                task = asyncio.create_task(
                    _write_snapshot(settings, rep), name="replica-snapshot-on-open"
                )
                background.add(task)
                task.add_done_callback(background.discard)

        breaker.add_listener(snapshot_on_open)

    db.start()
    lag.start()
    if sync is not None:
        sync.start()
    probe.start()
    service.start()
    snapshots = (
        asyncio.create_task(_snapshot_loop(settings, replica), name="replica-snapshot")
        if replica is not None
        else None
    )
    pruning = asyncio.create_task(_prune_loop(settings, db), name="ledger-prune")
    log.info(
        "sidecar started",
        read_mode=settings.read_mode.value,
        write_fallback=settings.write_fallback.value,
        journal_depth=journal.depth,
    )
    try:
        yield
    finally:
        pruning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruning
        if snapshots is not None:
            snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshots
        await probe.stop()
        await lag.stop()
        await service.stop()
        if sync is not None:
            await sync.stop()
        if replica is not None:
            await _write_snapshot(settings, replica)
        await journal.close()
        await db.close()
        log.info("sidecar stopped", journal_depth=journal.depth)


def _wake(service: RegistryService) -> Callable[[], Awaitable[None]]:
    async def on_ready() -> None:
        service.wake_replay()

    return on_ready
