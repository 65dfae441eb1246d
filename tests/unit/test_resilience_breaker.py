"""Circuit breaker: every transition, every trip rule, overrides, listeners, snapshot.

Times are chosen to be exact in binary floating point so equality asserts are safe.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from proxy.resilience._breaker import (
    BreakerOpen,
    BreakerState,
    CircuitBreaker,
    Permit,
    Transition,
)
from proxy.resilience._clock import FakeClock

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED
WALL0 = 1_700_000_000.0


def make(clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    """A breaker without jitter, so open periods are exact."""
    options: dict[str, Any] = {"open_jitter": 0.0, "clock": clock}
    options.update(overrides)
    return CircuitBreaker("db", **options)


def fail(breaker: CircuitBreaker, n: int = 1, *, duration: float = 0.0) -> None:
    for _ in range(n):
        breaker.acquire().failure(duration, "boom")


def succeed(breaker: CircuitBreaker, n: int = 1, *, duration: float = 0.0) -> None:
    for _ in range(n):
        breaker.acquire().success(duration)


def path(breaker: CircuitBreaker) -> list[tuple[str, str]]:
    return [(t.from_state.value, t.to_state.value) for t in breaker.transitions]


def trip(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.failure_threshold)
    assert breaker.state is OPEN


# -- closed and the trip rules ----------------------------------------------------------------


def test_starts_closed_and_admits() -> None:
    breaker = make(FakeClock())
    assert breaker.state is CLOSED
    permit = breaker.acquire()
    assert isinstance(permit, Permit)
    assert not permit.trial
    permit.success(0.01)
    assert breaker.window_counts() == {"calls": 1, "failures": 0, "slow": 0}
    assert breaker.transitions == []
    assert breaker.retry_after() == 0.0


def test_trips_on_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=5)
    fail(breaker, 4)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 4
    succeed(breaker)  # a success breaks the streak
    assert breaker.consecutive_failures == 0
    fail(breaker, 4)
    assert breaker.state is CLOSED
    clock.advance(0.5)
    fail(breaker)
    assert breaker.state is OPEN
    [transition] = breaker.transitions
    assert transition.from_state is CLOSED
    assert transition.to_state is OPEN
    assert transition.at == WALL0 + 0.5
    assert transition.cause.startswith("5 consecutive failures")
    assert "boom" in transition.cause


def test_failure_rate_waits_for_min_calls() -> None:
    breaker = make(FakeClock(), failure_threshold=100, min_calls=10, failure_rate=0.5)
    # f s f s f s f s f: 5 of 9 fail, but fewer than min_calls are in the window.
    for i in range(9):
        if i % 2 == 0:
            fail(breaker)
        else:
            succeed(breaker)
    assert breaker.state is CLOSED
    # The tenth call, a success, brings the window to 5/10 = 0.50: the rate rule trips.
    succeed(breaker)
    assert breaker.state is OPEN
    assert breaker.transitions[-1].cause == "failure rate 0.50 >= 0.50 over 10s (5/10 calls)"


def test_failure_rate_below_threshold_does_not_trip() -> None:
    breaker = make(FakeClock(), failure_threshold=100, min_calls=10, failure_rate=0.5)
    for i in range(40):
        if i % 5 >= 3:  # s s s f f: the share never reaches 50 %
            fail(breaker)
        else:
            succeed(breaker)
    assert breaker.state is CLOSED
    assert breaker.window_counts() == {"calls": 40, "failures": 16, "slow": 0}


def test_slow_call_rate_trips_even_on_successes() -> None:
    breaker = make(
        FakeClock(), failure_threshold=100, min_calls=5, slow_call_s=1.0, slow_call_rate=0.8
    )
    succeed(breaker, duration=1.0)  # exactly the threshold is not slower than it
    succeed(breaker, 3, duration=1.5)
    assert breaker.state is CLOSED  # 4 calls < min_calls
    succeed(breaker, duration=2.0)
    # 4 slow of 5 = 0.80
    assert breaker.state is OPEN
    assert breaker.transitions[-1].cause == (
        "slow-call rate 0.80 >= 0.80 over 10s (4/5 calls > 1s)"
    )


def test_slow_failures_count_as_slow_too() -> None:
    breaker = make(
        FakeClock(),
        failure_threshold=100,
        min_calls=4,
        failure_rate=1.0,
        slow_call_s=0.5,
        slow_call_rate=0.5,
    )
    succeed(breaker, 2)
    fail(breaker, duration=0.75)
    assert breaker.state is CLOSED
    fail(breaker, duration=0.75)
    assert breaker.state is OPEN
    assert breaker.transitions[-1].cause.startswith("slow-call rate 0.50 >= 0.50")


def test_old_calls_age_out_of_the_window() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=100, window_s=10.0, min_calls=4, failure_rate=0.5)
    fail(breaker, 2)  # t = 0
    clock.advance(9.75)
    succeed(breaker)
    assert breaker.window_counts() == {"calls": 3, "failures": 2, "slow": 0}
    clock.advance(0.25)  # t = 10: the failures at t = 0 are gone
    assert breaker.window_counts() == {"calls": 1, "failures": 0, "slow": 0}
    fail(breaker)
    succeed(breaker, 2)
    # With the old failures still counted this would be 3/6 and trip.
    assert breaker.window_counts() == {"calls": 4, "failures": 1, "slow": 0}
    assert breaker.state is CLOSED


# -- open, open period, half_open ----------------------------------------------------------------


def test_open_refuses_with_retry_after_then_goes_half_open() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_base_s=2.0)
    fail(breaker)
    assert breaker.state is OPEN
    assert breaker.open_period == 2.0
    clock.advance(0.5)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.state is OPEN
    assert info.value.retry_after == 1.5
    assert breaker.retry_after() == 1.5
    clock.advance(1.5)
    permit = breaker.acquire()
    assert permit.trial
    assert breaker.state is HALF_OPEN
    assert breaker.transitions[-1].cause == "open period elapsed"
    assert breaker.transitions[-1].at == WALL0 + 2.0


def test_open_period_grows_and_is_capped_then_resets_on_close() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        failure_threshold=1,
        open_base_s=1.0,
        open_multiplier=2.0,
        open_max_s=5.0,
        half_open_successes=1,
    )
    periods = []
    fail(breaker)
    for _ in range(5):
        periods.append(breaker.open_period)
        clock.advance(breaker.open_period)
        breaker.acquire().failure(0.0, "still down")  # trial fails: reopen
    periods.append(breaker.open_period)
    assert periods == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert breaker.consecutive_trips == 6

    clock.advance(breaker.open_period)
    breaker.acquire().success(0.0)
    assert breaker.state is CLOSED
    assert breaker.consecutive_trips == 0
    fail(breaker)
    assert breaker.open_period == 1.0


def test_open_max_below_base_caps_the_first_period() -> None:
    breaker = make(FakeClock(), failure_threshold=1, open_base_s=60.0, open_max_s=30.0)
    fail(breaker)
    assert breaker.open_period == 30.0


def test_open_period_does_not_overflow_after_many_trips() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_multiplier=10.0, open_max_s=30.0)
    fail(breaker)
    for _ in range(2_000):
        clock.advance(breaker.open_period)
        breaker.acquire().failure(0.0, "down")
    assert breaker.open_period == 30.0


def test_jitter_stays_within_bounds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db",
        failure_threshold=1,
        open_base_s=10.0,
        open_max_s=10.0,  # every period is at the cap, so the draws show the jitter alone
        open_jitter=0.2,
        clock=clock,
        rng=random.Random(1234),
    )
    fail(breaker)
    periods = []
    for _ in range(500):
        periods.append(breaker.open_period)
        clock.advance(breaker.open_period)
        breaker.acquire().failure(0.0, "down")
    assert min(periods) >= 8.0
    assert max(periods) <= 12.0  # may pass open_max_s, by at most the jitter share
    assert min(periods) < 8.1
    assert max(periods) > 11.9
    assert len(set(periods)) > 400


def test_jitter_is_reproducible_with_a_seed() -> None:
    def periods(seed: int) -> list[float]:
        clock = FakeClock()
        breaker = CircuitBreaker("db", failure_threshold=1, clock=clock, rng=random.Random(seed))
        fail(breaker)
        seen = []
        for _ in range(5):
            seen.append(breaker.open_period)
            clock.advance(breaker.open_period)
            breaker.acquire().failure(0.0, "down")
        return seen

    assert periods(7) == periods(7)
    expected_rng = random.Random(7)
    expected = [min(30.0, 1.0 * 2.0**n) * expected_rng.uniform(0.8, 1.2) for n in range(5)]
    assert periods(7) == expected


def test_half_open_admits_a_bounded_number_of_trials() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=2, retry_hint_s=0.75)
    trip(breaker)
    clock.advance(breaker.open_period)
    first = breaker.acquire()
    second = breaker.acquire()
    assert breaker.state is HALF_OPEN
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.state is HALF_OPEN
    assert info.value.retry_after == 0.75
    assert breaker.retry_after() == 0.75
    first.release()  # a slot frees up; nothing is counted
    third = breaker.acquire()
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["half_open"]["in_flight"] == 2
    second.release()
    third.release()
    assert breaker.snapshot()["half_open"] == {
        "in_flight": 0,
        "successes": 0,
        "max_calls": 2,
        "successes_needed": 3,
    }


def test_concurrent_trials_close_after_enough_successes() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=2, half_open_successes=3)
    trip(breaker)
    clock.advance(breaker.open_period)
    p1 = breaker.acquire()
    p2 = breaker.acquire()
    p1.success(0.01)
    assert breaker.state is HALF_OPEN
    p3 = breaker.acquire()
    p2.success(0.01)
    assert breaker.state is HALF_OPEN
    p3.success(0.01)
    assert breaker.state is CLOSED
    assert breaker.transitions[-1].cause == "3 trial calls succeeded"
    assert path(breaker) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    # Closing starts afresh.
    assert breaker.window_counts() == {"calls": 0, "failures": 0, "slow": 0}
    assert breaker.consecutive_failures == 0


def test_any_trial_failure_reopens_with_a_longer_period() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=3)
    trip(breaker)
    assert breaker.open_period == 1.0
    clock.advance(1.0)
    p1 = breaker.acquire()
    p2 = breaker.acquire()
    p1.success(0.01)
    p2.failure(0.01, "connection reset")
    assert breaker.state is OPEN
    assert breaker.open_period == 2.0
    assert breaker.transitions[-1].cause == "trial call failed: connection reset"


def test_slow_trial_success_reopens() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, slow_call_s=1.0)
    trip(breaker)
    clock.advance(breaker.open_period)
    breaker.acquire().success(1.5)
    assert breaker.state is OPEN
    assert breaker.transitions[-1].cause.startswith("trial call slow")


def test_late_outcomes_from_an_earlier_state_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, half_open_max_calls=1, half_open_successes=1)
    straggler = breaker.acquire()  # admitted while closed
    fail(breaker, 2)
    assert breaker.state is OPEN
    clock.advance(breaker.open_period)
    trial = breaker.acquire()
    straggler.success(0.01)  # must neither close the breaker nor free the trial slot
    assert breaker.state is HALF_OPEN
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    trial.success(0.01)
    assert breaker.state is CLOSED


# -- release and single use ------------------------------------------------------------------


def test_release_counts_nothing() -> None:
    breaker = make(FakeClock(), failure_threshold=5)
    fail(breaker, 4)
    for _ in range(10):
        breaker.acquire().release()
    assert breaker.consecutive_failures == 4  # neither counted nor reset
    assert breaker.window_counts() == {"calls": 4, "failures": 4, "slow": 0}
    fail(breaker)
    assert breaker.state is OPEN


def test_release_in_half_open_is_not_a_success() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1, half_open_successes=1)
    trip(breaker)
    clock.advance(breaker.open_period)
    for _ in range(5):
        breaker.acquire().release()
    assert breaker.state is HALF_OPEN


def test_a_permit_records_once() -> None:
    breaker = make(FakeClock(), failure_threshold=2)
    permit = breaker.acquire()
    permit.failure(0.0, "first")
    permit.failure(0.0, "again")
    permit.success(0.0)
    permit.release()
    assert permit.done
    assert breaker.consecutive_failures == 1
    assert breaker.window_counts()["calls"] == 1
    assert breaker.state is CLOSED


# -- probe ---------------------------------------------------------------------------------------


def test_probe_success_moves_open_to_half_open_at_once() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, open_base_s=30.0)
    breaker.probe_succeeded()  # closed: no-op
    assert breaker.transitions == []
    trip(breaker)
    clock.advance(0.25)
    breaker.probe_succeeded()
    assert breaker.state is HALF_OPEN
    assert breaker.transitions[-1].cause == "probe answered"
    breaker.probe_succeeded("again")  # half_open: no-op
    assert len(breaker.transitions) == 2
    assert breaker.acquire().trial


# -- overrides -----------------------------------------------------------------------------------


def test_force_open_refuses_everything_until_automatic() -> None:
    clock = FakeClock()
    breaker = make(clock, retry_hint_s=1.0)
    succeed(breaker, 3)
    breaker.force_open("maintenance")
    assert breaker.state is FORCED_OPEN
    for _ in range(3):
        with pytest.raises(BreakerOpen) as info:
            breaker.acquire()
        assert info.value.state is FORCED_OPEN
        assert info.value.retry_after == 1.0
        clock.advance(100.0)
    breaker.probe_succeeded()  # an operator's choice is not undone by a probe
    breaker.force_open("twice")  # no-op
    assert breaker.state is FORCED_OPEN
    breaker.automatic("maintenance over")
    assert breaker.state is CLOSED
    assert path(breaker) == [("closed", "forced_open"), ("forced_open", "closed")]
    assert [t.cause for t in breaker.transitions] == ["maintenance", "maintenance over"]
    assert breaker.window_counts() == {"calls": 0, "failures": 0, "slow": 0}


def test_force_open_from_open_and_half_open() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)
    trip(breaker)
    breaker.force_open("ops")
    assert breaker.state is FORCED_OPEN
    breaker.automatic()
    trip(breaker)
    clock.advance(breaker.open_period)
    trial = breaker.acquire()
    breaker.force_open("ops")
    trial.success(0.0)  # admitted before the override: ignored
    assert breaker.state is FORCED_OPEN


def test_disabled_admits_everything_and_never_trips() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, min_calls=1)
    breaker.disable("breaker misbehaving")
    assert breaker.state is DISABLED
    for _ in range(100):
        breaker.acquire().failure(5.0, "down")
    assert breaker.state is DISABLED
    assert breaker.retry_after() == 0.0
    breaker.automatic("back to normal")
    assert breaker.state is CLOSED
    assert breaker.window_counts() == {"calls": 0, "failures": 0, "slow": 0}
    assert breaker.consecutive_failures == 0
    assert path(breaker) == [("closed", "disabled"), ("disabled", "closed")]


def test_disable_from_open_then_automatic_is_closed() -> None:
    breaker = make(FakeClock(), failure_threshold=1)
    trip(breaker)
    breaker.disable()
    breaker.acquire().success(0.0)
    breaker.automatic()
    assert breaker.state is CLOSED
    assert breaker.consecutive_trips == 0


def test_automatic_is_a_no_op_outside_overrides() -> None:
    breaker = make(FakeClock(), failure_threshold=1)
    breaker.automatic()
    assert breaker.transitions == []
    trip(breaker)
    breaker.automatic()
    assert breaker.state is OPEN


# -- listeners, history, snapshot ----------------------------------------------------------------


def test_listeners_see_every_transition_and_cannot_break_the_breaker() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_successes=1)
    seen: list[Transition] = []

    def broken(_: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    remove = breaker.add_listener(seen.append)
    trip(breaker)
    clock.advance(breaker.open_period)
    breaker.acquire().success(0.0)
    assert [(t.from_state, t.to_state) for t in seen] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert seen == breaker.transitions
    assert breaker.listener_errors == 3
    assert breaker.state is CLOSED

    remove()
    remove()  # twice is fine
    breaker.force_open("x")
    assert len(seen) == 3


def test_a_listener_causing_a_transition_keeps_the_order() -> None:
    breaker = make(FakeClock(), failure_threshold=1)
    first: list[BreakerState] = []
    second: list[BreakerState] = []

    def escalate(t: Transition) -> None:
        first.append(t.to_state)
        if t.to_state is OPEN:
            breaker.force_open("escalated")

    breaker.add_listener(escalate)
    breaker.add_listener(lambda t: second.append(t.to_state))
    fail(breaker)
    assert first == [OPEN, FORCED_OPEN]
    assert second == [OPEN, FORCED_OPEN]
    assert breaker.state is FORCED_OPEN


def test_history_is_bounded_newest_last() -> None:
    breaker = make(FakeClock(), history=3)
    for i in range(3):
        breaker.disable(f"d{i}")
        breaker.automatic(f"a{i}")
    assert [t.cause for t in breaker.transitions] == ["a1", "d2", "a2"]


def test_snapshot_is_json_ready() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, open_base_s=4.0)
    succeed(breaker)
    assert breaker.snapshot()["open_until"] is None
    assert breaker.snapshot()["open_period_s"] is None
    clock.advance(1.0)
    fail(breaker, 2)
    clock.advance(1.0)
    snap = breaker.snapshot()
    json.dumps(snap)
    assert snap["name"] == "db"
    assert snap["state"] == "open"
    assert snap["transitions"] == [
        {
            "from": "closed",
            "to": "open",
            "at": WALL0 + 1.0,
            "cause": "2 consecutive failures (last: boom)",
        }
    ]
    assert snap["consecutive_failures"] == 2
    assert snap["consecutive_trips"] == 1
    assert snap["window"]["calls"] == 3
    assert snap["window"]["failures"] == 2
    assert snap["open_period_s"] == 4.0
    assert snap["open_until"] == WALL0 + 5.0
    assert snap["retry_after_s"] == 3.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"failure_threshold": 0},
        {"window_s": 0.0},
        {"min_calls": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"slow_call_s": 0.0},
        {"slow_call_rate": 0.0},
        {"open_base_s": 0.0},
        {"open_max_s": 0.0},
        {"open_multiplier": 0.5},
        {"open_jitter": 1.0},
        {"open_jitter": -0.1},
        {"half_open_max_calls": 0},
        {"half_open_successes": 0},
        {"history": 0},
        {"retry_hint_s": -1.0},
    ],
)
def test_rejects_nonsense_configuration(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("db", **overrides)
