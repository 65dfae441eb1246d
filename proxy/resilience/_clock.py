"""Time sources and a time-bucketed counter.

Every primitive in this package reads time through a :class:`Clock` so unit tests can drive it
with a :class:`FakeClock` and assert exact values. Two readings are kept apart on purpose:
``monotonic()`` measures intervals (it never jumps when NTP steps the wall clock) and ``wall()``
stamps events for humans and for ``/v1/status``.

:class:`SlidingWindow` lives here because both the breaker and the retry budget need "how many of
X in the last N seconds" in constant time and bounded memory, and both define it on a clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "FakeClock",
    "Sleep",
    "SlidingWindow",
    "SystemClock",
]

Sleep = Callable[[float], Awaitable[None]]
"""An injectable ``asyncio.sleep``: takes seconds, returns something to await."""


@runtime_checkable
class Clock(Protocol):
    """Where the resilience primitives read time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps that people and other processes read."""
        ...


class SystemClock:
    """The real clocks of the process."""

    __slots__ = ()

    # The functions themselves, not methods calling them: the hot read path asks the clock
    # several times per request, and a Python frame per reading is most of what one costs.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""A shared instance; :class:`SystemClock` holds no state, so one is enough."""


class FakeClock:
    """A clock that moves only when told to, for exact tests.

    The wall clock moves in step with the monotonic one, starting at ``wall_start``.
    :meth:`sleep` advances time by the requested amount and records it, so code that takes an
    injectable ``sleep`` can be run without real waiting while the test still sees the schedule.
    """

    __slots__ = ("_now", "_start", "_wall_start", "sleeps")

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._start = start
        self._now = start
        self._wall_start = wall_start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_start + (self._now - self._start)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; a monotonic clock cannot go back, so negatives are refused."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a clock cannot move by {seconds!r} seconds")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance time by it, and yield once to the event loop.

        Yielding keeps the scheduling behaviour of a real sleep: other tasks get to run, so a
        test cannot pass only because a coroutine never gave up control.
        """
        self.sleeps.append(float(seconds))
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now!r}, wall={self.wall()!r})"


class SlidingWindow:
    """Sums of a few integer counters over roughly the last ``window_s`` seconds.

    Time is cut into ``buckets`` equal slices of ``window_s / buckets`` seconds kept in a ring.
    Adding and reading are O(1) amortised and memory is fixed whatever the call rate. The price
    is granularity: an event stays counted until the ring wraps past its slice, that is for at
    least ``window_s - window_s / buckets`` and less than ``window_s`` seconds. An event in slice
    ``k`` (``k = floor(t / width)``) is gone exactly when the clock reaches
    ``(k + buckets) * width``.
    """

    __slots__ = ("_clock", "_counts", "_head", "_slots", "_totals", "_width", "fields", "window_s")

    def __init__(
        self,
        fields: Sequence[str],
        *,
        window_s: float,
        buckets: int = 10,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not fields:
            raise ValueError("a window needs at least one counter")
        if not window_s > 0 or math.isinf(window_s):
            raise ValueError(f"window_s must be a positive finite number, got {window_s!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self.fields: tuple[str, ...] = tuple(fields)
        self.window_s = float(window_s)
        self._slots = buckets
        self._width = self.window_s / buckets
        self._clock = clock
        self._counts: list[list[int]] = [[0] * len(self.fields) for _ in range(buckets)]
        self._totals: list[int] = [0] * len(self.fields)
        self._head = self._slice(clock.monotonic())

    def _slice(self, now: float) -> int:
        return math.floor(now / self._width)

    def _rotate(self) -> None:
        target = self._slice(self._clock.monotonic())
        steps = target - self._head
        if steps <= 0:
            return
        if steps >= self._slots:
            self._zero()
        else:
            for k in range(self._head + 1, target + 1):
                row = self._counts[k % self._slots]
                for i, value in enumerate(row):
                    if value:
                        self._totals[i] -= value
                        row[i] = 0
        self._head = target

    def _zero(self) -> None:
        for row in self._counts:
            for i in range(len(row)):
                row[i] = 0
        for i in range(len(self._totals)):
            self._totals[i] = 0

    def add(self, *deltas: int) -> None:
        """Add one value per field (in field order) to the current slice."""
        if len(deltas) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} values, got {len(deltas)}")
        self._rotate()
        row = self._counts[self._head % self._slots]
        for i, value in enumerate(deltas):
            row[i] += value
            self._totals[i] += value

    def totals(self) -> tuple[int, ...]:
        """The sums over the window, in field order."""
        self._rotate()
        return tuple(self._totals)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.fields, self.totals(), strict=True))

    def clear(self) -> None:
        """Forget everything, as if the window had just been created."""
        self._zero()
        self._head = self._slice(self._clock.monotonic())
