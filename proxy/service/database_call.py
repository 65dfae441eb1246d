"""The one way the service reaches PostgreSQL: a call guarded by the bulkhead, the breaker, retries
and a deadline, which either answers or says why it could not.

Every operation, request or background, goes through `DatabaseCall.run`, so the rules below hold
for all of them:

- a busy sidecar is not an outage: a request waits its turn for a connection (the bulkhead) as
  long as its deadline allows, and past that gets `overload`, which never counts against the
  breaker;
- a deadline the caller chose (`X-Request-Timeout`) says nothing about PostgreSQL: running out of
  it gets `deadline` and is not counted against the breaker either;
- a failure that is not the database's (bad data, a conflict) is raised as such, never turned
  into `unreachable`, so it neither trips the breaker nor falls back.

The problems a caller gets when a call had no answer and nothing else can answer are made here
too (`no_answer`), so every route words them alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from proxy.registry import errors
from proxy.resilience import (
    BreakerOpen,
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    Deadline,
    ErrorKind,
    LoopLag,
    Overloaded,
    Rejected,
    RetryBudget,
)
from proxy.resilience import DeadlineExceeded as DeadlineExceededError
from proxy.resilience import call as call_with_retries
from proxy.service.context import (
    DEADLINE,
    OVERLOAD,
    UNREACHABLE,
    RequestContext,
    ServiceHooks,
    Spans,
)
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.pg_errors import classify, describe

T = TypeVar("T")

_UNAVAILABLE_KINDS = (ErrorKind.INFRASTRUCTURE, ErrorKind.TRANSIENT, ErrorKind.REJECTED)
# PostgreSQL is away: the breaker refuses calls, or lets only its probe through.
OPEN_STATES = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class DatabaseUnavailable(Exception):
    """A database call that gave no answer, and why: `unreachable` (PostgreSQL failed or the
    breaker refused), `overload` (no capacity here) or `deadline` (the caller's own)."""

    def __init__(
        self, message: str, retry_after: float, *, reason: str = UNREACHABLE, sent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason
        self.sent = sent
        """The call may have reached PostgreSQL: a write's fate is then unknown."""


def _caller_bound(exc: BaseException) -> ErrorKind:
    if isinstance(exc, DeadlineExceededError):
        return ErrorKind.REJECTED
    return classify(exc)


class DatabaseCall:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        breaker: CircuitBreaker,
        budget: RetryBudget | None,
        hooks: ServiceHooks,
        bulkhead: Bulkhead | None,
        lag: LoopLag | None,
    ) -> None:
        self._settings = settings
        self._db = database
        self._breaker = breaker
        self.breaker_refuses = breaker.refuses_now
        """The breaker refuses every call now (forced open, or open with time left): asked by
        reads that would rather take the replica at once than build a call to be refused."""
        self._budget = budget
        self._hooks = hooks
        self._bulkhead = bulkhead
        self._lag = lag

    async def run(
        self,
        deadline: Deadline,
        operation: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        caller_deadline: bool = False,
        background: bool = False,
    ) -> T:
        """Run ``fn`` on a pooled connection under the breaker, retries and ``deadline``.

        A request first takes its turn in the bulkhead (background work has connections of its
        own and skips it). Raises `DatabaseUnavailable` with the reason when there is no answer.
        """
        if self._breaker.refuses_now():
            # Fail fast without building a call, a permit and an exception chain: during an
            # outage this is every write (reads the replica can serve never get here).
            breaker = self._breaker
            self._hooks.db_call(operation, ErrorKind.REJECTED.value, 0.0)
            if self._hooks.spans is not None:
                self.refused(operation)
            raise DatabaseUnavailable(
                f"circuit breaker is {breaker.state.value}", max(breaker.retry_after(), 1.0)
            )
        bulkhead = None if background else self._bulkhead
        if bulkhead is not None:
            await self._enter_bulkhead(bulkhead, deadline, operation, caller_deadline)
        try:
            return await self._call(deadline, operation, fn, caller_deadline)
        finally:
            if bulkhead is not None:
                bulkhead.release()

    async def for_request(
        self, ctx: RequestContext, operation: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """`run` under the request's deadline, counted against PostgreSQL unless the caller
        chose it."""
        return await self.run(ctx.deadline, operation, fn, caller_deadline=ctx.client_deadline)

    def refused(self, operation: str) -> None:
        """Tell the request's trace that the breaker refused ``operation`` without a call.

        Callers on a hot path check that tracing is on first, which spares them this call."""
        spans = self._hooks.spans
        if spans is not None:
            spans.event(
                "breaker refused", {"operation": operation, "state": self._breaker.state.value}
            )

    def unavailable(self, exc: DatabaseUnavailable | None, what: str) -> errors.Unavailable:
        """The problem for PostgreSQL being away when nothing else can do ``what`` instead."""
        retry_after = exc.retry_after if exc is not None else max(1.0, self._breaker.retry_after())
        return errors.Unavailable(f"PostgreSQL is unavailable and {what}", retry_after=retry_after)

    def no_answer(self, exc: DatabaseUnavailable | None, what: str) -> errors.RegistryError:
        """The problem for a call that got no answer and has no fallback, by its reason."""
        if exc is not None and exc.reason == DEADLINE:
            return errors.DeadlineExceeded(
                f"X-Request-Timeout passed before PostgreSQL answered, and {what}"
            )
        if exc is not None and exc.reason == OVERLOAD:
            return errors.Overloaded(f"{exc}, and {what}", retry_after=exc.retry_after)
        return self.unavailable(exc, what)

    async def _enter_bulkhead(
        self, bulkhead: Bulkhead, deadline: Deadline, operation: str, caller_deadline: bool
    ) -> None:
        lag = self._lag
        if lag is not None and lag.behind:
            self._hooks.shed("loop-lag")
            self._hooks.db_call(operation, OVERLOAD, 0.0)
            raise DatabaseUnavailable(
                "the sidecar is behind on its own work (event loop lag "
                f"{lag.last_s * 1000:.0f} ms); try again shortly",
                1.0,
                reason=OVERLOAD,
            )
        try:
            await bulkhead.acquire(deadline)
        except Overloaded as exc:
            self._hooks.shed(exc.reason)
            if caller_deadline and deadline.expired():
                self._hooks.db_call(operation, DEADLINE, 0.0)
                raise DatabaseUnavailable(
                    "X-Request-Timeout passed while waiting for a database connection",
                    1.0,
                    reason=DEADLINE,
                ) from exc
            self._hooks.db_call(operation, OVERLOAD, 0.0)
            raise DatabaseUnavailable(str(exc), exc.retry_after, reason=OVERLOAD) from exc

    async def _call(
        self,
        deadline: Deadline,
        operation: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        caller_deadline: bool,
    ) -> T:
        reached = False  # whether any attempt got a connection and began its statements

        async def attempt(timeout: float) -> T:
            nonlocal reached
            # `call_with_retries` runs each attempt under a scope of the time remaining.
            async with self._db.connection(timeout, bounded=True) as conn:
                reached = True
                return await fn(conn)

        r = self._settings.retry
        hooks = self._hooks
        clock = self._breaker.clock
        started = clock.monotonic()
        try:
            result = await call_with_retries(
                attempt if hooks.spans is None else _traced(attempt, hooks.spans, operation),
                breaker=self._breaker,
                budget=self._budget,
                deadline=deadline,
                attempts=r.attempts,
                base_s=r.base_ms / 1000,
                max_s=r.max_ms / 1000,
                hooks=hooks.retry,
                classify=_caller_bound if caller_deadline else classify,
                describe=describe,
            )
        except Exception as exc:
            kind = classify(exc)
            elapsed = clock.monotonic() - started
            if isinstance(exc, BreakerOpen):
                self.refused(operation)
            if caller_deadline and isinstance(exc, DeadlineExceededError):
                hooks.db_call(operation, DEADLINE, elapsed)
                raise DatabaseUnavailable(describe(exc), 1.0, reason=DEADLINE) from exc
            if isinstance(exc, Overloaded) and not reached:
                # Only when no attempt reached PostgreSQL: a retry refused for capacity after an
                # attempt that failed mid-write leaves that write's fate unknown, which is not
                # "nothing was done" (it falls through to unavailable, sent).
                hooks.db_call(operation, OVERLOAD, elapsed)
                raise DatabaseUnavailable(str(exc), exc.retry_after, reason=OVERLOAD) from exc
            hooks.db_call(operation, kind.value, elapsed)
            if isinstance(exc, errors.RegistryError):
                raise
            if kind in _UNAVAILABLE_KINDS:
                hint = exc.retry_after if isinstance(exc, Rejected) else 1.0
                raise DatabaseUnavailable(describe(exc), max(hint, 1.0), sent=reached) from exc
            sqlstate = getattr(exc, "sqlstate", None) or ""
            if sqlstate[:2] in ("22", "23"):
                raise errors.Unprocessable(
                    "the database refused the values: " + describe(exc)
                ) from exc
            raise
        hooks.db_call(operation, "success", clock.monotonic() - started)
        return result


def _traced(
    attempt: Callable[[float], Awaitable[T]], spans: Spans, operation: str
) -> Callable[[float], Awaitable[T]]:
    """``attempt`` with a span around each run of it, numbered (only when tracing is on)."""
    number = 0

    async def traced(timeout: float) -> T:
        nonlocal number
        number += 1
        with spans.attempt(operation, number):
            return await attempt(timeout)

    return traced
