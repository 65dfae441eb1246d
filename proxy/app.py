"""The application factory: one call builds the whole sidecar from its settings.

The HTTP layer builds its part (`proxy.http.application`); here it gets its resources. Each
resource has a `cleanup_ctx` of its own (journal, replica, database pool, replica sync,
loop-lag monitor, service and its replay, health probe, replica snapshots, ledger pruning), in
the order they start; they stop in the reverse order, so the service stops before the storage it
writes to closes. A context leaves its resource on the app under a key below for the contexts
after it. Instrumentation is attached here, in one place: the app's one listener on the
breaker (metrics, log, a snapshot on open), the retry, bulkhead and service hooks, and tracing
(the gate's server spans and the service's, when the environment turns it on).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from aiohttp import web

from proxy.http import keys
from proxy.http.application import web_application
from proxy.http.auth import TokenStore
from proxy.http.routes import ROUTES
from proxy.observability import spans
from proxy.observability.asyncio_noise import quiet_abandoned_connects
from proxy.observability.metrics import Metrics
from proxy.observability.runqueue import RunQueueWait
from proxy.resilience import (
    Bulkhead,
    BulkheadHooks,
    CircuitBreaker,
    HealthProbe,
    LoopLag,
    RetryBudget,
    RetryHooks,
    Transition,
)
from proxy.service import RegistryService, ServiceHooks, Sidecar
from proxy.settings import Settings
from proxy.store import pg_errors
from proxy.store.db import Database
from proxy.store.journal import Journal
from proxy.store.replica import Replica
from proxy.store.replica_sync import ReplicaSync
from proxy.store.repository import prune_ledger
from proxy.store.side_loop import SideLoop
from proxy.store.snapshot import encode_in_steps, read_snapshot, write_snapshot_body

if TYPE_CHECKING:  # imported only when tracing is on (proxy.observability.spans.load)
    from proxy.observability.tracing import Tracing

log = structlog.get_logger(__name__)

JOURNAL_OUTCOMES = 1_000

# The resources, as the contexts leave them on the app (tests read them here too).
BREAKER = web.AppKey("breaker", CircuitBreaker)
JOURNAL = web.AppKey("journal", Journal)
REPLICA: web.AppKey[Replica | None] = web.AppKey("replica")
DATABASE = web.AppKey("database", Database)
SYNC: web.AppKey[ReplicaSync | None] = web.AppKey("replica_sync")
LAG = web.AppKey("loop_lag", LoopLag)
PROBE = web.AppKey("probe", HealthProbe)
TRACING: web.AppKey[Tracing | None] = web.AppKey("tracing")


class ConfigurationError(RuntimeError):
    pass


def create_app(
    settings: Settings,
    *,
    tokens: TokenStore | None = None,
    metrics: Metrics | None = None,
    span_exporter: object | None = None,
) -> web.Application:
    """The sidecar; ``span_exporter`` (an OpenTelemetry `SpanExporter`) turns tracing on with
    it, whatever the environment says of exporters."""
    if settings.database_url is None:
        raise ConfigurationError(
            "no database: set REGISTRY_PROXY_DATABASE_URL or REGISTRY_PROXY_DATABASE_URL_FILE"
        )
    tracing = spans.load(
        routes={r.name: r.path for r in ROUTES},
        classify=lambda exc: pg_errors.classify(exc).value,
        describe=pg_errors.describe,
        exporter=span_exporter,
    )
    app = web_application(
        settings,
        tokens=tokens if tokens is not None else TokenStore.from_json(settings.tokens_json()),
        metrics=metrics or Metrics(),
        spans=tracing,
    )
    app[TRACING] = tracing
    if tracing is not None:
        app.on_cleanup.append(lambda _: tracing.close())
    app[BREAKER] = _breaker(settings)
    snapshots = _Snapshots(settings)
    app[BREAKER].add_listener(_on_transition(app[keys.METRICS], app[BREAKER], snapshots))
    app.cleanup_ctx.extend(
        [
            _journal,
            _replica,
            _database,
            _replica_sync,
            _loop_lag,
            _service,
            _probe,
            snapshots.context,
            _ledger_pruning,
        ]
    )
    # Signals run after every context has started, and after every one has stopped.
    app.on_startup.append(_started)
    app.on_cleanup.append(_stopped)
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


# ---- instrumentation ---------------------------------------------------------------------------


def _on_transition(
    metrics: Metrics, breaker: CircuitBreaker, snapshots: _Snapshots
) -> Callable[[Transition], None]:
    """The app's one listener on the breaker: metrics, a log line, a replica snapshot on open."""

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
        if t.to_state.value == "open":
            snapshots.breaker_opened()

    return on_transition


def _service_hooks(metrics: Metrics, tracing: Tracing | None) -> ServiceHooks:
    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        metrics.retries.labels(pg_errors.classify(exc).value).inc()
        if tracing is not None:
            tracing.retried(attempt, exc, delay)

    def attempted(outcome: str, duration_s: float) -> None:
        metrics.db_attempts.inc(outcome)

    def journaled() -> None:
        metrics.journal_appends.inc()
        metrics.writes_accepted.inc()

    return ServiceHooks(
        db_call=metrics.observe_db_call,
        db_refused=metrics.observe_refused_call,
        replica_hit=metrics.replica_hits.inc,  # per read: no wrapper frame
        journal_append=journaled,
        committed=metrics.writes_committed.inc,
        reapplied=metrics.failover_reapplied.inc,
        replayed=lambda outcome: metrics.journal_replay.labels(outcome).inc(),
        shed=lambda reason: metrics.shed.labels(reason).inc(),
        spans=tracing,
        retry=RetryHooks(
            on_retry=on_retry,
            on_budget_exhausted=metrics.retry_budget_exhausted.inc,
            on_call=attempted,
        ),
    )


# ---- the resources, in the order they start ----------------------------------------------------


async def _journal(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    # Finished operations stay in the journal only so /v1/operations can answer while PostgreSQL
    # is away; the ledger is their durable record. Each costs about 2 KiB of memory.
    journal = await Journal.open(
        settings.journal.dir,
        fsync=settings.journal.fsync,
        max_outcomes=JOURNAL_OUTCOMES,
        reserve_bytes=settings.journal.reserve_bytes,
        on_damage=settings.journal.on_damage.value,
    )
    app[JOURNAL] = journal
    try:
        yield
    finally:
        await journal.close()


async def _replica(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.replica.enabled:
        app[REPLICA] = None
        yield
        return
    replica = Replica(max_agents=settings.replica.max_agents)
    app[keys.METRICS].replica_max_staleness.set(settings.replica.max_staleness_ms / 1000)
    snap = await asyncio.to_thread(read_snapshot, settings.journal.dir)
    if snap is not None:
        replica.load_snapshot(snap.data, watermark=snap.watermark, written_at=snap.written_at)
        log.info("replica loaded from snapshot", agents=replica.size, watermark=snap.watermark)
    app[REPLICA] = replica
    try:
        yield
    finally:
        # After the sync and the service stopped (their contexts come later): the final state.
        await _write_snapshot(settings, replica)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    db = Database(
        _dsn(settings),
        direct_dsn=_direct_dsn(settings),
        pooler=settings.database.pooler,
        idle_timeout_s=settings.database.idle_timeout_ms / 1000,
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
    app[DATABASE] = db
    db.start()
    try:
        yield
    finally:
        await db.close()


async def _replica_sync(app: web.Application) -> AsyncIterator[None]:
    settings, replica = app[keys.SETTINGS], app[REPLICA]
    if replica is None:
        app[SYNC] = None
        yield
        return
    sync = ReplicaSync(
        replica,
        _direct_dsn(settings),
        tenants=app[keys.TOKENS].tenants(),
        max_staleness_s=settings.replica.max_staleness_ms / 1000,
        resync_interval_s=settings.replica.resync_interval_s,
        full_resync_interval_s=settings.replica.full_resync_interval_s,
        connect_timeout_s=settings.database.connect_timeout_ms / 1000,
        reconnect_interval_s=settings.database.reconnect_interval_ms / 1000,
        notify_window_s=settings.replica.notify_window_ms / 1000,
        schema_ready=app[DATABASE].ready,
    )
    app[SYNC] = sync
    sync.start()
    try:
        yield
    finally:
        await sync.stop()


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    overload = app[keys.SETTINGS].overload
    # Opened here, on the event loop's thread: it is that thread's wait it reads.
    waited = RunQueueWait.open()
    lag = LoopLag(
        threshold_s=overload.max_loop_lag_ms / 1000,
        window_s=overload.loop_lag_window_ms / 1000,
        on_sample=app[keys.METRICS].observe_loop_lag,
        waited=waited,
    )
    app[LAG] = lag
    lag.start()
    try:
        yield
    finally:
        await lag.stop()
        if waited is not None:
            waited.close()


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, db = app[keys.SETTINGS], app[keys.METRICS], app[DATABASE]
    r = settings.retry
    service = RegistryService(
        settings=settings,
        database=db,
        breaker=app[BREAKER],
        budget=RetryBudget(
            ratio=r.budget_ratio, min_per_s=r.budget_min_per_s, window_s=r.budget_window_s
        ),
        replica=app[REPLICA],
        journal=app[JOURNAL],
        hooks=_service_hooks(metrics, app[TRACING]),
        bulkhead=Bulkhead(
            limit=settings.database.pool_max_size,
            max_queue=settings.database.queue_max,
            max_wait_s=settings.database.acquire_timeout_ms / 1000,
            hooks=BulkheadHooks(waited=metrics.observe_queue_wait),
        ),
        lag=app[LAG],
    )

    async def replay_now() -> None:
        # As soon as PostgreSQL is there; `start` wakes the replay once too, should the pool
        # have opened before this.
        service.wake_replay()

    db.on_ready = replay_now
    sync = app[SYNC]
    if sync is not None:
        service.on_replayed = sync.request_resync
    app[keys.SERVICE] = service
    service.start()
    try:
        yield
    finally:
        await service.stop()


async def _probe(app: web.Application) -> AsyncIterator[None]:
    settings, db = app[keys.SETTINGS], app[DATABASE]
    dsn = _dsn(settings)

    async def probe_query(timeout: float) -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout, server_settings=db.server_settings)
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close(timeout=timeout)

    # A loop of its own: a sidecar whose loop is behind under load would otherwise time its
    # probe out against a healthy PostgreSQL and stay open.
    side = SideLoop(name="registry-proxy-probe", setup=quiet_abandoned_connects)

    async def check(timeout: float) -> None:
        await side.run(probe_query(timeout))

    b = settings.breaker
    probes = app[keys.METRICS].probes
    probe = HealthProbe(
        app[BREAKER],
        check,
        interval_s=b.probe_interval_ms / 1000,
        timeout_s=b.probe_timeout_ms / 1000,
        jitter=b.probe_jitter,
        on_probe=lambda ok, _duration_s: probes.labels("ok" if ok else "failed").inc(),
        describe=pg_errors.describe,
    )
    app[PROBE] = probe
    probe.start()
    try:
        yield
    finally:
        await probe.stop()
        await side.close()


class _Snapshots:
    """The replica's snapshot on disk, written every `replica.snapshot_interval_s`, and when the
    breaker opens: the last moment the replica is known good, kept for a restart mid-outage.
    The replica's own context writes the last one when it stops."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._replica: Replica | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        replica = app[REPLICA]
        if replica is None:
            yield
            return
        self._replica = replica
        async with _in_background(self._every_interval(replica), "replica-snapshot"):
            yield

    async def _every_interval(self, replica: Replica) -> None:
        every = self._settings.replica.snapshot_interval_s
        while True:
            # Jittered (+/- 20%) like the resyncs: sidecars started together (a pod's, a
            # fleet's) would otherwise write theirs at the same moments.
            await asyncio.sleep(every * random.uniform(0.8, 1.2))
            await _write_snapshot(self._settings, replica)

    def breaker_opened(self) -> None:
        if self._replica is None:
            return
        task = asyncio.create_task(
            _write_snapshot(self._settings, self._replica), name="replica-snapshot-on-open"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _write_snapshot(settings: Settings, replica: Replica) -> None:
    # A replica still running on an old snapshot is not written back: it would refresh the
    # snapshot's timestamp without refreshing its content.
    if not replica.warm or replica.from_snapshot:
        log.debug("replica snapshot skipped", warm=replica.warm)
        return
    view, watermark = replica.snapshot_view(), replica.watermark
    try:
        body = await encode_in_steps(view)
        # The checksum and the writes let go of the interpreter: on a worker thread.
        await asyncio.to_thread(
            write_snapshot_body, settings.journal.dir, body, watermark=watermark
        )
    except OSError as exc:
        log.error("replica snapshot failed", error=str(exc))
    else:
        log.info("replica snapshot written", agents=replica.size, watermark=replica.watermark)


async def _ledger_pruning(app: web.Application) -> AsyncIterator[None]:
    async with _in_background(_prune_loop(app[keys.SETTINGS], app[DATABASE]), "ledger-prune"):
        yield


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


# ---- once every resource has started, and once every one has stopped ---------------------------


async def _started(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    app[keys.SIDECAR] = Sidecar(
        settings=settings, service=app[keys.SERVICE], probe=app[PROBE], sync=app[SYNC]
    )
    log.info(
        "sidecar started",
        read_mode=settings.read_mode.value,
        write_fallback=settings.write_fallback.value,
        journal_depth=app[JOURNAL].depth,
    )


async def _stopped(app: web.Application) -> None:
    log.info("sidecar stopped", journal_depth=app[JOURNAL].depth)


@contextlib.asynccontextmanager
async def _in_background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """``work`` as a task for as long as the block runs; cancelled when it ends."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _dsn(settings: Settings) -> str:
    assert settings.database_url is not None  # create_app refuses settings without one
    return settings.database_url.get_secret_value()


def _direct_dsn(settings: Settings) -> str:
    """What LISTEN and migrations connect to: never through a transaction pooler."""
    direct = settings.database_direct_url
    return direct.get_secret_value() if direct is not None else _dsn(settings)
