"""The resilient registry: every operation to PostgreSQL through deadline, breaker and retry;
reads fall back to the replica, writes to the journal; the journal drains when the breaker closes.

The rules that keep the promises of the README's table of answers:

- a write answered 200/201 was committed; a write answered 202 is fsynced in the journal and is
  applied exactly once later (every write carries an op id, recorded in the ledger in the same
  transaction as its effect), or rejected with a reason readable at /v1/operations/{op_id};
- a write is journaled only when PostgreSQL is unreachable or failing by the breaker's rules.
  A busy sidecar is not an outage: a request waits its turn for a connection (the bulkhead) as
  long as its deadline allows, and past that is answered `503 overloaded` with nothing journaled;
- while an agent has journaled writes pending and PostgreSQL is away, new writes for it are
  journaled too, so they keep their order behind the earlier ones; once PostgreSQL answers again
  a new write waits for the agent's backlog to be applied, then goes straight to PostgreSQL, so
  the journal only shrinks after an outage; its reads come from the replica (read-your-writes);
- a deadline the caller chose (`X-Request-Timeout`) says nothing about PostgreSQL: running out
  of it never counts against the breaker, on any route, and is answered 504 (or, for a read, from
  the replica, saying so);
- a failure that is not the database's (bad data, a conflict) is answered as such and never
  trips the breaker, nor falls back.

Every read from the replica says why it did not come from PostgreSQL (`X-Registry-Fallback`):
`read-mode`, `pending-writes`, `unreachable`, `overload` or `deadline`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from proxy.registry import errors
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.budget import RetryBudget
from proxy.resilience.bulkhead import Bulkhead
from proxy.resilience.looplag import LoopLag
from proxy.service.backlog import Backlog
from proxy.service.context import (
    DEADLINE,
    OVERLOAD,
    Answer,
    RequestContext,
    ServiceHooks,
    journal_id,
    utc_now,
)
from proxy.service.database_call import OPEN_STATES, DatabaseCall, DatabaseUnavailable
from proxy.service.reads import Reads
from proxy.service.replay import Replay
from proxy.settings import Settings, WriteFallback
from proxy.store import repository
from proxy.store.db import Database
from proxy.store.journal import Journal, JournalError, JournalFull
from proxy.store.replica import Replica

log = structlog.get_logger(__name__)
T = TypeVar("T")


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
        self.hooks = hooks or ServiceHooks()
        self.bulkhead = bulkhead
        self.lag = lag
        self._database = DatabaseCall(
            settings=settings,
            database=database,
            breaker=breaker,
            budget=budget,
            hooks=self.hooks,
            bulkhead=bulkhead,
            lag=lag,
        )
        # Requests with an Idempotency-Key in progress, by journal id: one at a time per key.
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._backlog = Backlog(replica)
        self._replay = Replay(
            settings=settings,
            database=database,
            breaker=breaker,
            replica=replica,
            journal=journal,
            hooks=self.hooks,
            call=self._database,
            backlog=self._backlog,
            drained=self._drained,
        )
        self.replays: dict[str, Any] = self._replay.stats
        self.on_replayed: Callable[[], None] | None = None
        breaker.add_listener(self._on_transition)
        reads = Reads(
            settings=settings,
            replica=replica,
            journal=journal,
            hooks=self.hooks,
            call=self._database,
        )
        # The reads' own bound methods: a get-by-id the replica serves is on the hot path, and a
        # call through the service costs no frame of its own.
        self.get_agent = reads.get_agent
        self.get_agent_at_once = reads.get_agent_at_once
        self.get_agent_from_database = reads.get_agent_from_database
        self.query = reads.query
        self.stats = reads.stats
        self.operation = reads.operation

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.journal is not None:
            if self.replica is not None:
                for entry in self.journal.pending():
                    self._backlog.show(entry)
            self._replay.start()
            self._backlog.wake()

    async def stop(self) -> None:
        await self._replay.stop()

    async def replay(self) -> int:
        return await self._replay.run()

    def _drained(self) -> None:
        if self.on_replayed is not None:
            self.on_replayed()

    def _on_transition(self, transition: Any) -> None:
        # Half-open included: the replay's first batch is then the trial that closes the
        # breaker, when every request is served from the replica or journaled behind a backlog.
        if transition.to_state in (
            BreakerState.CLOSED,
            BreakerState.DISABLED,
            BreakerState.HALF_OPEN,
        ):
            self._backlog.wake()
        else:
            # Writes waiting for their agent's backlog look again: PostgreSQL is away once
            # more, so they are journaled behind it rather than waiting out their deadline.
            self._backlog.look_again()
        if transition.to_state is BreakerState.OPEN and self.db.pool is not None:
            # Connections opened before the fault may be half-dead; start the recovery fresh.
            task = asyncio.create_task(self.db.pool.expire_connections())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def wake_replay(self) -> None:
        self._backlog.wake()

    # -- writes ----------------------------------------------------------------------------

    async def write(
        self,
        ctx: RequestContext,
        kind: str,
        payload: dict[str, Any],
        *,
        req_hash: str,
        idempotency_key: str | None = None,
        always_journal: bool = False,
    ) -> Answer:
        if idempotency_key is None:
            return await self._write(
                ctx, kind, payload, uuid.uuid4().hex, req_hash, None, always_journal
            )
        # One request per key at a time, on every path: a second one sees the first's outcome.
        jid = journal_id(ctx.tenant, idempotency_key)
        lock = self._key_locks.get(jid)
        if lock is None:
            lock = self._key_locks[jid] = asyncio.Lock()
        try:
            async with lock:
                return await self._write(
                    ctx, kind, payload, idempotency_key, req_hash, idempotency_key, always_journal
                )
        finally:
            if not lock.locked() and self._key_locks.get(jid) is lock:
                del self._key_locks[jid]

    async def _write(
        self,
        ctx: RequestContext,
        kind: str,
        payload: dict[str, Any],
        op_id: str,
        req_hash: str,
        idempotency_key: str | None,
        always_journal: bool,
    ) -> Answer:
        target = repository.target_of(kind, payload)
        journal = self.journal
        if (
            idempotency_key is not None
            and journal is not None
            and journal.state(journal_id(ctx.tenant, op_id)) is not None
        ):
            # The journal holds this key (pending, or finished recently): its first outcome
            # stands, whatever the state of PostgreSQL now.
            return await self._journal_write(
                ctx, kind, payload, op_id, target, req_hash, None, True
            )
        rep = self.replica
        while rep is not None and rep.has_pending(ctx.tenant, target):
            if self.breaker.state in OPEN_STATES:
                # PostgreSQL is away: behind the agent's earlier writes, in order.
                return await self._journal_write(
                    ctx, kind, payload, op_id, target, req_hash, None, always_journal
                )
            # PostgreSQL answers again: this write waits for the agent's backlog, then goes
            # straight there. Journaling it would grow the journal while it should drain.
            # The wait leaves the write the breaker's slow-call time of its deadline for its own
            # call: a call started with a few milliseconds left would time out against a healthy
            # PostgreSQL and count as its failure.
            wait = ctx.deadline.remaining() - self.settings.breaker.slow_call_ms / 1000
            if not await self._backlog.wait_for(ctx.tenant, target, wait):
                self.hooks.shed("backlog")
                if ctx.client_deadline:
                    raise errors.DeadlineExceeded(
                        "X-Request-Timeout passed while earlier journaled writes of this agent "
                        "were being applied; nothing was done, the write can be sent again"
                    )
                raise errors.Overloaded(
                    "earlier journaled writes of this agent are still being applied to "
                    "PostgreSQL; nothing was done, send it again after Retry-After",
                    retry_after=1.0,
                )
        wctx = repository.WriteContext(
            ctx.tenant, ctx.actor, ctx.request_id, self.settings.max_agents
        )
        now = utc_now()
        try:
            outcome = await self._database.run(
                ctx.deadline,
                kind,
                lambda c: repository.execute_write(
                    c,
                    wctx,
                    kind=kind,
                    payload=payload,
                    render=lambda rec: rec.to_public(now),
                    op_id=op_id,
                    req_hash=req_hash,
                ),
                caller_deadline=ctx.client_deadline,
            )
        except DatabaseUnavailable as exc:
            if exc.reason == DEADLINE:
                # The caller gave up first; the write may or may not commit. Journaling it
                # would turn the caller's impatience into a 202 it did not ask for.
                raise self._deadline_passed(op_id, idempotency_key) from exc
            if exc.reason == OVERLOAD:
                raise errors.Overloaded(
                    f"{exc}; nothing was done or journaled, send it again after Retry-After",
                    retry_after=exc.retry_after,
                ) from exc
            return await self._journal_write(
                ctx,
                kind,
                payload,
                op_id,
                target,
                req_hash,
                exc,
                always_journal,
                uncertain=exc.sent,
            )
        if kind == "performance" and outcome.status in (200, 201) and rep is not None:
            rep.event_counted(ctx.tenant, target, payload["body"]["event_id"])
        return self._written(outcome)

    @staticmethod
    def _deadline_passed(op_id: str, idempotency_key: str | None) -> errors.DeadlineExceeded:
        """A write whose caller's deadline passed while PostgreSQL had it: its fate is unknown
        here. Sending it again under its op id as the Idempotency-Key settles it: applied once,
        whichever way the first attempt went, and the answer says how."""
        if idempotency_key is not None:
            how = "send it again with the same Idempotency-Key to learn its outcome"
        else:
            how = (
                f"send it again with the header 'Idempotency-Key: {op_id}' to apply it exactly "
                "once and learn its outcome"
            )
        return errors.DeadlineExceeded(
            f"X-Request-Timeout passed before PostgreSQL answered; the write may still commit. "
            f"Its op id is {op_id}: {how}",
            extensions={"op_id": op_id},
        )

    def _written(self, outcome: repository.WriteOutcome) -> Answer:
        if outcome.record is not None and self.replica is not None:
            self.replica.upsert(outcome.record)
        if outcome.applied and not outcome.from_ledger:
            self.hooks.committed("direct")
        headers: dict[str, str] = {}
        if outcome.problem is not None:
            headers.update(outcome.problem.headers)
        elif outcome.record is not None and outcome.record.deleted_at is None:
            headers["ETag"] = f'"{outcome.record.revision}"'
        if outcome.from_ledger:
            headers["Idempotent-Replayed"] = "true"
        return Answer(outcome.status, outcome.body, "database", headers)

    async def _journal_write(
        self,
        ctx: RequestContext,
        kind: str,
        payload: dict[str, Any],
        op_id: str,
        target: str,
        req_hash: str,
        exc: DatabaseUnavailable | None,
        always_journal: bool = False,
        *,
        uncertain: bool = False,
    ) -> Answer:
        journal = self.journal
        rejecting = self.settings.write_fallback is WriteFallback.REJECT and not always_journal
        if journal is None or rejecting:
            raise self._database.unavailable(exc, "write_fallback is 'reject'")
        jid = journal_id(ctx.tenant, op_id)
        received = utc_now()
        try:
            entry = await journal.append(
                op_id=jid,
                kind=kind,
                tenant=ctx.tenant,
                key=target,
                payload={
                    "payload": payload,
                    "hash": req_hash,
                    "actor": ctx.actor,
                    "request_id": ctx.request_id,
                    "received_at": received.isoformat(),
                    **({"uncertain": True} if uncertain else {}),
                },
            )
        except JournalFull as jexc:
            log.error("journal append refused: disk full", error=str(jexc))
            why = (
                " while PostgreSQL is unavailable"
                if exc is not None
                else ": it must wait in the journal behind earlier writes to the same agent"
            )
            raise errors.JournalDiskFull(
                f"the local journal disk is full, so the write was not accepted{why}; retry later",
                retry_after=exc.retry_after if exc is not None else 5.0,
            ) from jexc
        except JournalError as jexc:
            log.error("journal append failed", error=str(jexc))
            raise self._database.unavailable(
                exc, "the local journal cannot take the write"
            ) from jexc
        # `append` hands back the entry already held for this op id (pending, being written, or
        # finished recently): the key's first request, which decides.
        if entry.payload.get("hash") != req_hash:
            raise errors.IdempotencyMismatch(
                "this Idempotency-Key was used before with a different request"
            )
        headers = {"Location": f"/v1/operations/{op_id}"}
        mine = (
            entry.payload.get("received_at") == received.isoformat()
            and entry.payload.get("request_id") == ctx.request_id
        )
        if not mine:
            headers["Idempotent-Replayed"] = "true"
            done = journal.outcome(jid)
            if done is not None:
                body = {"op_id": op_id, "status": done.status.value, "reason": done.reason}
                return Answer(202, body, "journal", headers)
            return Answer(202, {"op_id": op_id, "status": "pending"}, "journal", headers)
        self._backlog.show(entry)
        self.hooks.journal_append()
        if self.breaker.state not in OPEN_STATES:
            self._backlog.wake()
        if entry.payload.get("uncertain"):
            # Reads show it once the replay has settled it (PostgreSQL may hold it already).
            headers["X-Registry-Pending"] = "uncertain"
        return Answer(202, {"op_id": op_id, "status": "pending"}, "journal", headers)

    # -- admin -----------------------------------------------------------------------------

    async def audit(self, ctx: RequestContext, **filters: Any) -> Answer:
        try:
            rows = await self._database.for_request(
                ctx, "audit", lambda c: repository.fetch_audit(c, ctx.tenant, **filters)
            )
        except DatabaseUnavailable as exc:
            raise self._database.no_answer(exc, "the audit log lives there") from exc
        next_after = rows[-1]["id"] if len(rows) == filters["limit"] else None
        return Answer(200, {"entries": rows, "next_after_id": next_after}, "database")

    async def record_admin(self, ctx: RequestContext, action: str, target: str) -> Answer:
        """An admin action's audit row: committed now, or journaled whatever write_fallback
        says (it guards the registry's writes, not the record of what an operator did)."""
        payload = {"action": action, "target": target}
        return await self.write(
            ctx,
            "admin",
            payload,
            req_hash=repository.request_hash("admin", target, payload),
            always_journal=True,
        )

    def overload_stats(self) -> dict[str, Any]:
        """The queue for database connections, the loop's lag, and what was refused."""
        return {
            "bulkhead": self.bulkhead.snapshot() if self.bulkhead is not None else None,
            "loop_lag": self.lag.snapshot() if self.lag is not None else None,
            "backlog_waiters": self._backlog.waiting(),
        }

    def set_breaker(self, state: str, reason: str | None) -> None:
        cause = reason or f"set to {state} by an admin"
        if state == "forced_open":
            self.breaker.force_open(cause)
        elif state == "disabled":
            self.breaker.disable(cause)
        else:
            self.breaker.automatic(cause)
