"""Event-loop lag: how late a timer fires tells how far behind the process is.

A sidecar with more work than one core can do falls behind silently: every await waits its turn
behind every ready callback, timeouts fire late, the health probe times out against a healthy
database and the answers it gives grow slow. :class:`LoopLag` measures that directly, with a timer
every ``interval_s``, and says when the lag has *stood* above ``threshold_s`` for a whole
``window_s`` (the smallest sample of the window is above it). A lone spike (a garbage collection,
a snapshot) does not count; a loop that stays behind does, and the service then stops taking new
database work until it catches up (answered ``503 overloaded`` for writes; reads go to the
replica), so the answers it does give stay fast and its background work gets its turn.

The standing-minimum rule is the one CoDel uses for queues, applied to the loop's own queue.

Given ``waited`` (how long the loop's thread has waited for a core so far), each sample also
says how much of its interval was spent waiting for one: a loop late because it ran something
long is the sidecar's to fix, one late because the kernel ran someone else is the node's or the
CPU limit's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy.resilience._clock import SYSTEM_CLOCK, Clock

__all__ = ["LoopLag"]


class LoopLag:
    def __init__(
        self,
        *,
        threshold_s: float,
        interval_s: float = 0.025,
        window_s: float = 0.25,
        clock: Clock = SYSTEM_CLOCK,
        on_sample: Callable[[float, float | None], None] | None = None,
        waited: Callable[[], float | None] | None = None,
    ) -> None:
        """`on_sample` is given every sample, for instrumentation: seconds late, and seconds
        of the interval the thread waited for a core (None unless `waited` tells).
        `waited`: the thread's run-queue wait so far, in seconds, or None when unknown."""
        if threshold_s <= 0:
            raise ValueError("threshold_s must be positive")
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.window_s = window_s
        self.clock = clock
        self.on_sample = on_sample
        self.waited = waited
        self._samples: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.last_s = 0.0
        self.max_s = 0.0
        self.behind = False
        self.behind_since: float | None = None
        self.episodes = 0

    def record(self, lag_s: float, waited_s: float | None = None) -> None:
        """One sample: the timer fired ``lag_s`` late, and the thread waited ``waited_s`` for
        a core meanwhile. Public so tests can drive it exactly."""
        now = self.clock.monotonic()
        if self.on_sample is not None:
            self.on_sample(lag_s, waited_s)
        self.last_s = lag_s
        self.max_s = max(self.max_s, lag_s)
        samples = self._samples
        samples.append((now, lag_s))
        while samples and samples[0][0] < now - self.window_s:
            samples.popleft()
        # A window spans at least two samples: one late timer is a spike, not a standing lag.
        standing = len(samples) >= 2 and min(lag for _, lag in samples) > self.threshold_s
        if standing and not self.behind:
            self.behind = True
            self.behind_since = now
            self.episodes += 1
        elif not standing and self.behind and lag_s <= self.threshold_s:
            self.behind = False
            self.behind_since = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        waited = self.waited
        before = waited() if waited is not None else None
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag_s = max(0.0, loop.time() - expected)
            now = waited() if waited is not None else None
            delta = now - before if now is not None and before is not None else None
            before = now
            self.record(lag_s, delta)

    def snapshot(self) -> dict[str, Any]:
        return {
            "threshold_ms": round(self.threshold_s * 1000, 3),
            "last_ms": round(self.last_s * 1000, 3),
            "max_ms": round(self.max_s * 1000, 3),
            "shedding": self.behind,
            "episodes": self.episodes,
        }
