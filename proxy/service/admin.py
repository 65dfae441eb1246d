"""What an operator reads and does through the admin routes: the audit log, the record of an admin
action, the breaker set by hand, and the figures of the load the sidecar refuses.
"""

from __future__ import annotations

from typing import Any

from proxy.registry.requests import WriteKind, request_hash
from proxy.resilience import Bulkhead, CircuitBreaker, LoopLag
from proxy.service.backlog import Backlog
from proxy.service.context import Answer, RequestContext
from proxy.service.database_call import DatabaseCall, DatabaseUnavailable
from proxy.service.writes import Writes
from proxy.store import repository


class Admin:
    def __init__(
        self,
        *,
        breaker: CircuitBreaker,
        bulkhead: Bulkhead | None,
        lag: LoopLag | None,
        call: DatabaseCall,
        writes: Writes,
        backlog: Backlog,
    ) -> None:
        self._breaker = breaker
        self._bulkhead = bulkhead
        self._lag = lag
        self._call = call
        self._writes = writes
        self._backlog = backlog

    async def audit(self, ctx: RequestContext, **filters: Any) -> Answer:
        try:
            rows = await self._call.for_request(
                ctx, "audit", lambda c: repository.fetch_audit(c, ctx.tenant, **filters)
            )
        except DatabaseUnavailable as exc:
            raise self._call.no_answer(exc, "the audit log lives there") from exc
        next_after = rows[-1]["id"] if len(rows) == filters["limit"] else None
        return Answer(200, {"entries": rows, "next_after_id": next_after}, "database")

    async def record_admin(self, ctx: RequestContext, action: str, target: str) -> Answer:
        """An admin action's audit row: committed now, or journaled whatever write_fallback
        says (it guards the registry's writes, not the record of what an operator did)."""
        payload = {"action": action, "target": target}
        return await self._writes.write(
            ctx,
            WriteKind.ADMIN,
            payload,
            req_hash=request_hash(WriteKind.ADMIN, target, payload),
            always_journal=True,
        )

    def set_breaker(self, state: str, reason: str | None) -> None:
        cause = reason or f"set to {state} by an admin"
        if state == "forced_open":
            self._breaker.force_open(cause)
        elif state == "disabled":
            self._breaker.disable(cause)
        else:
            self._breaker.automatic(cause)

    def overload_stats(self) -> dict[str, Any]:
        """The queue for database connections, the loop's lag, and what was refused."""
        return {
            "bulkhead": self._bulkhead.snapshot() if self._bulkhead is not None else None,
            "loop_lag": self._lag.snapshot() if self._lag is not None else None,
            "backlog_waiters": self._backlog.waiting(),
        }
