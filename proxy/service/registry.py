"""The resilient registry: every operation to PostgreSQL through deadline, breaker and retry;
reads fall back to the replica, writes to the journal; the journal drains when the breaker closes.

The rules that keep the guarantees of DESIGN.md section 1:

- a write answered 200/201 was committed; a write answered 202 is fsynced in the journal and is
  applied exactly once later (every write carries an op id, recorded in the ledger in the same
  transaction as its effect), or rejected with a reason readable at /v1/operations/{op_id};
- while an agent has journaled writes pending, new writes for it are journaled too, so they keep
  their order behind the earlier ones, and its reads come from the replica (read-your-writes);
- a failure that is not the database's (bad data, a conflict) is answered as such and never
  trips the breaker, nor falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from proxy.registry import errors, matching
from proxy.registry.agent import AgentRecord
from proxy.registry.models import AgentQuery
from proxy.resilience import retry
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.budget import RetryBudget
from proxy.resilience.deadline import Deadline
from proxy.resilience.deadline import DeadlineExceeded as DeadlineExceededError
from proxy.resilience.errors import ErrorKind, Rejected, classify, describe
from proxy.settings import ReadMode, Settings, WriteFallback
from proxy.store import repository
from proxy.store.db import Database
from proxy.store.journal import Journal, JournalEntry, JournalError, JournalFull, OpStatus
from proxy.store.replica import PendingWrite, Replica

log = structlog.get_logger(__name__)
T = TypeVar("T")

_UNAVAILABLE_KINDS = (ErrorKind.INFRASTRUCTURE, ErrorKind.TRANSIENT, ErrorKind.REJECTED)
_OPEN_STATES = (BreakerState.OPEN, BreakerState.FORCED_OPEN)
# Unexpected failures of one journal entry before it is rejected rather than retried.
REPLAY_ATTEMPTS = 5


@dataclass(slots=True)  # not frozen: a frozen init costs four times as much, per request
class RequestContext:
    tenant: str
    actor: str
    request_id: str
    deadline: Deadline
    client_deadline: bool = False
    """True when the caller shortened the deadline (X-Request-Timeout): running out of it then
    says nothing about PostgreSQL, so it is not counted against it."""


@dataclass(slots=True)
class Answer:
    status: int
    body: Any  # a JSON-able value, or bytes already encoded as JSON
    source: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ServiceHooks:
    """Instrumentation points; the app wires metrics and logs here, tests may leave them."""

    db_call: Callable[[str, str, float], None] = lambda op, outcome, seconds: None
    replica_hit: Callable[[str], None] = lambda kind: None
    journal_append: Callable[[], None] = lambda: None
    committed: Callable[[str], None] = lambda path: None
    replayed: Callable[[str], None] = lambda outcome: None
    retry: retry.RetryHooks | None = None


class DatabaseUnavailable(Exception):
    def __init__(self, message: str, retry_after: float, *, caller_deadline: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.caller_deadline = caller_deadline


def _caller_bound(exc: BaseException) -> ErrorKind:
    if isinstance(exc, DeadlineExceededError):
        return ErrorKind.REJECTED
    return classify(exc)


def _now() -> datetime:
    return datetime.now(UTC)


def journal_id(tenant: str, op_id: str) -> str:
    """Journal ids are global; op ids (Idempotency-Keys) are per tenant. '/' is not in either."""
    return f"{tenant}/{op_id}"


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
    ) -> None:
        self.settings = settings
        self.db = database
        self.breaker = breaker
        self.budget = budget
        self.replica = replica
        self.journal = journal
        self.hooks = hooks or ServiceHooks()
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
        if transition.to_state in (BreakerState.CLOSED, BreakerState.DISABLED):
            self._replay_wake.set()
        if transition.to_state is BreakerState.OPEN and self.db.pool is not None:
            # Connections opened before the fault may be half-dead; start the recovery fresh.
            task = asyncio.create_task(self.db.pool.expire_connections())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def wake_replay(self) -> None:
        self._replay_wake.set()

    # -- the database path -----------------------------------------------------------------

    async def _db(
        self,
        deadline: Deadline,
        operation: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        caller_deadline: bool = False,
    ) -> T:
        if self._breaker_refuses():
            # Fail fast without building a call, a permit and an exception chain: during an
            # outage this is every write (reads the replica can serve never get here).
            breaker = self.breaker
            self.hooks.db_call(operation, ErrorKind.REJECTED.value, 0.0)
            raise DatabaseUnavailable(
                f"circuit breaker is {breaker.state.value}", max(breaker.retry_after(), 1.0)
            )

        async def attempt(timeout: float) -> T:
            async with self.db.connection(timeout) as conn:
                return await fn(conn)

        r = self.settings.retry
        started = self.breaker.clock.monotonic()
        try:
            result = await retry.call(
                attempt,
                breaker=self.breaker,
                budget=self.budget,
                deadline=deadline,
                attempts=r.attempts,
                base_s=r.base_ms / 1000,
                max_s=r.max_ms / 1000,
                hooks=self.hooks.retry,
                classify=_caller_bound if caller_deadline else classify,
            )
        except Exception as exc:
            kind = classify(exc)
            if caller_deadline and isinstance(exc, DeadlineExceededError):
                self.hooks.db_call(operation, "deadline", self.breaker.clock.monotonic() - started)
                raise DatabaseUnavailable(describe(exc), 1.0, caller_deadline=True) from exc
            self.hooks.db_call(operation, kind.value, self.breaker.clock.monotonic() - started)
            if isinstance(exc, errors.RegistryError):
                raise
            if kind in _UNAVAILABLE_KINDS:
                hint = exc.retry_after if isinstance(exc, Rejected) else 1.0
                raise DatabaseUnavailable(describe(exc), max(hint, 1.0)) from exc
            sqlstate = getattr(exc, "sqlstate", None) or ""
            if sqlstate[:2] in ("22", "23"):
                raise errors.Unprocessable(
                    "the database refused the values: " + describe(exc)
                ) from exc
            raise
        self.hooks.db_call(operation, "success", self.breaker.clock.monotonic() - started)
        return result

    async def _read_db(
        self, ctx: RequestContext, operation: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        return await self._db(ctx.deadline, operation, fn, caller_deadline=ctx.client_deadline)

    def _breaker_refuses(self) -> bool:
        """The breaker is open and no probe is due: a database call would be refused."""
        breaker = self.breaker
        state = breaker.state
        if state is BreakerState.FORCED_OPEN:
            return True
        return state is BreakerState.OPEN and breaker.retry_after() > 0

    # -- replica helpers -------------------------------------------------------------------

    def _replica_serves(self, tenant: str) -> bool:
        rep = self.replica
        return rep is not None and rep.warm and rep.knows_tenant(tenant)

    def _replica_first(self, tenant: str, agent_id: str | None = None) -> Replica | None:
        """The replica when it should answer without asking PostgreSQL first, else None."""
        rep = self.replica
        if rep is None or not rep.warm or not rep.knows_tenant(tenant):
            return None
        if agent_id is not None:
            if rep.has_pending(tenant, agent_id):
                return rep
        elif rep.pending_count():
            return rep
        if self._replica_reads and rep.fresh_within(self._max_staleness_s):
            return rep
        return None

    def _replica_during_outage(self, ctx: RequestContext, operation: str) -> Replica | None:
        """The replica, when the breaker would refuse the database call anyway.

        The same answer as the database path's refusal caught and turned into a fallback (the
        same metrics, the same problem when the replica cannot answer), without raising and
        catching an exception per read: the outage path then costs what a healthy replica read
        costs."""
        if not self._breaker_refuses():
            return None
        self.hooks.db_call(operation, ErrorKind.REJECTED.value, 0.0)
        return self._replica_for(ctx, None)

    def _replica_for(self, ctx: RequestContext, exc: DatabaseUnavailable | None) -> Replica:
        rep = self.replica
        if rep is None or not self._replica_serves(ctx.tenant):
            raise self._unavailable(exc, "the local replica has no copy of this tenant")
        return rep

    @staticmethod
    def _replica_headers(rep: Replica) -> dict[str, str]:
        age = rep.age()
        return {"Age": str(math.ceil(age)) if age is not None else "0"}

    def _unavailable(self, exc: DatabaseUnavailable | None, what: str) -> errors.Unavailable:
        retry_after = exc.retry_after if exc is not None else max(1.0, self.breaker.retry_after())
        return errors.Unavailable(f"PostgreSQL is unavailable and {what}", retry_after=retry_after)

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
        rep = self._replica_first(ctx.tenant, agent_id)
        if rep is None:
            rep = self._replica_during_outage(ctx, "get_agent")
            if rep is None:
                return None
        return self._agent_from_replica(rep, ctx, agent_id, None)

    async def get_agent_from_database(self, ctx: RequestContext, agent_id: str) -> Answer:
        """The rest of `get_agent`, once `get_agent_at_once` gave None."""
        try:
            rec = await self._read_db(
                ctx, "get_agent", lambda c: repository.fetch_agent(c, ctx.tenant, agent_id)
            )
        except DatabaseUnavailable as exc:
            return self._agent_from_replica(self._replica_for(ctx, exc), ctx, agent_id, exc)
        if rec is None:
            raise errors.NotFound(f"agent {agent_id!r} is not registered")
        return Answer(200, rec.public_json(_now()), "database", {"ETag": f'"{rec.revision}"'})

    def _agent_from_replica(
        self, rep: Replica, ctx: RequestContext, agent_id: str, exc: DatabaseUnavailable | None
    ) -> Answer:
        rec = rep.get(ctx.tenant, agent_id)
        if rec is None:
            if rep.partial:
                raise self._unavailable(exc, "the local replica is partial")
            raise errors.NotFound(f"agent {agent_id!r} is not registered")
        self.hooks.replica_hit("get")
        headers = self._replica_headers(rep)
        headers["ETag"] = f'"{rec.revision}"'
        return Answer(200, rec.public_json(_now()), "replica", headers)

    async def query(self, ctx: RequestContext, q: AgentQuery) -> Answer:
        rep = self._replica_first(ctx.tenant)
        if rep is None:
            rep = self._replica_during_outage(ctx, "query")
        if rep is not None:
            return self._query_from_replica(rep, ctx, q)
        try:
            rows = await self._read_db(
                ctx, "query", lambda c: repository.query_agents(c, ctx.tenant, q)
            )
        except DatabaseUnavailable as exc:
            return self._query_from_replica(self._replica_for(ctx, exc), ctx, q)
        return Answer(200, {"results": matching.rank(rows, q, _now())}, "database")

    def _query_from_replica(self, rep: Replica, ctx: RequestContext, q: AgentQuery) -> Answer:
        self.hooks.replica_hit("query")
        rows = rep.query(ctx.tenant, q)
        headers = self._replica_headers(rep)
        if rep.partial:
            headers["X-Registry-Partial"] = "true"
        return Answer(200, {"results": matching.rank(rows, q, _now())}, "replica", headers)

    async def stats(self, ctx: RequestContext) -> Answer:
        rep = self._replica_first(ctx.tenant)
        if rep is None:
            rep = self._replica_during_outage(ctx, "stats")
        if rep is not None:
            return self._stats_from_replica(rep, ctx)
        try:
            body = await self._read_db(
                ctx, "stats", lambda c: repository.fetch_stats(c, ctx.tenant)
            )
        except DatabaseUnavailable as exc:
            return self._stats_from_replica(self._replica_for(ctx, exc), ctx)
        return Answer(200, body, "database")

    def _stats_from_replica(self, rep: Replica, ctx: RequestContext) -> Answer:
        self.hooks.replica_hit("stats")
        return Answer(
            200, matching.stats(rep.all(ctx.tenant), _now()), "replica", self._replica_headers(rep)
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
            row = await self._db(
                ctx.deadline,
                "operation",
                lambda c: repository.fetch_operation(c, ctx.tenant, op_id),
            )
        except DatabaseUnavailable as exc:
            raise self._unavailable(exc, "this operation is not in the local journal") from exc
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
        op_id = idempotency_key or uuid.uuid4().hex
        target = repository.target_of(kind, payload)
        if self.replica is not None and self.replica.has_pending(ctx.tenant, target):
            return await self._journal_write(
                ctx, kind, payload, op_id, target, req_hash, None, always_journal
            )
        wctx = repository.WriteContext(
            ctx.tenant, ctx.actor, ctx.request_id, self.settings.max_agents
        )
        now = _now()
        try:
            outcome = await self._db(
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
            if exc.caller_deadline:
                # The caller gave up first; the write may or may not commit. Journaling it
                # would turn the caller's impatience into a 202 it did not ask for.
                raise errors.DeadlineExceeded(
                    "X-Request-Timeout passed before PostgreSQL answered; the write may still "
                    f"commit: its op id is {op_id}, and retrying with the same Idempotency-Key "
                    "is safe"
                ) from exc
            return await self._journal_write(
                ctx, kind, payload, op_id, target, req_hash, exc, always_journal
            )
        return self._written(outcome)

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
    ) -> Answer:
        journal = self.journal
        rejecting = self.settings.write_fallback is WriteFallback.REJECT and not always_journal
        if journal is None or rejecting:
            raise self._unavailable(exc, "write_fallback is 'reject'")
        jid = journal_id(ctx.tenant, op_id)
        known = journal.get(jid)
        if known is not None and known.payload.get("hash") != req_hash:
            raise errors.IdempotencyMismatch(
                "this Idempotency-Key was used before with a different request"
            )
        received = _now()
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
            raise self._unavailable(exc, "the local journal cannot take the write") from jexc
        if known is None:
            self._overlay(entry)
            self.hooks.journal_append()
        if self.breaker.state not in _OPEN_STATES:
            self._replay_wake.set()
        return Answer(
            202,
            {"op_id": op_id, "status": "pending"},
            "journal",
            {"Location": f"/v1/operations/{op_id}"},
        )

    def _overlay(self, entry: JournalEntry) -> None:
        if self.replica is None or entry.kind not in repository.REGISTRY_KINDS:
            return
        op_id = entry.op_id.partition("/")[2]
        self.replica.add_pending(
            entry.tenant,
            entry.key,
            PendingWrite(
                op_id=op_id,
                kind=entry.kind,
                payload=entry.payload["payload"],
                received_at=datetime.fromisoformat(entry.payload["received_at"]),
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
            if self.breaker.state in _OPEN_STATES or self.db.pool is None:
                continue
            try:
                await self.replay()
            except Exception as exc:  # keep the loop alive; the next wake tries again
                log.error("journal replay failed", error=describe(exc))

    async def replay(self) -> int:
        """Apply the journal in order; returns how many entries left it. Single-flight."""
        journal = self.journal
        if journal is None:
            return 0
        done = 0
        async with self._replay_lock:
            self.replays["runs"] += 1
            while journal.depth:
                batch = journal.pending()[: self.settings.journal.replay_batch]
                for entry in batch:
                    if not await self._replay_one(entry):
                        return done
                    done += 1
        if done and self.replica is not None:
            log.info("journal drained", entries=done)
        if done and self.on_replayed is not None:
            self.on_replayed()
        return done

    async def _replay_one(self, entry: JournalEntry) -> bool:
        assert self.journal is not None
        meta = entry.payload
        op_id = entry.op_id.partition("/")[2]
        wctx = repository.WriteContext(
            entry.tenant,
            meta.get("actor", "journal"),
            meta.get("request_id"),
            self.settings.max_agents,
            at=datetime.fromisoformat(meta["received_at"]) if "received_at" in meta else None,
        )
        deadline = Deadline.after(self.settings.request.default_timeout_ms / 1000)
        now = _now()
        status = OpStatus.APPLIED
        reason: str | None = None
        record: AgentRecord | None = None
        try:
            outcome = await self._db(
                deadline,
                "replay_" + entry.kind,
                lambda c: repository.execute_write(
                    c,
                    wctx,
                    kind=entry.kind,
                    payload=meta["payload"],
                    render=lambda rec: rec.to_public(now),
                    op_id=op_id,
                    req_hash=meta.get("hash", ""),
                ),
            )
        except DatabaseUnavailable as exc:
            self.replays["failed"] += 1
            self.replays["last_error"] = str(exc)
            self.hooks.replayed("failed")
            return False
        except errors.RegistryError as exc:
            status, reason = OpStatus.REJECTED, f"{exc.slug}: {exc.detail}"
        except Exception as exc:
            # Unexpected: maybe passing, maybe this entry can never be applied. Try it again on
            # later rounds; only after several failures reject it, durably and with the reason,
            # so one poisoned entry cannot block the journal for ever.
            failures = self._replay_failures.get(entry.op_id, 0) + 1
            self._replay_failures[entry.op_id] = failures
            log.error(
                "journal entry not applied", op_id=op_id, attempt=failures, error=describe(exc)
            )
            if failures < REPLAY_ATTEMPTS:
                self.replays["failed"] += 1
                self.replays["last_error"] = describe(exc)
                return False
            status = OpStatus.REJECTED
            reason = given_up = f"internal-error: {describe(exc)}"
            try:
                await self._db(
                    deadline,
                    "replay_reject",
                    lambda c: repository.record_rejection(
                        c,
                        wctx,
                        op_id=op_id,
                        kind=entry.kind,
                        req_hash=meta.get("hash", ""),
                        reason=given_up,
                    ),
                )
            except Exception as record_exc:  # the journal outcome still carries the reason
                log.error(
                    "rejection not recorded in the ledger", op_id=op_id, error=describe(record_exc)
                )
        else:
            record = outcome.record
            if not outcome.applied:
                status, reason = OpStatus.REJECTED, outcome.reason
        await self.journal.complete(entry.op_id, status, reason)
        self._replay_failures.pop(entry.op_id, None)
        if self.replica is not None:
            self.replica.drop_pending(entry.tenant, entry.key, op_id)
            if record is not None:
                self.replica.upsert(record)
        outcome_name = status.value
        self.replays[outcome_name] += 1
        self.hooks.replayed(outcome_name)
        if status is OpStatus.APPLIED:
            self.hooks.committed("replay")
        else:
            log.warning("journaled write rejected on replay", op_id=op_id, reason=reason)
        return True

    # -- admin -----------------------------------------------------------------------------

    async def audit(self, ctx: RequestContext, **filters: Any) -> Answer:
        try:
            rows = await self._read_db(
                ctx, "audit", lambda c: repository.fetch_audit(c, ctx.tenant, **filters)
            )
        except DatabaseUnavailable as exc:
            raise self._unavailable(exc, "the audit log lives there") from exc
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

    def set_breaker(self, state: str, reason: str | None) -> None:
        cause = reason or f"set to {state} by an admin"
        if state == "forced_open":
            self.breaker.force_open(cause)
        elif state == "disabled":
            self.breaker.disable(cause)
        else:
            self.breaker.automatic(cause)
