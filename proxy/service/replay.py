"""The journal drained into PostgreSQL once it answers again: a loop that wakes when there is
reason to, and applies the entries in order, in batches, each exactly once.

What an entry's outcome means for the rest of the sidecar is settled here, in one step per batch:
the replica drops the pending write and shows PostgreSQL's row (no read sees a write twice or not
at all), the writes waiting for the agent go on, and the journal records the outcome. An entry
that fails in a way that is neither an outage nor a rejection is tried on later rounds, and
rejected with its reason after `REPLAY_ATTEMPTS`, so one poisoned entry cannot block the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from proxy.resilience import CircuitBreaker, Deadline
from proxy.service.apply_batch import apply_batch, replay_context
from proxy.service.backlog import AgentKey, Backlog
from proxy.service.context import ServiceHooks, op_id_of
from proxy.service.database_call import OPEN_STATES, DatabaseCall, DatabaseUnavailable
from proxy.service.failover_guard import Committed, FailoverGuard
from proxy.settings import Settings
from proxy.store import repository
from proxy.store.db import Database
from proxy.store.journal import Journal, JournalEntry, OpStatus
from proxy.store.pg_errors import describe
from proxy.store.replica import Replica

log = structlog.get_logger(__name__)

# Unexpected failures of one journal entry before it is rejected rather than retried.
REPLAY_ATTEMPTS = 5
# A batch holds at most `journal.replay_batch` entries of a few statements each; it gets at
# least this long, whatever the request deadline.
_BATCH_TIMEOUT_S = 10.0
# How long the loop sleeps when nothing wakes it, before it looks at the journal again.
_TICK_S = 2.0


class Replay:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        breaker: CircuitBreaker,
        replica: Replica | None,
        journal: Journal | None,
        hooks: ServiceHooks,
        call: DatabaseCall,
        backlog: Backlog,
        drained: Callable[[], None],
        guard: FailoverGuard | None = None,
    ) -> None:
        self._settings = settings
        self._guard = guard
        self._db = database
        self._breaker = breaker
        self._replica = replica
        self._journal = journal
        self._hooks = hooks
        self._call = call
        self._backlog = backlog
        self.stats: dict[str, Any] = {
            "runs": 0,
            "applied": 0,
            "rejected": 0,
            "failed": 0,
            "last_error": None,
        }
        self._drained = drained  # after a run that took entries out of the journal
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}
        # Journal ids of entries in a replay batch that failed after it was sent, by agent: the
        # agent stays held until they are settled.
        self._unsettled: dict[AgentKey, set[str]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="journal-replay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        due = self._backlog.due
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await due.wait()
            due.clear()
            if self._journal is None or not self._journal.depth:
                continue
            if self._breaker.state in OPEN_STATES or self._db.pool is None:
                continue
            try:
                await self.run()
            except Exception as exc:  # keep the loop alive; the next wake tries again
                log.error("journal replay failed", error=describe(exc))

    async def run(self) -> int:
        """Apply the journal in order; returns how many entries left it. Single-flight.

        Entries go in batches of `journal.replay_batch`, each batch one PostgreSQL transaction
        (a savepoint per entry, so a rejected entry does not undo the others) and one fsync of
        the journal for all their outcomes: an entry costs its statements, not a commit and a
        disk flush of its own."""
        journal = self._journal
        if journal is None:
            return 0
        done = 0
        async with self._lock:
            self.stats["runs"] += 1
            while journal.depth:
                finished, stop = await self._batch(self._next_batch(journal))
                done += finished
                if stop:
                    break
        if done and self._replica is not None:
            log.info("journal drained", entries=done)
        if done:
            self._drained()
        return done

    def _next_batch(self, journal: Journal) -> list[JournalEntry]:
        """The entries to apply next: those of agents a write is waiting for first (all of an
        agent's, in order, so its writes keep their order), then the oldest."""
        size = self._settings.journal.replay_batch
        batch: list[JournalEntry] = []
        taken: set[str] = set()
        for tenant, agent_id in self._backlog.waiting_agents():
            for entry in journal.pending_for(tenant, agent_id):
                if len(batch) >= size:
                    break
                batch.append(entry)
                taken.add(entry.op_id)
        if len(batch) < size:
            for entry in journal.pending():
                if entry.op_id not in taken:
                    batch.append(entry)
                    if len(batch) >= size:
                        break
        return batch

    async def _batch(self, batch: list[JournalEntry]) -> tuple[int, bool]:
        """Apply one batch in `journal.replay_lanes` lanes at once, each agent's entries in one
        lane and in their order; returns (entries that left the journal, whether to stop).

        A lane is a transaction on a connection of its own: the round trips of one entry wait
        on PostgreSQL and the network, so lanes side by side drain several times faster."""
        lanes = max(1, self._settings.journal.replay_lanes)
        if lanes == 1 or len(batch) < 2:
            return await self._lane(batch)
        groups: dict[int, list[JournalEntry]] = {}
        for entry in batch:
            groups.setdefault(hash((entry.tenant, entry.key)) % lanes, []).append(entry)
        outcomes = await asyncio.gather(*(self._lane(g) for g in groups.values()))
        return sum(n for n, _ in outcomes), any(stop for _, stop in outcomes)

    async def _lane(self, batch: list[JournalEntry]) -> tuple[int, bool]:
        """Apply entries in one transaction; returns (entries that left the journal, whether
        to stop for now)."""
        assert self._journal is not None
        rep = self._replica
        keys = {(entry.tenant, entry.key) for entry in batch}
        if rep is not None:
            rep.hold(keys)
        deadline = Deadline.after(
            max(self._settings.request.default_timeout_ms / 1000, _BATCH_TIMEOUT_S)
        )
        try:
            with self._span(batch):
                applied = await self._call.run(
                    deadline,
                    "replay",
                    lambda c: apply_batch(c, batch, self._settings.max_agents),
                    background=True,
                )
        except DatabaseUnavailable as exc:
            if rep is not None:
                if exc.sent:
                    # The batch may have committed as the connection died: its rows may reach
                    # the base while its entries are still pending. The agents stay held until
                    # a later batch settles those entries.
                    for entry in batch:
                        key = (entry.tenant, entry.key)
                        self._unsettled.setdefault(key, set()).add(entry.op_id)
                self._release_settled(keys)
            self.stats["failed"] += 1
            self.stats["last_error"] = str(exc)
            self._hooks.replayed("failed")
            return 0, True
        except BaseException:
            if rep is not None:
                self._release_settled(keys)
            raise
        results, records, broken = applied
        guard = self._guard
        if guard is not None:
            for entry, status, _reason, _record in results:
                if status is OpStatus.APPLIED:
                    guard.committed(
                        Committed.of(
                            entry.op_id, entry.kind, entry.tenant, entry.key, entry.payload
                        )
                    )
        # Drop what PostgreSQL now holds from the overlay and show its rows, in one step with no
        # await between, so no read sees a write twice or not at all.
        if rep is not None:
            for entry, *_ in results:
                unsettled = self._unsettled.get((entry.tenant, entry.key))
                if unsettled is not None:
                    unsettled.discard(entry.op_id)
            for entry, status, _reason, _record in results:
                event_id = None
                if entry.kind == "performance" and status is OpStatus.APPLIED:
                    event_id = entry.payload["payload"]["body"]["event_id"]
                rep.settled(entry.tenant, entry.key, op_id_of(entry.op_id), event_id)
            self._release_settled(keys)
            for rec in records:
                rep.upsert(rec)
        self._backlog.settled(keys)
        journal = self._journal
        outcomes = await asyncio.gather(
            *(journal.complete(entry.op_id, status, why) for entry, status, why, _ in results),
            return_exceptions=True,
        )
        for (entry, status, reason, _), recorded in zip(results, outcomes, strict=True):
            if isinstance(recorded, BaseException):
                # The outcome is in the ledger; the entry stays pending here and its next
                # replay finds it there, so it is still applied once.
                log.error(
                    "journal outcome not recorded", op_id=entry.op_id, error=describe(recorded)
                )
                continue
            self._failures.pop(entry.op_id, None)
            self.stats[status.value] += 1
            self._hooks.replayed(status.value)
            if status is OpStatus.APPLIED:
                self._hooks.committed("replay")
            else:
                log.warning(
                    "journaled write rejected on replay",
                    op_id=op_id_of(entry.op_id),
                    reason=reason,
                )
        finished = len(results)
        if broken is None:
            return finished, False
        bad_entry, error = broken
        return finished + await self._unexpected(bad_entry, error, deadline), True

    def _span(self, batch: list[JournalEntry]) -> contextlib.AbstractContextManager[object]:
        """The batch's span when tracing is on, linked to the requests its writes came from."""
        spans = self._hooks.spans
        if spans is None:
            return contextlib.nullcontext()
        return spans.replay([(op_id_of(e.op_id), e.trace) for e in batch if e.trace is not None])

    async def _unexpected(self, entry: JournalEntry, exc: BaseException, deadline: Deadline) -> int:
        """An entry that failed in a way that is neither an outage nor a rejection.

        Maybe passing, maybe this entry can never be applied: it is tried again on later rounds,
        and only after several failures rejected, durably and with the reason, so one poisoned
        entry cannot block the journal for ever. Returns 1 when it left the journal."""
        assert self._journal is not None
        op_id = op_id_of(entry.op_id)
        failures = self._failures.get(entry.op_id, 0) + 1
        self._failures[entry.op_id] = failures
        log.error("journal entry not applied", op_id=op_id, attempt=failures, error=describe(exc))
        if failures < REPLAY_ATTEMPTS:
            self.stats["failed"] += 1
            self.stats["last_error"] = describe(exc)
            return 0
        reason = f"internal-error: {describe(exc)}"
        meta = entry.payload
        wctx = replay_context(entry, self._settings.max_agents)
        try:
            await self._call.run(
                deadline,
                "replay_reject",
                lambda c: repository.record_rejection(
                    c,
                    wctx,
                    op_id=op_id,
                    kind=entry.kind,
                    req_hash=meta.get("hash", ""),
                    reason=reason,
                ),
                background=True,
            )
        except Exception as record_exc:  # the journal outcome still carries the reason
            log.error(
                "rejection not recorded in the ledger", op_id=op_id, error=describe(record_exc)
            )
        await self._journal.complete(entry.op_id, OpStatus.REJECTED, reason)
        self._failures.pop(entry.op_id, None)
        if self._replica is not None:
            self._replica.drop_pending(entry.tenant, entry.key, op_id)
        self._backlog.settled({(entry.tenant, entry.key)})
        self.stats["rejected"] += 1
        self._hooks.replayed("rejected")
        log.warning("journaled write rejected on replay", op_id=op_id, reason=reason)
        return 1

    def _release_settled(self, keys: set[AgentKey]) -> None:
        """End the replay's hold on these agents, but for those with entries of a batch whose
        fate is still unknown (the replica keeps what was settled meanwhile until then)."""
        rep = self._replica
        if rep is None:
            return
        free = set()
        for key in keys:
            if self._unsettled.get(key):
                continue
            self._unsettled.pop(key, None)
            free.add(key)
        rep.release(free)
