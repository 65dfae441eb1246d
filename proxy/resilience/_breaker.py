"""A circuit breaker for one dependency, with admin overrides and an observable history.

States::

    closed ──trip──> open ──open period elapsed / probe answered──> half_open
      ^                ^                                               │
      │                └───────────── any trial failure ───────────────┤
      └──────────────── half_open_successes trial successes ───────────┘

    forced_open, disabled: admin overrides, left only through automatic() (back to closed).

Callers ask :meth:`CircuitBreaker.acquire` for a :class:`Permit` before each call and report the
outcome on it: ``success(duration)``, ``failure(duration, cause)`` for an infrastructure failure,
or ``release()`` for an outcome the breaker must not count (a data error proves the database is
up). Classification is the caller's job (see :mod:`proxy.resilience._errors`); the breaker only
counts.

Trip rules while closed, checked after every recorded call:

* ``failure_threshold`` consecutive failures;
* failure share >= ``failure_rate`` over the sliding window, once it holds ``min_calls`` calls;
* slow share >= ``slow_call_rate`` (calls, successful or not, slower than ``slow_call_s``) over
  the window, once it holds ``min_calls`` calls.

Open period after the n-th trip in a row (the count resets when the breaker closes)::

    capped = min(open_max_s, open_base_s * open_multiplier ** (n - 1))
    period = capped * uniform(1 - open_jitter, 1 + open_jitter)

The jitter is applied after the cap, so a period may exceed ``open_max_s`` by up to
``open_jitter`` of it. That is deliberate: capping after jitter would put every sidecar at
exactly the cap after a long outage, probing in step, which is what jitter is for.

In half_open at most ``half_open_max_calls`` trials run at once. A trial slower than
``slow_call_s`` counts as a failure even if it succeeded, so a database that answers but too
slowly does not flap the breaker closed and open again.

Every permit carries the generation (count of transitions) it was issued in. An outcome reported
after the state changed is ignored: a slow call admitted while closed must not close or reopen a
breaker that has moved on. Nothing here awaits, so each state change is atomic on the event loop.

Written here rather than taken from a library: the breakers on PyPI (pybreaker, aiobreaker,
circuitbreaker) count consecutive failures only, with no failure-rate or slow-call window, no
bounded half-open admission, no growing jittered open period, no admin overrides and no
injectable clock, and each of those is part of this product's contract.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from proxy.resilience._clock import SYSTEM_CLOCK, Clock, SlidingWindow
from proxy.resilience._errors import Rejected

__all__ = [
    "BreakerOpen",
    "BreakerState",
    "CircuitBreaker",
    "Listener",
    "Permit",
    "Transition",
]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


_OVERRIDES = frozenset({BreakerState.FORCED_OPEN, BreakerState.DISABLED})


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: BreakerState
    to_state: BreakerState
    at: float
    """Wall-clock seconds since the epoch."""
    cause: str

    def as_dict(self) -> dict[str, Any]:
        """The shape of ``/v1/status``: keys ``from``, ``to``, ``at``, ``cause``."""
        return {
            "from": self.from_state.value,
            "to": self.to_state.value,
            "at": self.at,
            "cause": self.cause,
        }


Listener = Callable[[Transition], None]


class BreakerOpen(Rejected):
    """The breaker refused the call; ``retry_after`` says when asking again makes sense."""

    def __init__(self, name: str, state: BreakerState, retry_after: float) -> None:
        super().__init__(
            f"circuit breaker {name!r} is {state.value}; retry after {retry_after:.3f}s",
            retry_after=retry_after,
        )
        self.name = name
        self.state = state


class Permit:
    """Leave to make one call; report its outcome exactly once (later reports are ignored)."""

    __slots__ = ("_breaker", "_done", "_generation", "trial")

    def __init__(self, breaker: CircuitBreaker, generation: int, *, trial: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        self.trial = trial
        """True when admitted as a half-open trial call."""

    @property
    def done(self) -> bool:
        return self._done

    def success(self, duration_s: float) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._on_success(self, duration_s)

    def failure(self, duration_s: float, cause: str) -> None:
        """The call failed because of the dependency (an infrastructure failure)."""
        if self._done:
            return
        self._done = True
        self._breaker._on_failure(self, duration_s, cause)

    def release(self) -> None:
        """The call ended in a way that says nothing about the dependency: count nothing."""
        if self._done:
            return
        self._done = True
        self._breaker._on_release(self)


class CircuitBreaker:
    """See the module docstring. All durations are seconds."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        window_s: float = 10.0,
        min_calls: int = 20,
        failure_rate: float = 0.5,
        slow_call_s: float = 1.0,
        slow_call_rate: float = 0.8,
        open_base_s: float = 1.0,
        open_max_s: float = 30.0,
        open_multiplier: float = 2.0,
        open_jitter: float = 0.2,
        half_open_max_calls: int = 3,
        half_open_successes: int = 3,
        history: int = 50,
        retry_hint_s: float = 1.0,
        window_buckets: int = 10,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        _require(failure_threshold >= 1, "failure_threshold must be >= 1")
        _require(window_s > 0 and math.isfinite(window_s), "window_s must be positive and finite")
        _require(min_calls >= 1, "min_calls must be >= 1")
        _require(0 < failure_rate <= 1, "failure_rate must be in (0, 1]")
        _require(slow_call_s > 0, "slow_call_s must be positive")
        _require(0 < slow_call_rate <= 1, "slow_call_rate must be in (0, 1]")
        _require(open_base_s > 0, "open_base_s must be positive")
        _require(open_max_s > 0, "open_max_s must be positive")
        _require(open_multiplier >= 1, "open_multiplier must be >= 1")
        _require(0 <= open_jitter < 1, "open_jitter must be in [0, 1)")
        _require(half_open_max_calls >= 1, "half_open_max_calls must be >= 1")
        _require(half_open_successes >= 1, "half_open_successes must be >= 1")
        _require(history >= 1, "history must be >= 1")
        _require(retry_hint_s >= 0, "retry_hint_s must not be negative")

        self.name = name
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.min_calls = min_calls
        self.failure_rate = failure_rate
        self.slow_call_s = slow_call_s
        self.slow_call_rate = slow_call_rate
        self.open_base_s = open_base_s
        self.open_max_s = open_max_s
        self.open_multiplier = open_multiplier
        self.open_jitter = open_jitter
        self.half_open_max_calls = half_open_max_calls
        self.half_open_successes = half_open_successes
        self.retry_hint_s = retry_hint_s
        self.clock = clock
        self._rng = rng if rng is not None else random.Random()

        self._state = BreakerState.CLOSED
        self._generation = 0
        self._window = SlidingWindow(
            ("calls", "failures", "slow"), window_s=window_s, buckets=window_buckets, clock=clock
        )
        self._consecutive_failures = 0
        self._consecutive_trips = 0
        self._capped_period = 0.0
        self._open_period = 0.0
        self._open_until = 0.0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._transitions: deque[Transition] = deque(maxlen=history)
        self._listeners: list[Listener] = []
        self._pending: deque[Transition] = deque()
        self._notifying = False
        self.listener_errors = 0
        """Exceptions raised by listeners and swallowed; shown so a broken listener is noticed."""

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def transitions(self) -> list[Transition]:
        """Recent transitions, newest last, at most ``history`` of them."""
        return list(self._transitions)

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def consecutive_trips(self) -> int:
        return self._consecutive_trips

    @property
    def open_period(self) -> float:
        """The current (or last) open period in seconds, jitter included; 0 before any trip."""
        return self._open_period

    def window_counts(self) -> dict[str, int]:
        """Calls, failures and slow calls in the sliding window."""
        return self._window.as_dict()

    def retry_after(self) -> float:
        """Seconds until asking again makes sense, >= 0; 0 when calls are admitted now."""
        state = self._state
        if state is BreakerState.OPEN:
            return max(0.0, self._open_until - self.clock.monotonic())
        if state is BreakerState.FORCED_OPEN:
            return self.retry_hint_s
        if state is BreakerState.HALF_OPEN and self._trials_in_flight >= self.half_open_max_calls:
            return self.retry_hint_s
        return 0.0

    def refuses_now(self) -> bool:
        """Whether `acquire` refuses every call until an operator or the clock changes it:
        forced open, or open with its open period still running.

        Without side effects, unlike `acquire` (which moves an elapsed open period to half-open):
        for a caller that would rather take its fallback at once than build a call to be
        refused. Half-open with every trial slot taken is not counted: it refuses only for as
        long as a trial takes."""
        state = self._state
        if state is BreakerState.FORCED_OPEN:
            return True
        return state is BreakerState.OPEN and self.clock.monotonic() < self._open_until

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for ``/v1/status``."""
        now = self.clock.monotonic()
        open_until: float | None = None
        if self._state is BreakerState.OPEN:
            open_until = self.clock.wall() + max(0.0, self._open_until - now)
        counts = self._window.as_dict()
        return {
            "name": self.name,
            "state": self._state.value,
            "transitions": [t.as_dict() for t in self._transitions],
            "consecutive_failures": self._consecutive_failures,
            "consecutive_trips": self._consecutive_trips,
            "window": {**counts, "window_s": self.window_s, "min_calls": self.min_calls},
            "open_until": open_until,
            "open_period_s": self._open_period if self._consecutive_trips else None,
            "retry_after_s": self.retry_after(),
            "half_open": {
                "in_flight": self._trials_in_flight,
                "successes": self._trial_successes,
                "max_calls": self.half_open_max_calls,
                "successes_needed": self.half_open_successes,
            },
            "listener_errors": self.listener_errors,
        }

    # -- admission -------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit one call or raise :class:`BreakerOpen`."""
        state = self._state
        if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
            return Permit(self, self._generation, trial=False)
        if state is BreakerState.OPEN:
            if self.clock.monotonic() < self._open_until:
                raise BreakerOpen(self.name, state, self.retry_after())
            self._to_half_open("open period elapsed")
            state = self._state
        if state is BreakerState.HALF_OPEN:
            if self._trials_in_flight >= self.half_open_max_calls:
                raise BreakerOpen(self.name, state, self.retry_hint_s)
            self._trials_in_flight += 1
            return Permit(self, self._generation, trial=True)
        raise BreakerOpen(self.name, state, self.retry_after())

    # -- outcomes (called by Permit) ---------------------------------------------------------

    def _current(self, permit: Permit) -> bool:
        return permit._generation == self._generation

    def _on_success(self, permit: Permit, duration_s: float) -> None:
        if not self._current(permit):
            return
        slow = duration_s > self.slow_call_s
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._window.add(1, 0, int(slow))
            self._check_rates()
        elif self._state is BreakerState.HALF_OPEN:
            self._trials_in_flight -= 1
            if slow:
                self._trip(f"trial call slow ({duration_s:.3f}s > {self.slow_call_s:g}s)")
                return
            self._trial_successes += 1
            if self._trial_successes >= self.half_open_successes:
                self._close(f"{self._trial_successes} trial calls succeeded", fresh=True)

    def _on_failure(self, permit: Permit, duration_s: float, cause: str) -> None:
        if not self._current(permit):
            return
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._window.add(1, 1, int(duration_s > self.slow_call_s))
            if self._consecutive_failures >= self.failure_threshold:
                self._trip(f"{self._consecutive_failures} consecutive failures (last: {cause})")
                return
            self._check_rates()
        elif self._state is BreakerState.HALF_OPEN:
            self._trials_in_flight -= 1
            self._trip(f"trial call failed: {cause}")

    def _on_release(self, permit: Permit) -> None:
        if self._current(permit) and self._state is BreakerState.HALF_OPEN:
            self._trials_in_flight -= 1

    def _check_rates(self) -> None:
        calls, failures, slow = self._window.totals()
        if calls < self.min_calls:
            return
        window = f"{self.window_s:g}s"
        rate = failures / calls
        if rate >= self.failure_rate:
            self._trip(
                f"failure rate {rate:.2f} >= {self.failure_rate:.2f} over {window} "
                f"({failures}/{calls} calls)",
            )
            return
        rate = slow / calls
        if rate >= self.slow_call_rate:
            self._trip(
                f"slow-call rate {rate:.2f} >= {self.slow_call_rate:.2f} over {window} "
                f"({slow}/{calls} calls > {self.slow_call_s:g}s)",
            )

    # -- transitions -----------------------------------------------------------------------

    def _trip(self, cause: str) -> None:
        self._consecutive_trips += 1
        if self._consecutive_trips == 1:
            self._capped_period = min(self.open_max_s, self.open_base_s)
        else:
            # Grown step by step rather than base * m ** n, which overflows after long outages.
            self._capped_period = min(self.open_max_s, self._capped_period * self.open_multiplier)
        jitter = self._rng.uniform(1.0 - self.open_jitter, 1.0 + self.open_jitter)
        self._open_period = self._capped_period * jitter
        self._open_until = self.clock.monotonic() + self._open_period
        self._transition(BreakerState.OPEN, cause)

    def _to_half_open(self, cause: str) -> None:
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._transition(BreakerState.HALF_OPEN, cause)

    def _close(self, cause: str, *, fresh: bool) -> None:
        self._consecutive_failures = 0
        self._consecutive_trips = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        if fresh:
            self._window.clear()
        self._transition(BreakerState.CLOSED, cause)

    def _transition(self, to_state: BreakerState, cause: str) -> None:
        transition = Transition(self._state, to_state, self.clock.wall(), cause)
        self._state = to_state
        self._generation += 1
        self._transitions.append(transition)
        self._emit(transition)

    def _emit(self, transition: Transition) -> None:
        # A listener may itself cause a transition (say, an admin hook forcing the breaker
        # open). Queueing keeps every listener seeing transitions in the order they happened.
        self._pending.append(transition)
        if self._notifying:
            return
        self._notifying = True
        try:
            while self._pending:
                current = self._pending.popleft()
                for listener in tuple(self._listeners):
                    try:
                        listener(current)
                    except Exception:
                        self.listener_errors += 1
        finally:
            self._notifying = False

    # -- probe and overrides -----------------------------------------------------------------

    def probe_succeeded(self, cause: str = "probe answered") -> None:
        """The background probe reached the dependency: go half_open now. Only from open."""
        if self._state is BreakerState.OPEN:
            self._to_half_open(cause)

    def force_open(self, cause: str = "forced open by operator") -> None:
        """Refuse every call until :meth:`automatic`."""
        if self._state is BreakerState.FORCED_OPEN:
            return
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._transition(BreakerState.FORCED_OPEN, cause)

    def disable(self, cause: str = "disabled by operator") -> None:
        """Admit every call and never trip until :meth:`automatic`."""
        if self._state is BreakerState.DISABLED:
            return
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._transition(BreakerState.DISABLED, cause)

    def automatic(self, cause: str = "automatic mode restored by operator") -> None:
        """Leave an override: back to closed with a fresh window. No-op when not overridden."""
        if self._state not in _OVERRIDES:
            return
        self._close(cause, fresh=True)

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn`` synchronously on every transition; returns a function that removes it.

        Exceptions from listeners are swallowed (and counted in ``listener_errors``): metrics or
        logging must never change what the breaker does.
        """
        self._listeners.append(fn)

        def remove() -> None:
            self.remove_listener(fn)

        return remove

    def remove_listener(self, fn: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
