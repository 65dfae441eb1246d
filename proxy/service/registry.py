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
import contextlib
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from proxy.registry import errors, matching
from proxy.registry.agent import AgentRecord
from proxy.registry.models import AgentQuery
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.budget import RetryBudget
from proxy.resilience.bulkhead import Bulkhead
from proxy.resilience.deadline import Deadline
from proxy.resilience.errors import ErrorKind, classify, describe
from proxy.resilience.looplag import LoopLag
from proxy.service.context import (
    DEADLINE,
    OVERLOAD,
    PENDING,
    READ_MODE,
    UNREACHABLE,
    Answer,
    RequestContext,
    ServiceHooks,
    journal_id,
    op_id_of,
    utc_now,
)
from proxy.service.database_call import OPEN_STATES, DatabaseCall, DatabaseUnavailable
from proxy.settings import ReadMode, Settings, WriteFallback
from proxy.store import repository
from proxy.store.db import Database
from proxy.store.journal import Journal, JournalEntry, JournalError, JournalFull, OpStatus
from proxy.store.replica import PendingWrite, Replica

log = structlog.get_logger(__name__)
T = TypeVar("T")


# Unexpected failures of one journal entry before it is rejected rather than retried.
REPLAY_ATTEMPTS = 5


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
        # Writes waiting for their agent's journaled backlog to be applied, by (tenant, agent).
        # Journal ids of entries in a replay batch that failed after it was sent, by agent: the
        # agent stays held until they are settled.
        self._unsettled: dict[tuple[str, str], set[str]] = {}
        self._backlog_waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        # Read per request on the hot path; the settings of a running service do not change.
        self._replica_reads = settings.read_mode is ReadMode.REPLICA
        self._max_staleness_s = settings.replica.max_staleness_ms / 1000
        self._replay_lock = asyncio.Lock()
        self._replay_wake = asyncio.Event()
        self._replay_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._replay_failures: dict[str, int] = {}
        self.replays: dict[str, Any] = {
            "runs": 0,
            "applied": 0,
            "rejected": 0,
            "failed": 0,
            "last_error": None,
        }
        self.on_replayed: Callable[[], None] | None = None
        breaker.add_listener(self._on_transition)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.journal is not None:
            if self.replica is not None:
                for entry in self.journal.pending():
                    self._overlay(entry)
            self._replay_task = asyncio.create_task(self._replay_loop(), name="journal-replay")
            self._replay_wake.set()

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task

    def _on_transition(self, transition: Any) -> None:
        # Half-open included: the replay's first batch is then the trial that closes the
        # breaker, when every request is served from the replica or journaled behind a backlog.
        if transition.to_state in (
            BreakerState.CLOSED,
            BreakerState.DISABLED,
            BreakerState.HALF_OPEN,
        ):
            self._replay_wake.set()
        elif self._backlog_waiters:
            # Writes waiting for their agent's backlog look again: PostgreSQL is away once
            # more, so they are journaled behind it rather than waiting out their deadline.
            for waiters in self._backlog_waiters.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        if transition.to_state is BreakerState.OPEN and self.db.pool is not None:
            # Connections opened before the fault may be half-dead; start the recovery fresh.
            task = asyncio.create_task(self.db.pool.expire_connections())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def wake_replay(self) -> None:
        self._replay_wake.set()

    # -- replica helpers -------------------------------------------------------------------

    def _replica_serves(self, tenant: str) -> bool:
        rep = self.replica
        return rep is not None and rep.warm and rep.knows_tenant(tenant)

    def _replica_first(self, tenant: str, agent_id: str | None = None) -> str | None:
        """Why the replica should answer without asking PostgreSQL first, else None."""
        rep = self.replica
        if rep is None or not rep.warm or not rep.knows_tenant(tenant):
            return None
        if agent_id is not None:
            if rep.has_pending(tenant, agent_id):
                return PENDING
        elif rep.pending_count(tenant):
            return PENDING
        if self._replica_reads and rep.fresh_within(self._max_staleness_s):
            return READ_MODE
        return None

    def _replica_during_outage(self, ctx: RequestContext, operation: str) -> Replica | None:
        """The replica, when the breaker would refuse the database call anyway.

        The same answer as the database path's refusal caught and turned into a fallback (the
        same metrics, the same problem when the replica cannot answer), without raising and
        catching an exception per read: the outage path then costs what a healthy replica read
        costs."""
        if not self._database.breaker_refuses():
            return None
        self.hooks.db_call(operation, ErrorKind.REJECTED.value, 0.0)
        return self._replica_for(ctx, None)

    def _replica_for(self, ctx: RequestContext, exc: DatabaseUnavailable | None) -> Replica:
        rep = self.replica
        if rep is None or not self._replica_serves(ctx.tenant):
            raise self._database.no_answer(exc, "the local replica has no copy of this tenant")
        return rep

    @staticmethod
    def _replica_headers(rep: Replica, reason: str) -> dict[str, str]:
        age = rep.age()
        return {
            "Age": str(math.ceil(age)) if age is not None else "0",
            "X-Registry-Fallback": reason,
        }

    # -- reads -----------------------------------------------------------------------------

    async def get_agent(self, ctx: RequestContext, agent_id: str) -> Answer:
        answer = self.get_agent_at_once(ctx, agent_id)
        if answer is not None:
            return answer
        return await self.get_agent_from_database(ctx, agent_id)

    def get_agent_at_once(self, ctx: RequestContext, agent_id: str) -> Answer | None:
        """The answer when it needs no waiting: the replica answers (fresh enough in replica
        mode, pending writes of this agent, or the breaker refusing PostgreSQL anyway), or the
        problem it raises. None when PostgreSQL must be asked.

        `get_agent` is this, then `get_agent_from_database`; the front door calls the two
        itself so that a replica read is not a coroutine."""
        reason = self._replica_first(ctx.tenant, agent_id)
        if reason is not None:
            rep = self.replica
            assert rep is not None
        else:
            rep = self._replica_during_outage(ctx, "get_agent")
            if rep is None:
                return None
            reason = UNREACHABLE
        return self._agent_from_replica(rep, ctx, agent_id, None, reason)

    async def get_agent_from_database(self, ctx: RequestContext, agent_id: str) -> Answer:
        """The rest of `get_agent`, once `get_agent_at_once` gave None."""
        try:
            rec = await self._database.for_request(
                ctx, "get_agent", lambda c: repository.fetch_agent(c, ctx.tenant, agent_id)
            )
        except DatabaseUnavailable as exc:
            rep = self._replica_for(ctx, exc)
            return self._agent_from_replica(rep, ctx, agent_id, exc, exc.reason)
        if rec is None:
            raise errors.NotFound(f"agent {agent_id!r} is not registered")
        return Answer(200, rec.public_json(utc_now()), "database", {"ETag": f'"{rec.revision}"'})

    def _agent_from_replica(
        self,
        rep: Replica,
        ctx: RequestContext,
        agent_id: str,
        exc: DatabaseUnavailable | None,
        reason: str,
    ) -> Answer:
        rec = rep.get(ctx.tenant, agent_id)
        if rec is None:
            if rep.partial:
                raise self._database.no_answer(exc, "the local replica is partial")
            raise errors.NotFound(f"agent {agent_id!r} is not registered")
        self.hooks.replica_hit("get")
        headers = self._replica_headers(rep, reason)
        headers["ETag"] = f'"{rec.revision}"'
        return Answer(200, rec.public_json(utc_now()), "replica", headers)

    async def query(self, ctx: RequestContext, q: AgentQuery) -> Answer:
        reason = self._replica_first(ctx.tenant)
        if reason is not None:
            assert self.replica is not None
            return self._query_from_replica(self.replica, ctx, q, reason)
        rep = self._replica_during_outage(ctx, "query")
        if rep is not None:
            return self._query_from_replica(rep, ctx, q, UNREACHABLE)
        try:
            rows = await self._database.for_request(
                ctx, "query", lambda c: repository.query_agents(c, ctx.tenant, q)
            )
        except DatabaseUnavailable as exc:
            return self._query_from_replica(self._replica_for(ctx, exc), ctx, q, exc.reason)
        return Answer(200, {"results": matching.rank(rows, q, utc_now())}, "database")

    def _query_from_replica(
        self, rep: Replica, ctx: RequestContext, q: AgentQuery, reason: str
    ) -> Answer:
        self.hooks.replica_hit("query")
        rows = rep.query(ctx.tenant, q)
        headers = self._replica_headers(rep, reason)
        if rep.partial:
            headers["X-Registry-Partial"] = "true"
        return Answer(200, {"results": matching.rank(rows, q, utc_now())}, "replica", headers)

    async def stats(self, ctx: RequestContext) -> Answer:
        reason = self._replica_first(ctx.tenant)
        if reason is not None:
            assert self.replica is not None
            return self._stats_from_replica(self.replica, ctx, reason)
        rep = self._replica_during_outage(ctx, "stats")
        if rep is not None:
            return self._stats_from_replica(rep, ctx, UNREACHABLE)
        try:
            body = await self._database.for_request(
                ctx, "stats", lambda c: repository.fetch_stats(c, ctx.tenant)
            )
        except DatabaseUnavailable as exc:
            return self._stats_from_replica(self._replica_for(ctx, exc), ctx, exc.reason)
        return Answer(200, body, "database")

    def _stats_from_replica(self, rep: Replica, ctx: RequestContext, reason: str) -> Answer:
        self.hooks.replica_hit("stats")
        return Answer(
            200,
            rep.tenant_stats(ctx.tenant, utc_now()),
            "replica",
            self._replica_headers(rep, reason),
        )

    async def operation(self, ctx: RequestContext, op_id: str) -> Answer:
        if self.journal is not None:
            jid = journal_id(ctx.tenant, op_id)
            entry = self.journal.get(jid)
            if entry is not None:
                body: dict[str, Any] = {"op_id": op_id, "status": "pending", "kind": entry.kind}
                return Answer(200, body, "journal")
            done = self.journal.outcome(jid)
            if done is not None:
                body = {"op_id": op_id, "status": done.status.value, "reason": done.reason}
                return Answer(200, body, "journal")
        try:
            row = await self._database.for_request(
                ctx, "operation", lambda c: repository.fetch_operation(c, ctx.tenant, op_id)
            )
        except DatabaseUnavailable as exc:
            raise self._database.no_answer(
                exc, "this operation is not in the local journal"
            ) from exc
        if row is None:
            raise errors.NotFound(f"no operation {op_id!r}")
        body = {
            "op_id": op_id,
            "status": row["status"],
            "kind": row["kind"],
            "reason": row["reason"],
        }
        return Answer(200, body, "database")

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
            if not await self._await_backlog(ctx.tenant, target, ctx.deadline):
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

    async def _await_backlog(self, tenant: str, agent_id: str, deadline: Deadline) -> bool:
        """Wait until the replay has applied every journaled write of the agent (the replay
        takes such agents first), or the breaker opens again; False when the wait runs out.

        The wait leaves the write the breaker's slow-call time of its deadline for its own
        call: a call started with a few milliseconds left would time out against a healthy
        PostgreSQL and count as its failure."""
        key = (tenant, agent_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._backlog_waiters.setdefault(key, [])
        waiters.append(waiter)
        self._replay_wake.set()
        wait = deadline.remaining() - self.settings.breaker.slow_call_ms / 1000
        try:
            async with asyncio.timeout(max(0.0, wait)):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._backlog_waiters.get(key) is waiters:
                del self._backlog_waiters[key]
        return True

    def _release_settled(self, keys: set[tuple[str, str]]) -> None:
        """End the replay's hold on these agents, but for those with entries of a batch whose
        fate is still unknown."""
        rep = self.replica
        if rep is None:
            return
        free = set()
        for key in keys:
            if self._unsettled.get(key):
                continue
            self._unsettled.pop(key, None)
            free.add(key)
        rep.release(free)

    def _backlog_settled(self, keys: set[tuple[str, str]]) -> None:
        rep = self.replica
        for key in keys:
            waiters = self._backlog_waiters.get(key)
            if waiters and (rep is None or not rep.has_pending(*key)):
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

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
        self._overlay(entry)
        self.hooks.journal_append()
        if self.breaker.state not in OPEN_STATES:
            self._replay_wake.set()
        if entry.payload.get("uncertain"):
            # Reads show it once the replay has settled it (PostgreSQL may hold it already).
            headers["X-Registry-Pending"] = "uncertain"
        return Answer(202, {"op_id": op_id, "status": "pending"}, "journal", headers)

    def _overlay(self, entry: JournalEntry) -> None:
        if self.replica is None or entry.kind not in repository.REGISTRY_KINDS:
            return
        op_id = op_id_of(entry.op_id)
        self.replica.add_pending(
            entry.tenant,
            entry.key,
            PendingWrite(
                op_id=op_id,
                kind=entry.kind,
                payload=entry.payload["payload"],
                received_at=datetime.fromisoformat(entry.payload["received_at"]),
                uncertain=bool(entry.payload.get("uncertain")),
            ),
        )

    # -- replay ----------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._replay_wake.wait()
            self._replay_wake.clear()
            if self.journal is None or not self.journal.depth:
                continue
            if self.breaker.state in OPEN_STATES or self.db.pool is None:
                continue
            try:
                await self.replay()
            except Exception as exc:  # keep the loop alive; the next wake tries again
                log.error("journal replay failed", error=describe(exc))

    async def replay(self) -> int:
        """Apply the journal in order; returns how many entries left it. Single-flight.

        Entries go in batches of `journal.replay_batch`, each batch one PostgreSQL transaction
        (a savepoint per entry, so a rejected entry does not undo the others) and one fsync of
        the journal for all their outcomes: an entry costs its statements, not a commit and a
        disk flush of its own."""
        journal = self.journal
        if journal is None:
            return 0
        done = 0
        async with self._replay_lock:
            self.replays["runs"] += 1
            while journal.depth:
                finished, stop = await self._replay_batch(self._next_batch(journal))
                done += finished
                if stop:
                    break
        if done and self.replica is not None:
            log.info("journal drained", entries=done)
        if done and self.on_replayed is not None:
            self.on_replayed()
        return done

    def _next_batch(self, journal: Journal) -> list[JournalEntry]:
        """The entries to apply next: those of agents a write is waiting for first (all of an
        agent's, in order, so its writes keep their order), then the oldest."""
        size = self.settings.journal.replay_batch
        batch: list[JournalEntry] = []
        taken: set[str] = set()
        for tenant, agent_id in list(self._backlog_waiters):
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

    async def _replay_batch(self, batch: list[JournalEntry]) -> tuple[int, bool]:
        """Apply one batch in `journal.replay_lanes` lanes at once, each agent's entries in one
        lane and in their order; returns (entries that left the journal, whether to stop).

        A lane is a transaction on a connection of its own: the round trips of one entry wait
        on PostgreSQL and the network, so lanes side by side drain several times faster."""
        lanes = max(1, self.settings.journal.replay_lanes)
        if lanes == 1 or len(batch) < 2:
            return await self._replay_lane(batch)
        groups: dict[int, list[JournalEntry]] = {}
        for entry in batch:
            groups.setdefault(hash((entry.tenant, entry.key)) % lanes, []).append(entry)
        outcomes = await asyncio.gather(*(self._replay_lane(g) for g in groups.values()))
        return sum(n for n, _ in outcomes), any(stop for _, stop in outcomes)

    async def _replay_lane(self, batch: list[JournalEntry]) -> tuple[int, bool]:
        """Apply entries in one transaction; returns (entries that left the journal, whether
        to stop for now)."""
        assert self.journal is not None
        rep = self.replica
        keys = {(entry.tenant, entry.key) for entry in batch}
        if rep is not None:
            rep.hold(keys)
        deadline = Deadline.after(
            max(self.settings.request.default_timeout_ms / 1000, _REPLAY_BATCH_TIMEOUT_S)
        )
        now = utc_now()
        try:
            applied = await self._database.run(
                deadline,
                "replay",
                lambda c: _apply_batch(c, batch, self.settings.max_agents, now),
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
            self.replays["failed"] += 1
            self.replays["last_error"] = str(exc)
            self.hooks.replayed("failed")
            return 0, True
        except BaseException:
            if rep is not None:
                self._release_settled(keys)
            raise
        results, records, broken = applied
        # Drop what PostgreSQL now holds from the overlay and show its rows, in one step with no
        # await between, so no read sees a write twice or not at all.
        if rep is not None:
            for entry, status, _reason, _record in results:
                rep.drop_pending(entry.tenant, entry.key, op_id_of(entry.op_id))
                if entry.kind == "performance" and status is OpStatus.APPLIED:
                    event_id = entry.payload["payload"]["body"]["event_id"]
                    rep.event_counted(entry.tenant, entry.key, event_id)
                unsettled = self._unsettled.get((entry.tenant, entry.key))
                if unsettled is not None:
                    unsettled.discard(entry.op_id)
            self._release_settled(keys)
            for rec in records:
                rep.upsert(rec)
        self._backlog_settled(keys)
        journal = self.journal
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
            self._replay_failures.pop(entry.op_id, None)
            self.replays[status.value] += 1
            self.hooks.replayed(status.value)
            if status is OpStatus.APPLIED:
                self.hooks.committed("replay")
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
        return finished + await self._replay_unexpected(bad_entry, error, deadline), True

    async def _replay_unexpected(
        self, entry: JournalEntry, exc: BaseException, deadline: Deadline
    ) -> int:
        """An entry that failed in a way that is neither an outage nor a rejection.

        Maybe passing, maybe this entry can never be applied: it is tried again on later rounds,
        and only after several failures rejected, durably and with the reason, so one poisoned
        entry cannot block the journal for ever. Returns 1 when it left the journal."""
        assert self.journal is not None
        op_id = op_id_of(entry.op_id)
        failures = self._replay_failures.get(entry.op_id, 0) + 1
        self._replay_failures[entry.op_id] = failures
        log.error("journal entry not applied", op_id=op_id, attempt=failures, error=describe(exc))
        if failures < REPLAY_ATTEMPTS:
            self.replays["failed"] += 1
            self.replays["last_error"] = describe(exc)
            return 0
        reason = f"internal-error: {describe(exc)}"
        meta = entry.payload
        wctx = _replay_context(entry, self.settings.max_agents)
        try:
            await self._database.run(
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
        await self.journal.complete(entry.op_id, OpStatus.REJECTED, reason)
        self._replay_failures.pop(entry.op_id, None)
        if self.replica is not None:
            self.replica.drop_pending(entry.tenant, entry.key, op_id)
        self._backlog_settled({(entry.tenant, entry.key)})
        self.replays["rejected"] += 1
        self.hooks.replayed("rejected")
        log.warning("journaled write rejected on replay", op_id=op_id, reason=reason)
        return 1

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
            "backlog_waiters": sum(len(w) for w in self._backlog_waiters.values()),
        }

    def set_breaker(self, state: str, reason: str | None) -> None:
        cause = reason or f"set to {state} by an admin"
        if state == "forced_open":
            self.breaker.force_open(cause)
        elif state == "disabled":
            self.breaker.disable(cause)
        else:
            self.breaker.automatic(cause)


# A batch holds at most `journal.replay_batch` entries of a few statements each; it gets at
# least this long, whatever the request deadline.
_REPLAY_BATCH_TIMEOUT_S = 10.0

_Applied = tuple[JournalEntry, OpStatus, str | None, AgentRecord | None]


def _replay_context(entry: JournalEntry, max_agents: int) -> repository.WriteContext:
    meta = entry.payload
    return repository.WriteContext(
        entry.tenant,
        meta.get("actor", "journal"),
        meta.get("request_id"),
        max_agents,
        at=datetime.fromisoformat(meta["received_at"]) if "received_at" in meta else None,
    )


async def _apply_batch(
    conn: asyncpg.Connection, batch: list[JournalEntry], max_agents: int, now: datetime
) -> tuple[list[_Applied], list[AgentRecord], tuple[JournalEntry, BaseException] | None]:
    """Apply entries in order in one transaction, each in a savepoint of its own.

    Returns the outcome of each entry applied or rejected, the rows of every agent the batch
    touched as they stand at its commit (what the replica shows next), and the entry that broke
    the batch with its error, if one did: the entries before it still commit, the rest wait."""
    results: list[_Applied] = []
    broken: tuple[JournalEntry, BaseException] | None = None
    async with conn.transaction():
        for entry in batch:
            meta = entry.payload
            try:
                outcome = await repository.execute_write(
                    conn,
                    _replay_context(entry, max_agents),
                    kind=entry.kind,
                    payload=meta["payload"],
                    render=lambda rec: rec.to_public(now),
                    op_id=op_id_of(entry.op_id),
                    req_hash=meta.get("hash", ""),
                )
            except errors.RegistryError as exc:
                results.append((entry, OpStatus.REJECTED, f"{exc.slug}: {exc.detail}", None))
                continue
            except Exception as exc:
                # An outage or a lost race undoes the batch (it is tried again whole); only a
                # failure of this entry itself stops the batch here, keeping those before it.
                if classify(exc) is not ErrorKind.PERMANENT:
                    raise
                broken = (entry, exc)
                break
            if outcome.applied:
                results.append((entry, OpStatus.APPLIED, None, outcome.record))
            else:
                results.append((entry, OpStatus.REJECTED, outcome.reason, None))
        agents: dict[str, list[str]] = {}
        for entry, *_ in results:
            if entry.kind in repository.REGISTRY_KINDS:
                agents.setdefault(entry.tenant, []).append(entry.key)
        records = [
            rec
            for tenant, ids in agents.items()
            for rec in await repository.fetch_rows(conn, tenant, ids)
        ]
    return results, records, broken
