"""Reads: from PostgreSQL, or from the local replica when PostgreSQL cannot or need not answer,
with the answer saying which and why.

The replica answers first, without asking PostgreSQL, when the agent (or the tenant, for a query)
has journaled writes pending (`pending-writes`: read-your-writes), when the sidecar runs in
replica read mode and the replica is fresh enough (`read-mode`), and when the breaker would
refuse the call anyway (`unreachable`). Otherwise PostgreSQL is asked, and a call that gets no
answer falls back to the replica with its reason (`unreachable`, `overload` or `deadline`). The
reason is the answer's `X-Registry-Fallback`, its `Age` the replica's.

`get_agent_at_once` is on every get-by-id the replica serves: it stays a plain method with no
await and no layer between it and the replica.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.registry import errors, matching
from proxy.registry.models import AgentQuery
from proxy.service.context import (
    PENDING,
    READ_MODE,
    UNREACHABLE,
    Answer,
    RequestContext,
    ServiceHooks,
    journal_id,
    utc_now,
)
from proxy.service.database_call import DatabaseCall, DatabaseUnavailable
from proxy.settings import ReadMode, Settings
from proxy.store import repository
from proxy.store.journal import Journal
from proxy.store.replica import Replica


class Reads:
    def __init__(
        self,
        *,
        settings: Settings,
        replica: Replica | None,
        journal: Journal | None,
        hooks: ServiceHooks,
        call: DatabaseCall,
    ) -> None:
        self._replica = replica
        self._journal = journal
        self._hooks = hooks
        self._spans = hooks.spans  # None unless tracing is on; asked on every replica read
        self._call = call
        self._breaker_refuses = call.breaker_refuses  # asked on every read PostgreSQL serves
        # Read per request on the hot path; the settings of a running service do not change.
        self._replica_reads = settings.read_mode is ReadMode.REPLICA
        self._max_staleness_s = settings.replica.max_staleness_ms / 1000

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
        itself so that a replica read is not a coroutine.

        `_replica_first`, then `_replica_during_outage`, written out: both ask whether the
        replica holds the tenant, and an outage read then asked three more frames for it again.
        The query and the stats take the long way; a test holds this to the long way's
        answers, problems and metrics in every state."""
        rep = self._replica
        tenant = ctx.tenant
        if rep is None or not rep.warm or not rep.knows_tenant(tenant):
            if self._breaker_refuses():
                self._refused("get_agent")
                raise self._call.no_answer(None, "the local replica has no copy of this tenant")
            return None
        if rep.has_pending(tenant, agent_id):
            reason = PENDING
        elif self._replica_reads and rep.fresh_within(self._max_staleness_s):
            reason = READ_MODE
        elif self._breaker_refuses():
            # `_refused`, written out: every read of an outage comes here.
            self._hooks.db_refused("get_agent")
            if self._spans is not None:
                self._call.refused("get_agent")
            reason = UNREACHABLE
        else:
            return None
        return self._agent_from_replica(rep, ctx, agent_id, None, reason)

    def may_answer_at_once(self) -> bool:
        """False when `get_agent_at_once` gives None for every agent now (database read mode,
        PostgreSQL not refused, nothing journaled); cheaper than asking it, and records
        nothing."""
        rep = self._replica
        # The breaker before the journal: during an outage every read asks this.
        return (
            self._replica_reads
            or self._breaker_refuses()
            or (rep is not None and rep.pending_count() > 0)
        )

    async def get_agent_from_database(self, ctx: RequestContext, agent_id: str) -> Answer:
        """The rest of `get_agent`, once `get_agent_at_once` gave None."""
        try:
            rec = await self._call.for_request(
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
                raise self._call.no_answer(exc, "the local replica is partial")
            raise errors.NotFound(f"agent {agent_id!r} is not registered")
        self._hooks.replica_hit("get")
        headers = self._replica_headers(rep, reason)
        headers["ETag"] = f'"{rec.revision}"'
        return Answer(200, rec.public_json(utc_now()), "replica", headers)

    async def query(self, ctx: RequestContext, q: AgentQuery) -> Answer:
        reason = self._replica_first(ctx.tenant)
        if reason is not None:
            assert self._replica is not None
            return self._query_from_replica(self._replica, ctx, q, reason)
        rep = self._replica_during_outage(ctx, "query")
        if rep is not None:
            return self._query_from_replica(rep, ctx, q, UNREACHABLE)
        try:
            rows = await self._call.for_request(
                ctx, "query", lambda c: repository.query_agents(c, ctx.tenant, q)
            )
        except DatabaseUnavailable as exc:
            return self._query_from_replica(self._replica_for(ctx, exc), ctx, q, exc.reason)
        return Answer(200, {"results": matching.rank(rows, q, utc_now())}, "database")

    def _query_from_replica(
        self, rep: Replica, ctx: RequestContext, q: AgentQuery, reason: str
    ) -> Answer:
        self._hooks.replica_hit("query")
        rows = rep.query(ctx.tenant, q)
        headers = self._replica_headers(rep, reason)
        if rep.partial:
            headers["X-Registry-Partial"] = "true"
        results = matching.rank(rows, q, utc_now(), ordered=True)
        return Answer(200, {"results": results}, "replica", headers)

    async def stats(self, ctx: RequestContext) -> Answer:
        reason = self._replica_first(ctx.tenant)
        if reason is not None:
            assert self._replica is not None
            return self._stats_from_replica(self._replica, ctx, reason)
        rep = self._replica_during_outage(ctx, "stats")
        if rep is not None:
            return self._stats_from_replica(rep, ctx, UNREACHABLE)
        try:
            body = await self._call.for_request(
                ctx, "stats", lambda c: repository.fetch_stats(c, ctx.tenant)
            )
        except DatabaseUnavailable as exc:
            return self._stats_from_replica(self._replica_for(ctx, exc), ctx, exc.reason)
        return Answer(200, body, "database")

    def _stats_from_replica(self, rep: Replica, ctx: RequestContext, reason: str) -> Answer:
        self._hooks.replica_hit("stats")
        return Answer(
            200,
            rep.tenant_stats(ctx.tenant, utc_now()),
            "replica",
            self._replica_headers(rep, reason),
        )

    async def operation(self, ctx: RequestContext, op_id: str) -> Answer:
        if self._journal is not None:
            jid = journal_id(ctx.tenant, op_id)
            entry = self._journal.get(jid)
            if entry is not None:
                body: dict[str, Any] = {"op_id": op_id, "status": "pending", "kind": entry.kind}
                return Answer(200, body, "journal")
            done = self._journal.outcome(jid)
            if done is not None:
                body = {"op_id": op_id, "status": done.status.value, "reason": done.reason}
                return Answer(200, body, "journal")
        try:
            row = await self._call.for_request(
                ctx, "operation", lambda c: repository.fetch_operation(c, ctx.tenant, op_id)
            )
        except DatabaseUnavailable as exc:
            raise self._call.no_answer(exc, "this operation is not in the local journal") from exc
        if row is None:
            raise errors.NotFound(f"no operation {op_id!r}")
        body = {
            "op_id": op_id,
            "status": row["status"],
            "kind": row["kind"],
            "reason": row["reason"],
        }
        return Answer(200, body, "database")

    # -- the replica's part ------------------------------------------------------------------

    def _replica_serves(self, tenant: str) -> bool:
        rep = self._replica
        return rep is not None and rep.warm and rep.knows_tenant(tenant)

    def _replica_first(self, tenant: str, agent_id: str | None = None) -> str | None:
        """Why the replica should answer without asking PostgreSQL first, else None."""
        rep = self._replica
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
        if not self._breaker_refuses():
            return None
        self._refused(operation)
        return self._replica_for(ctx, None)

    def _refused(self, operation: str) -> None:
        """What a database call the breaker refused records (its metric, its span)."""
        self._hooks.db_refused(operation)
        if self._spans is not None:
            self._call.refused(operation)

    def _replica_for(self, ctx: RequestContext, exc: DatabaseUnavailable | None) -> Replica:
        rep = self._replica
        if rep is None or not self._replica_serves(ctx.tenant):
            raise self._call.no_answer(exc, "the local replica has no copy of this tenant")
        return rep

    def _replica_headers(self, rep: Replica, reason: str) -> dict[str, str]:
        """The headers of an answer from the replica; the request's trace learns why too."""
        spans = self._spans
        if spans is not None:
            spans.event("fallback", {"reason": reason})
        age = rep.age()
        return {
            "Age": str(math.ceil(age)) if age is not None else "0",
            "X-Registry-Fallback": reason,
        }
