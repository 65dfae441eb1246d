"""The bulkhead: a bounded number of calls at once, and a bounded queue in front of it.

A burst on a healthy database is not an outage. When every slot is taken a caller waits its
turn, first come first served, for as long as its deadline (and ``max_wait_s``) allows; past the
queue's bound, or once the wait runs out, it is refused with :class:`Overloaded`. Nothing was sent
to the dependency, so a refusal is ``REJECTED``: it never moves the breaker, and the caller must
not treat it as the dependency being away (the service answers it ``503 overloaded`` instead of
journaling a write).

Slots are handed over directly from a leaving holder to the first waiter, so a newcomer cannot
overtake the queue. Written here rather than taken from a library: an ``asyncio.Semaphore`` has
neither a bound on its waiters nor a deadline per waiter, and the figures (queued, wait time,
refusals) are part of ``/v1/status`` and the metrics.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.resilience._clock import SYSTEM_CLOCK, Clock
from proxy.resilience._deadline import Deadline
from proxy.resilience._errors import Rejected

__all__ = ["Bulkhead", "BulkheadHooks", "Overloaded"]


class Overloaded(Rejected):
    """Refused for lack of capacity here; ``reason`` says which bound (for the answer and the
    ``registry_proxy_shed_total{reason}`` metric)."""

    def __init__(self, message: str, *, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadHooks:
    """Called synchronously; for metrics."""

    waited: Callable[[float], None] = lambda seconds: None
    """A caller got a slot after queueing for ``seconds`` (0 when it did not queue)."""
    shed: Callable[[str], None] = lambda reason: None
    """A caller was refused: ``queue-full`` or ``queue-timeout``."""


class Bulkhead:
    def __init__(
        self,
        *,
        limit: int,
        max_queue: int,
        max_wait_s: float = math.inf,
        clock: Clock = SYSTEM_CLOCK,
        hooks: BulkheadHooks | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.limit = limit
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.hooks = hooks or BulkheadHooks()
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.admitted_total = 0
        self.queued_total = 0
        self.shed_total: dict[str, int] = {"queue-full": 0, "queue-timeout": 0}
        self.wait_seconds_total = 0.0
        self.max_wait_seen_s = 0.0

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _refuse(self, reason: str, message: str) -> Overloaded:
        self.shed_total[reason] += 1
        self.hooks.shed(reason)
        return Overloaded(message, reason=reason, retry_after=1.0)

    async def acquire(self, deadline: Deadline) -> None:
        """Take a slot, waiting while the deadline and ``max_wait_s`` allow; else `Overloaded`.

        Every successful ``acquire`` must be paired with one :meth:`release`."""
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            self.admitted_total += 1
            self.hooks.waited(0.0)
            return
        if len(self._waiters) >= self.max_queue:
            raise self._refuse(
                "queue-full",
                f"all {self.limit} database connections are busy and {self.max_queue} "
                "requests are already waiting",
            )
        wait = min(deadline.remaining(), self.max_wait_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued_total += 1
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(wait):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over as the timer fired: take it after all.
                pass
            else:
                raise self._refuse(
                    "queue-timeout",
                    f"no database connection became free within {wait * 1000:.0f} ms",
                ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over to a caller that has gone: pass it on
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        waited = self.clock.monotonic() - started
        self.admitted_total += 1
        self.wait_seconds_total += waited
        self.max_wait_seen_s = max(self.max_wait_seen_s, waited)
        self.hooks.waited(waited)

    def release(self) -> None:
        # Hand the slot to the first waiter still waiting; the count stays as it is.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "in_use": self._in_use,
            "queued": len(self._waiters),
            "max_queue": self.max_queue,
            "admitted_total": self.admitted_total,
            "queued_total": self.queued_total,
            "shed_total": dict(self.shed_total),
            "wait_seconds_total": round(self.wait_seconds_total, 6),
            "max_wait_seconds": round(self.max_wait_seen_s, 6),
        }
