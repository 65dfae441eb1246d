"""What the sidecar says about itself, and the one change an operator makes to it at run time.

The HTTP layer answers /v1/status, /readyz and /metrics, and the command line reloads tenants on
SIGHUP; all of it needs figures from the pool, the replica, its sync, the journal and the health
probe. `Sidecar` gathers them here, beside the service, so that neither the HTTP layer nor the
command line reaches past the service into storage: they ask for a document, a verdict or a set
of numbers, and get plain values back. The gauges are numbers and not metric objects, so that the
service layer stays free of the metrics library.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.registry.requests import REGISTRY_KINDS
from proxy.resilience import Bulkhead, CircuitBreaker, HealthProbe, LoopLag, RetryBudget
from proxy.service.failover_guard import FailoverGuard
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.journal import Journal
from proxy.store.replica import Replica
from proxy.store.replica_sync import ReplicaSync

# Parts of the status document about the sidecar and PostgreSQL as a whole, which every role
# sees; anything else reaches a non-admin token only as `_tenant_status` rebuilds it.
_SIDECAR_WIDE = (
    "read_mode",
    "write_fallback",
    "breaker",
    "probe",
    "retry_budget",
    "pool",
    "overload",
)
# Breaker states in which a database call may be tried: the database counts towards readiness.
_DATABASE_USABLE = ("closed", "half_open", "disabled")


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer to /readyz, in the order its document shows the fields."""

    ready: bool
    database: bool
    replica_warm: bool
    journal: str  # the journal's condition; readiness is about reads, this is only shown


@dataclass(frozen=True, slots=True)
class Gauges:
    """The figures /metrics sets its gauges to just before it renders them.

    None: the sidecar runs without that part (no replica, no journal, ...), and the gauge is left
    as it is. A replica that never synced has an age of NaN, which Prometheus shows as such."""

    pool_in_use: int
    pool_idle: int
    pool_max: int
    replica_agents: int | None
    replica_age_s: float | None
    journal_depth: int | None
    journal_writable: bool | None
    journal_quarantine_files: int | None
    db_queue_depth: int | None
    loop_lag_s: float | None
    failover_unconfirmed: int | None


class _Service(Protocol):
    """What this module reads of `RegistryService`: public attributes, and nothing else."""

    @property
    def db(self) -> Database: ...
    @property
    def breaker(self) -> CircuitBreaker: ...
    @property
    def budget(self) -> RetryBudget | None: ...
    @property
    def replica(self) -> Replica | None: ...
    @property
    def journal(self) -> Journal | None: ...
    @property
    def bulkhead(self) -> Bulkhead | None: ...
    @property
    def lag(self) -> LoopLag | None: ...
    @property
    def replays(self) -> dict[str, Any]: ...
    @property
    def guard(self) -> FailoverGuard | None: ...
    def overload_stats(self) -> dict[str, Any]: ...


class Sidecar:
    """The sidecar as its operators see it: status, readiness, gauges and the tenant reload."""

    def __init__(
        self,
        *,
        settings: Settings,
        service: _Service,
        probe: HealthProbe,
        sync: ReplicaSync | None,
    ) -> None:
        self._settings = settings
        self._service = service
        self._probe = probe
        self._sync = sync

    # -- /v1/status ------------------------------------------------------------------------

    def status(self, *, tenant: str | None = None) -> dict[str, Any]:
        """The status document: whole (for an admin) when `tenant` is None, otherwise as a token
        of `tenant` may see it."""
        full = self._full_status()
        return full if tenant is None else self._tenant_status(full, tenant)

    def _full_status(self) -> dict[str, Any]:
        service, settings, sync = self._service, self._settings, self._sync
        journal = service.journal
        replica_stats = (
            service.replica.stats()
            if service.replica is not None
            else {
                "agents": 0,
                "age_seconds": None,
                "partial": False,
                "warm": False,
            }
        )
        if sync is not None:
            replica_stats.update(
                resyncs=sync.resyncs,
                catch_ups=sync.catch_ups,
                notifications=sync.notifications,
                notify_windows=sync.notify_windows,
            )
        return {
            "read_mode": settings.read_mode.value,
            "write_fallback": settings.write_fallback.value,
            "breaker": service.breaker.snapshot(),
            "probe": self._probe.snapshot(),
            "retry_budget": service.budget.snapshot() if service.budget is not None else None,
            "replica": replica_stats,
            "journal": journal.stats() if journal is not None else {"depth": 0, "enabled": False},
            "replay": dict(service.replays),
            "pool": service.db.stats(),
            "overload": service.overload_stats(),
            "failover_guard": (
                service.guard.status() if service.guard is not None else {"enabled": False}
            ),
        }

    def _tenant_status(self, full: dict[str, Any], tenant: str) -> dict[str, Any]:
        """The sidecar's own health, and replica and journal figures of `tenant` only. No other
        tenant's counts, no journal path, no replay errors (which name the writes they failed
        on)."""
        replica, journal = self._service.replica, self._service.journal
        pending = journal.pending_for(tenant) if journal is not None else []
        doc = {key: full[key] for key in _SIDECAR_WIDE if key in full}
        rep = full["replica"]
        doc["replica"] = {
            "agents": replica.count(tenant) if replica is not None else 0,
            # The journaled writes the replica shows over its rows: those of the registry's kinds.
            "pending_writes": (
                sum(e.kind in REGISTRY_KINDS for e in pending) if replica is not None else 0
            ),
            **{
                key: rep[key]
                for key in ("age_seconds", "partial", "warm", "connected", "from_snapshot")
                if key in rep
            },
        }
        if journal is None:
            doc["journal"] = {"depth": 0, "enabled": False}
        else:
            oldest = min((entry.created_at for entry in pending), default=None)
            doc["journal"] = {
                "depth": len(pending),
                "oldest_pending_age_s": (
                    max(0.0, time.time() - oldest) if oldest is not None else 0.0
                ),
                "failed": journal.failed,
            }
        doc["scope"] = {"tenant": tenant}
        return doc

    # -- /readyz and /metrics --------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready when reads can be answered: by PostgreSQL (a pool, and a breaker that lets
        calls through) or by a warm replica."""
        service = self._service
        database = service.db.pool is not None and service.breaker.state.value in _DATABASE_USABLE
        replica_warm = service.replica is not None and service.replica.warm
        journal = service.journal.condition if service.journal is not None else "disabled"
        return Readiness(
            ready=database or replica_warm,
            database=database,
            replica_warm=replica_warm,
            journal=journal,
        )

    def gauges(self) -> Gauges:
        service = self._service
        pool = service.db.stats()
        replica, journal = service.replica, service.journal
        age = replica.age() if replica is not None else None
        return Gauges(
            pool_in_use=pool["in_use"],
            pool_idle=pool["idle"],
            pool_max=pool["max"],
            replica_agents=replica.size if replica is not None else None,
            replica_age_s=(age if age is not None else math.nan) if replica is not None else None,
            journal_depth=journal.depth if journal is not None else None,
            journal_writable=journal.writable if journal is not None else None,
            journal_quarantine_files=journal.quarantine_files if journal is not None else None,
            db_queue_depth=service.bulkhead.queued if service.bulkhead is not None else None,
            loop_lag_s=service.lag.last_s if service.lag is not None else None,
            failover_unconfirmed=len(service.guard) if service.guard is not None else None,
        )

    def journal_depth(self) -> int:
        """Writes acknowledged and not yet in PostgreSQL (0 without a journal)."""
        journal = self._service.journal
        return journal.depth if journal is not None else 0

    # -- SIGHUP ----------------------------------------------------------------------------

    async def set_tenants(self, tenants: list[str]) -> None:
        """After the token file was reloaded with another set of tenants: the replica follows
        the new set, and database connections are reopened with it (row-level security reads it
        from their startup parameters)."""
        if self._sync is not None:
            self._sync.set_tenants(tenants)
        await self._service.db.set_tenants(tenants)
