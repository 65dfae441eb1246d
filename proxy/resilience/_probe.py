"""Background health probe: while the breaker is open, find out as soon as the dependency is back.

Without it an open breaker would learn of recovery only when its open period ends and real
requests are risked as trials. The probe runs a cheap ``check`` (``SELECT 1`` for PostgreSQL)
every ``interval_s`` while the breaker is ``open`` and moves it to ``half_open`` on the first
answer; the trial calls then decide whether it closes.

While the breaker is ``half_open`` the probe goes on, each probe now a trial call of the breaker
(it takes a trial permit and reports its outcome), so the breaker closes even when no request
reaches the database: during a recovery every read may be served from the replica and every
write queued behind its agent's journaled backlog.

It costs nothing while the breaker is closed: the task waits on an :class:`asyncio.Event` that a
breaker listener sets on every transition, so there is no polling. After the breaker opens the
first probe comes one interval later, not at once: the failure that tripped it was just seen, and
probing in the same instant would mostly repeat it. ``forced_open`` is not probed: an operator
chose it and only :meth:`CircuitBreaker.automatic` leaves it.

``jitter`` spreads the intervals: each is ``interval_s`` times a uniform factor in ``[1 - jitter,
1 + jitter]``. A fleet whose breakers opened on the same outage would otherwise probe in step,
every one of its members at the same instant, for as long as the outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.resilience._breaker import BreakerOpen, BreakerState, CircuitBreaker, Transition
from proxy.resilience._clock import Clock, Sleep
from proxy.resilience._errors import describe as default_describe

__all__ = ["HealthProbe"]

_PROBED = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN})


class HealthProbe:
    """Probes ``check(timeout_s)`` every ``interval_s`` while ``breaker`` is open.

    ``on_probe(ok, duration_s)``, when given, is called after each probe (for metrics); its
    exceptions are ignored.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        check: Callable[[float], Awaitable[None]],
        *,
        interval_s: float = 0.25,
        timeout_s: float = 0.5,
        sleep: Sleep = asyncio.sleep,
        clock: Clock | None = None,
        on_probe: Callable[[bool, float], None] | None = None,
        describe: Callable[[BaseException], str] = default_describe,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be at least 0 and below 1")
        self.breaker = breaker
        self.interval_s = interval_s
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self.timeout_s = timeout_s
        self._check = check
        self._sleep = sleep
        self._clock = clock if clock is not None else breaker.clock
        self._on_probe = on_probe
        self._describe = describe
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.probes_total = 0
        self.probe_failures = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        """Wall-clock time of the last probe that answered."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background task (needs a running event loop). Idempotent."""
        if self.running:
            return
        if self._unsubscribe is None:
            self._unsubscribe = self.breaker.add_listener(self._on_transition)
        # The breaker may already be open (say, it tripped during startup).
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"health-probe:{self.breaker.name}"
        )

    async def stop(self) -> None:
        """Cancel the background task and wait for it to end. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Swallow only the cancellation we asked for; if stop() itself is being
            # cancelled, that must propagate.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    def _on_transition(self, transition: Transition) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if self.breaker.state not in _PROBED:
                # No await between the check and clear(), so a transition cannot slip between.
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._sleep(self._next_interval())
            state = self.breaker.state
            if state is BreakerState.OPEN:
                await self.probe_once()
            elif state is BreakerState.HALF_OPEN:
                await self.trial_once()

    def _next_interval(self) -> float:
        if not self.jitter:
            return self.interval_s
        return self.interval_s * (1 + self.jitter * (2 * self._rng.random() - 1))

    async def trial_once(self) -> bool | None:
        """One probe as a half-open trial call; None when no trial permit was free (the
        breaker already has as many trials running as it admits)."""
        try:
            permit = self.breaker.acquire()
        except BreakerOpen:
            return None
        self.probes_total += 1
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._check(self.timeout_s)
        except asyncio.CancelledError:
            permit.release()
            raise
        except Exception as exc:
            duration = self._clock.monotonic() - started
            self.probe_failures += 1
            self.last_error = self._describe(exc)
            permit.failure(duration, f"probe failed: {self.last_error}")
            self._notify(ok=False, duration=duration)
            return False
        duration = self._clock.monotonic() - started
        self.last_error = None
        self.last_success_at = self._clock.wall()
        permit.success(duration)
        self._notify(ok=True, duration=duration)
        return True

    async def probe_once(self) -> bool:
        """Run the check once; on success tell the breaker. Returns whether it answered."""
        self.probes_total += 1
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._check(self.timeout_s)
        except Exception as exc:
            self.probe_failures += 1
            self.last_error = self._describe(exc)
            self._notify(ok=False, duration=self._clock.monotonic() - started)
            return False
        self.last_error = None
        self.last_success_at = self._clock.wall()
        self._notify(ok=True, duration=self._clock.monotonic() - started)
        self.breaker.probe_succeeded()
        return True

    def _notify(self, *, ok: bool, duration: float) -> None:
        if self._on_probe is None:
            return
        with contextlib.suppress(Exception):
            self._on_probe(ok, duration)

    def snapshot(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "probes_total": self.probes_total,
            "probe_failures": self.probe_failures,
            "last_error": self.last_error,
            "last_success_at": self.last_success_at,
        }
