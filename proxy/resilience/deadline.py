"""Deadlines: one instant per request, and every call under it gets only the time that remains.

A timeout per call is not enough: three retries of a 2 s timeout make an 8 s request. A
:class:`Deadline` is an absolute instant on a monotonic clock; whatever runs under it asks
:meth:`Deadline.remaining` (or :meth:`Deadline.timeout_for` with its own cap) just before it
waits. The current deadline travels in a :mod:`contextvars` variable so the database layer can
find it without threading it through every signature.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from proxy.resilience.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "Deadline",
    "DeadlineExceeded",
    "current_deadline",
    "use_deadline",
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

    def timeout_for(self, cap: float | None = None) -> float:
        """The timeout to give one call: what remains, lowered to ``cap`` when given."""
        remaining = self.remaining()
        if cap is None:
            return remaining
        return max(0.0, min(remaining, cap))

    def raise_if_expired(self) -> None:
        """Refuse to start work with no time left; nothing was sent, so no blame on the callee."""
        late = self._clock.monotonic() - self._at
        if late >= 0:
            raise DeadlineExceeded(f"deadline passed {late:.3f}s ago", during_call=False)

    def tighter(self, other: Deadline | None) -> Deadline:
        """The earlier of the two; an inner scope may shorten a deadline but never extend it."""
        if other is None or self._at <= other._at:
            return self
        return other

    def shortened(self, seconds: float) -> Deadline:
        """This deadline, or one ``seconds`` from now if that comes first."""
        return self.tighter(Deadline.after(seconds, clock=self._clock))

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


_current: ContextVar[Deadline | None] = ContextVar("proxy_resilience_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline of the work running in this context, if any."""
    return _current.get()


@contextmanager
def use_deadline(deadline: Deadline) -> Iterator[Deadline]:
    """Run the block under ``deadline``, or under the enclosing one if that is earlier.

    Yields the deadline actually in force. Being a context variable, it follows tasks created
    inside the block (they copy the context) without leaking to anything outside it.
    """
    effective = deadline.tighter(_current.get())
    token = _current.set(effective)
    try:
        yield effective
    finally:
        _current.reset(token)
