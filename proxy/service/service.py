"""The resilient registry as the HTTP layer sees it: one object, `RegistryService`, whose
operations reach PostgreSQL through deadline, breaker and retry; reads fall back to the replica,
writes to the journal, and the journal drains when the breaker closes.

The parts each hold one concern and are given only what they need, so each reads alone:

- `database_call`: the guarded call every operation makes, and why a call got no answer;
- `reads`: PostgreSQL or the replica, saying which and why (`X-Registry-Fallback`);
- `writes`: committed, or journaled during an outage, exactly once;
- `backlog`: the journaled writes not yet applied, where writes and the replay meet;
- `replay` (with `apply_batch`): the journal drained into PostgreSQL in order;
- `admin`: the audit log, admin actions, the breaker set by hand, the overload figures.

This module builds them, starts and stops the replay, and ties them to the breaker's
transitions. Every operation is the part's own bound method, set on the service: a call through
the service costs no frame of its own (a get-by-id served by the replica is on the hot path).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from proxy.resilience import (
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    LoopLag,
    RetryBudget,
    Transition,
)
from proxy.service.admin import Admin
from proxy.service.backlog import Backlog
from proxy.service.context import ServiceHooks
from proxy.service.database_call import DatabaseCall
from proxy.service.failover_guard import Committed, FailoverGuard
from proxy.service.reads import Reads
from proxy.service.replay import Replay
from proxy.service.writes import Writes
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.journal import Journal
from proxy.store.replica import Replica
from proxy.store.wal_position import WalPosition, read_wal_position

log = structlog.get_logger(__name__)

# Reading the WAL position is one short query; a busy pool gets this long to lend a connection.
_POSITION_TIMEOUT_S = 2.0

# Breaker states in which PostgreSQL may answer: the replay runs (in half-open, its first batch
# is the trial that closes the breaker, when every request is served from the replica or
# journaled behind a backlog).
_ANSWERING = (BreakerState.CLOSED, BreakerState.DISABLED, BreakerState.HALF_OPEN)


class RegistryService:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        breaker: CircuitBreaker,
        budget: RetryBudget | None,
        replica: Replica | None,
        journal: Journal | None,
        hooks: ServiceHooks | None = None,
        bulkhead: Bulkhead | None = None,
        lag: LoopLag | None = None,
    ) -> None:
        self.settings = settings
        self.db = database
        self.breaker = breaker
        self.budget = budget
        self.replica = replica
        self.journal = journal
        self.hooks = hooks = hooks or ServiceHooks()
        self.bulkhead = bulkhead
        self.lag = lag
        self.on_replayed: Callable[[], None] | None = None
        """Called after a replay that took entries out of the journal."""

        call = DatabaseCall(
            settings=settings,
            database=database,
            breaker=breaker,
            budget=budget,
            hooks=hooks,
            bulkhead=bulkhead,
            lag=lag,
        )
        self._backlog = backlog = Backlog(replica)
        failover = settings.failover
        self.guard = guard = (
            FailoverGuard(hold_ms=failover.hold_ms, max_writes=failover.max_writes)
            if failover.guard and journal is not None and failover.max_writes > 0
            else None
        )
        self._guard_wake = asyncio.Event()
        self._guard_task: asyncio.Task[None] | None = None
        reads = Reads(settings=settings, replica=replica, journal=journal, hooks=hooks, call=call)
        writes = Writes(
            settings=settings,
            breaker=breaker,
            replica=replica,
            journal=journal,
            hooks=hooks,
            call=call,
            backlog=backlog,
            guard=guard,
        )
        self._replay = replay = Replay(
            settings=settings,
            database=database,
            breaker=breaker,
            replica=replica,
            journal=journal,
            hooks=hooks,
            call=call,
            backlog=backlog,
            drained=self._drained,
            guard=guard,
        )
        admin = Admin(
            breaker=breaker, bulkhead=bulkhead, lag=lag, call=call, writes=writes, backlog=backlog
        )
        self._background: set[asyncio.Task[None]] = set()

        self.get_agent = reads.get_agent
        self.get_agent_at_once = reads.get_agent_at_once
        self.may_answer_at_once = reads.may_answer_at_once
        self.get_agent_from_database = reads.get_agent_from_database
        self.query = reads.query
        self.stats = reads.stats
        self.operation = reads.operation
        self.write = writes.write
        self.new_event_id = writes.new_event_id
        self.replay = replay.run
        self.replays: dict[str, Any] = replay.stats
        self.audit = admin.audit
        self.record_admin = admin.record_admin
        self.set_breaker = admin.set_breaker
        self.overload_stats = admin.overload_stats

        breaker.add_listener(self._on_transition)

    def start(self) -> None:
        if self.journal is not None:
            if self.replica is not None:
                # Journaled before a restart: reads show them until the replay applies them.
                for entry in self.journal.pending():
                    self._backlog.show(entry)
            self._replay.start()
            self._backlog.wake()
        if self.guard is not None:
            self._guard_task = asyncio.create_task(
                self.guard.watch(
                    read=self._wal_position,
                    reapply=self._apply_again,
                    interval_s=self.settings.failover.check_interval_ms / 1000,
                    wake=self._guard_wake,
                ),
                name="failover-guard",
            )

    async def stop(self) -> None:
        if self._guard_task is not None:
            self._guard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard_task
        await self._replay.stop()

    async def _wal_position(self) -> WalPosition:
        async with self.db.connection(timeout=_POSITION_TIMEOUT_S) as conn:
            return await read_wal_position(conn, _POSITION_TIMEOUT_S)

    async def _apply_again(self, writes: list[Committed]) -> None:
        """Journal again, in commit order, writes a new primary may lack. Each is marked
        uncertain: reads show it once the replay has settled it against that primary's ledger."""
        journal = self.journal
        assert journal is not None
        for w in writes:
            try:
                entry = await journal.append(
                    op_id=w.op_id,
                    kind=w.kind,
                    tenant=w.tenant,
                    key=w.key,
                    payload={**w.payload, "uncertain": True},
                    reopen=True,
                )
            except Exception as exc:
                # Nothing else holds it now: say which, so it can be checked by hand.
                log.error(
                    "a write the new primary may lack could not be journaled again",
                    op_id=w.op_id,
                    kind=w.kind,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            self._backlog.show(entry)
            self.hooks.reapplied(1)
        self._backlog.wake()

    def wake_replay(self) -> None:
        self._backlog.wake()

    def _drained(self) -> None:
        if self.on_replayed is not None:
            self.on_replayed()

    def _on_transition(self, transition: Transition) -> None:
        if transition.to_state in _ANSWERING:
            self._backlog.wake()
            # PostgreSQL answers again, perhaps a newly promoted primary: look at once.
            self._guard_wake.set()
        else:
            # Writes waiting for their agent's backlog look again: PostgreSQL is away once
            # more, so they are journaled behind it rather than waiting out their deadline.
            self._backlog.look_again()
        if transition.to_state is BreakerState.OPEN and self.db.pool is not None:
            # Connections opened before the fault may be half-dead; start the recovery fresh.
            task = asyncio.create_task(self.db.expire())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
