"""Deadlines: one instant per request, and every call under it gets only the time that remains.

A timeout per call is not enough: three retries of a 2 s timeout make an 8 s request. A
:class:`Deadline` is an absolute instant on a monotonic clock; whatever runs under it asks
:meth:`Deadline.remaining` just before it waits. The deadline is passed explicitly, from the
request down to the call, so every signature shows which work runs under one.
"""

from __future__ import annotations

import math

from proxy.resilience._clock import SYSTEM_CLOCK, Clock

__all__ = [
    "Deadline",
    "DeadlineExceeded",
]


class DeadlineExceeded(TimeoutError):
    """The deadline passed.

    ``during_call`` tells the two cases apart for classification: True when a call was running and
    ran out of time (the dependency was slow, which the breaker must count), False when the
    deadline had already passed before anything was sent (nothing to blame on the dependency).
    """

    def __init__(self, message: str = "deadline exceeded", *, during_call: bool = True) -> None:
        super().__init__(message)
        self.during_call = during_call


class Deadline:
    """An absolute instant on ``clock.monotonic()`` by which the work must be done."""

    __slots__ = ("_at", "_clock")

    def __init__(self, at: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if math.isnan(at):
            raise ValueError("a deadline cannot be NaN")
        self._at = at
        self._clock = clock

    @classmethod
    def after(cls, seconds: float, *, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        """The deadline ``seconds`` from now (``math.inf`` for none)."""
        if math.isnan(seconds):
            raise ValueError("a deadline cannot be NaN seconds away")
        return cls(clock.monotonic() + seconds, clock=clock)

    @property
    def at(self) -> float:
        """The instant, in the clock's monotonic seconds."""
        return self._at

    @property
    def clock(self) -> Clock:
        return self._clock

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - self._clock.monotonic())

    def expired(self) -> bool:
        return self._clock.monotonic() >= self._at

    def raise_if_expired(self) -> None:
        """Refuse to start work with no time left; nothing was sent, so no blame on the callee."""
        late = self._clock.monotonic() - self._at
        if late >= 0:
            raise DeadlineExceeded(f"deadline passed {late:.3f}s ago", during_call=False)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"
