"""Writes: committed in PostgreSQL, or journaled when it is away, never both and never lost.

- a write answered 200/201 was committed; a write answered 202 is fsynced in the journal and is
  applied exactly once later (every write carries an op id, recorded in the ledger in the same
  transaction as its effect), or rejected with a reason readable at /v1/operations/{op_id};
- a write is journaled only when PostgreSQL is unreachable or failing by the breaker's rules
  (`write_fallback: reject` refuses it instead); a busy sidecar or the caller's own deadline is
  not an outage, and is answered 503 or 504 with nothing journaled;
- while an agent has journaled writes pending and PostgreSQL is away, new writes for it are
  journaled too, so they keep their order behind the earlier ones; once PostgreSQL answers again
  a new write waits for the agent's backlog to be applied, then goes straight to PostgreSQL, so
  the journal only shrinks after an outage;
- requests with the same Idempotency-Key run one at a time, and the first one's outcome stands.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import structlog

from proxy.registry import errors
from proxy.registry.requests import WriteKind
from proxy.resilience import CircuitBreaker
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
from proxy.service.failover_guard import Committed, FailoverGuard
from proxy.service.ids import UniqueIds
from proxy.settings import Settings, WriteFallback
from proxy.store import repository
from proxy.store.journal import Journal, JournalError, JournalFull
from proxy.store.pending_write import PendingWrite
from proxy.store.replica import Replica

log = structlog.get_logger(__name__)


def journal_record(
    ctx: RequestContext,
    payload: dict[str, Any],
    req_hash: str,
    received: datetime,
    *,
    uncertain: bool = False,
) -> dict[str, Any]:
    """A write as the journal holds it: what the replay needs to apply it as its request would
    have been (the actor, the request id and the time it came in), and whether its fate is
    unknown."""
    record: dict[str, Any] = {
        "payload": payload,
        "hash": req_hash,
        "actor": ctx.actor,
        "request_id": ctx.request_id,
        "received_at": received.isoformat(),
    }
    if uncertain:
        record["uncertain"] = True
    return record


class Writes:
    def __init__(
        self,
        *,
        settings: Settings,
        breaker: CircuitBreaker,
        replica: Replica | None,
        journal: Journal | None,
        hooks: ServiceHooks,
        call: DatabaseCall,
        backlog: Backlog,
        guard: FailoverGuard | None = None,
    ) -> None:
        self._settings = settings
        self._breaker = breaker
        self._replica = replica
        self._guard = guard
        self._journal = journal
        self._hooks = hooks
        self._call = call
        self._backlog = backlog
        # Requests with an Idempotency-Key in progress, by journal id: one at a time per key.
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._op_ids = UniqueIds()

    def new_event_id(self) -> str:
        """An id for a performance event its caller did not name: unique across sidecars and
        restarts (`UniqueIds`), without a read of the system's random source per event."""
        return self._op_ids.next()

    async def write(
        self,
        ctx: RequestContext,
        kind: WriteKind,
        payload: dict[str, Any],
        *,
        req_hash: str,
        idempotency_key: str | None = None,
        always_journal: bool = False,
    ) -> Answer:
        """Commit a write of ``kind``, or journal it while PostgreSQL is away. ``req_hash`` tells
        a retry under the same ``idempotency_key`` from a different request; ``always_journal``
        journals it even when `write_fallback` says reject (an admin action's record)."""
        if idempotency_key is None:
            return await self._write(
                ctx, kind, payload, self._op_ids.next(), req_hash, None, always_journal
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
        kind: WriteKind,
        payload: dict[str, Any],
        op_id: str,
        req_hash: str,
        idempotency_key: str | None,
        always_journal: bool,
    ) -> Answer:
        target = repository.target_of(kind, payload)
        journal = self._journal
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
        rep = self._replica
        while rep is not None and rep.has_pending(ctx.tenant, target):
            if self._breaker.state in OPEN_STATES:
                # PostgreSQL is away: behind the agent's earlier writes, in order.
                return await self._journal_write(
                    ctx, kind, payload, op_id, target, req_hash, None, always_journal
                )
            # PostgreSQL answers again: this write waits for the agent's backlog, then goes
            # straight there. Journaling it would grow the journal while it should drain.
            # The wait leaves the write the breaker's slow-call time of its deadline for its own
            # call: a call started with a few milliseconds left would time out against a healthy
            # PostgreSQL and count as its failure.
            wait = ctx.deadline.remaining() - self._settings.breaker.slow_call_ms / 1000
            if not await self._backlog.wait_for(ctx.tenant, target, wait):
                self._hooks.shed("backlog")
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
            ctx.tenant, ctx.actor, ctx.request_id, self._settings.max_agents
        )
        now = utc_now()
        try:
            outcome = await self._call.run(
                ctx.deadline,
                kind,
                lambda c: repository.execute_write(
                    c,
                    wctx,
                    kind=kind,
                    payload=payload,
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
        if rep is not None:
            if outcome.applied and not outcome.from_ledger and outcome.record is not None:
                rep.committed(outcome.record, PendingWrite(op_id, kind, payload, now))
            else:
                if kind == "performance" and outcome.status in (200, 201):
                    rep.event_counted(ctx.tenant, target, payload["body"]["event_id"])
                if outcome.record is not None:
                    rep.upsert(outcome.record)
        guard = self._guard
        if guard is not None and outcome.applied and not outcome.from_ledger:
            # Until a standby holds it: a primary failing over before then may lose it.
            record = journal_record(ctx, payload, req_hash, now)
            guard.committed(
                Committed.of(journal_id(ctx.tenant, op_id), kind, ctx.tenant, target, record)
            )
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
        if outcome.applied and not outcome.from_ledger:
            self._hooks.committed("direct")
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
        kind: WriteKind,
        payload: dict[str, Any],
        op_id: str,
        target: str,
        req_hash: str,
        exc: DatabaseUnavailable | None,
        always_journal: bool = False,
        *,
        uncertain: bool = False,
    ) -> Answer:
        journal = self._journal
        rejecting = self._settings.write_fallback is WriteFallback.REJECT and not always_journal
        if journal is None or rejecting:
            raise self._call.unavailable(exc, "write_fallback is 'reject'")
        jid = journal_id(ctx.tenant, op_id)
        received = utc_now()
        spans = self._hooks.spans
        try:
            entry = await journal.append(
                op_id=jid,
                kind=kind,
                tenant=ctx.tenant,
                key=target,
                payload=journal_record(ctx, payload, req_hash, received, uncertain=uncertain),
                # The replay's span links to this request's, across the outage and restarts.
                trace=spans.context() if spans is not None else None,
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
            raise self._call.unavailable(exc, "the local journal cannot take the write") from jexc
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
        uncertain = self._backlog.show(entry)
        self._hooks.journal_append()
        if spans is not None:
            spans.event("journaled", {"op_id": op_id, "uncertain": uncertain})
        if self._breaker.state not in OPEN_STATES:
            self._backlog.wake()
        if uncertain:
            # Reads show it once the replay has settled it (PostgreSQL may hold it already).
            headers["X-Registry-Pending"] = "uncertain"
        return Answer(202, {"op_id": op_id, "status": "pending"}, "journal", headers)
