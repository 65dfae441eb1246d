"""Circuit breaker details that the behavioural tests left loose: a permit reports once, the
defaults of every override, the exact status document, and what leaving a state resets.

Each test pins a rule that a plausible slip (a flipped boolean, a changed default, a key renamed
in /v1/status) would break without any other test noticing."""

from __future__ import annotations

from unittest.mock import ANY

import pytest

from proxy.resilience._breaker import BreakerOpen, BreakerState, CircuitBreaker
from proxy.resilience._clock import FakeClock
from proxy.resilience._errors import Rejected

WALL0 = 1_700_000_000.0


def make(clock: FakeClock | None = None, **options: object) -> CircuitBreaker:
    settings: dict[str, object] = {"open_jitter": 0.0, "clock": clock or FakeClock()}
    settings.update(options)
    return CircuitBreaker("db", **settings)  # type: ignore[arg-type]


def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.acquire().failure(0.0, "down")
    clock.advance(breaker.open_period)
    breaker.probe_succeeded()
    assert breaker.state is BreakerState.HALF_OPEN


def test_defaults() -> None:
    b = CircuitBreaker("db")
    assert (b.failure_threshold, b.window_s, b.min_calls) == (5, 10.0, 20)
    assert (b.failure_rate, b.slow_call_s, b.slow_call_rate) == (0.5, 1.0, 0.8)
    assert (b.open_base_s, b.open_max_s, b.open_multiplier, b.open_jitter) == (1.0, 30.0, 2.0, 0.2)
    assert (b.half_open_max_calls, b.half_open_successes, b.retry_hint_s) == (3, 3, 1.0)


def test_a_success_is_reported_once() -> None:
    b = make(failure_threshold=2)
    permit = b.acquire()
    permit.success(0.0)
    assert permit.done
    permit.failure(0.0, "late")
    permit.failure(0.0, "later")
    assert b.consecutive_failures == 0
    assert b.window_counts() == {"calls": 1, "failures": 0, "slow": 0}


def test_a_release_is_final_too() -> None:
    b = make(failure_threshold=1)
    permit = b.acquire()
    permit.release()
    assert permit.done
    permit.failure(0.0, "late")
    assert b.state is BreakerState.CLOSED
    assert b.window_counts() == {"calls": 0, "failures": 0, "slow": 0}


def test_a_failure_is_reported_once() -> None:
    b = make(failure_threshold=3)
    permit = b.acquire()
    permit.failure(0.0, "x")
    permit.failure(0.0, "x")
    permit.success(0.0)
    assert b.consecutive_failures == 1


def test_a_release_while_closed_counts_nothing_and_frees_no_trial() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=1)
    stale = b.acquire()
    b.acquire().failure(0.0, "down")  # trips: the first permit is now of an older generation
    clock.advance(b.open_period)
    b.probe_succeeded()
    b.acquire()  # the only trial slot
    stale.release()  # from before the trip: must not free the trial slot
    with pytest.raises(BreakerOpen):
        b.acquire()


def test_breaker_open_error() -> None:
    exc = BreakerOpen("db", BreakerState.OPEN, 1.25)
    assert isinstance(exc, Rejected)
    assert str(exc) == "circuit breaker 'db' is open; retry after 1.250s"
    assert (exc.name, exc.state, exc.retry_after) == ("db", BreakerState.OPEN, 1.25)


def test_invalid_settings_say_which() -> None:
    with pytest.raises(ValueError, match=r"^failure_threshold must be >= 1$"):
        CircuitBreaker("db", failure_threshold=0)
    with pytest.raises(ValueError, match=r"^retry_hint_s must not be negative$"):
        CircuitBreaker("db", retry_hint_s=-1.0)


def test_retry_after_is_never_negative_and_zero_once_the_period_ended() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, open_base_s=2.0)
    b.acquire().failure(0.0, "down")
    clock.advance(1.5)
    assert b.retry_after() == 0.5
    clock.advance(1.0)
    assert b.retry_after() == 0.0
    assert b.snapshot()["open_until"] == WALL0 + 2.5


def test_retry_after_in_half_open_only_when_the_trials_are_taken() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=2, retry_hint_s=0.75)
    open_then_half_open(b, clock)
    assert b.retry_after() == 0.0
    b.acquire()
    assert b.retry_after() == 0.0
    b.acquire()
    assert b.retry_after() == 0.75


def test_override_defaults_name_the_operator() -> None:
    b = make()
    b.force_open()
    assert b.transitions[-1].cause == "forced open by operator"
    b.automatic()
    assert b.transitions[-1].cause == "automatic mode restored by operator"
    b.disable()
    assert b.transitions[-1].cause == "disabled by operator"
    b.automatic()
    b.acquire().failure(0.0, "x")
    assert b.window_counts()["failures"] == 1


def test_automatic_starts_a_fresh_window() -> None:
    b = make(failure_threshold=100, min_calls=1000)
    for _ in range(3):
        b.acquire().failure(0.0, "x")
    b.disable()
    b.automatic()
    assert b.window_counts() == {"calls": 0, "failures": 0, "slow": 0}
    assert b.consecutive_failures == 0


@pytest.mark.parametrize("override", ["force_open", "disable", "automatic"])
def test_every_way_out_of_half_open_frees_the_trial_slots(override: str) -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=1, half_open_successes=2)
    open_then_half_open(b, clock)
    b.acquire().success(0.0)  # one success of the two needed
    held = b.acquire()  # the slot is taken
    if override == "automatic":
        b.force_open()
    getattr(b, override)()
    b.automatic()  # closed again (a no-op after automatic)
    assert b.snapshot()["half_open"] == {
        "in_flight": 0,
        "successes": 0,
        "max_calls": 1,
        "successes_needed": 2,
    }
    held.success(0.0)  # of an old generation: ignored
    # Open again, then half-open: a full set of trials and no earlier success carried over.
    b.acquire().failure(0.0, "down")
    clock.advance(b.open_period)
    b.probe_succeeded()
    b.acquire().success(0.0)
    assert b.state is BreakerState.HALF_OPEN
    b.acquire().success(0.0)
    assert b.state is BreakerState.CLOSED


def test_closing_resets_the_trial_counts() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=2, half_open_successes=1)
    open_then_half_open(b, clock)
    other = b.acquire()
    b.acquire().success(0.0)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot()["half_open"]["in_flight"] == 0
    assert b.snapshot()["half_open"]["successes"] == 0
    other.failure(0.0, "late")  # from half-open: ignored
    assert b.state is BreakerState.CLOSED


def test_snapshot_of_a_closed_breaker_is_exact() -> None:
    clock = FakeClock()
    b = make(clock, window_s=8.0, min_calls=4, half_open_max_calls=2, half_open_successes=3)
    b.acquire().success(2.0)
    b.acquire().failure(0.5, "x")
    assert b.snapshot() == {
        "name": "db",
        "state": "closed",
        "transitions": [],
        "consecutive_failures": 1,
        "consecutive_trips": 0,
        "window": {"calls": 2, "failures": 1, "slow": 1, "window_s": 8.0, "min_calls": 4},
        "open_until": None,
        "open_period_s": None,
        "retry_after_s": 0.0,
        "half_open": {"in_flight": 0, "successes": 0, "max_calls": 2, "successes_needed": 3},
        "listener_errors": 0,
    }


def test_snapshot_of_an_open_breaker_is_exact() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, open_base_s=4.0)

    def broken(_: object) -> None:
        raise RuntimeError("listener bug")

    b.add_listener(broken)
    clock.advance(1.0)
    b.acquire().failure(0.0, "down")
    clock.advance(1.0)
    snap = b.snapshot()
    assert snap["state"] == "open"
    [transition] = snap["transitions"]
    assert transition == {"from": "closed", "to": "open", "at": WALL0 + 1.0, "cause": ANY}
    assert transition["cause"].startswith("1 consecutive failures")
    assert snap["open_until"] == WALL0 + 5.0
    assert snap["open_period_s"] == 4.0
    assert snap["retry_after_s"] == 3.0
    assert snap["consecutive_trips"] == 1
    assert snap["listener_errors"] == 1


def test_open_until_in_the_snapshot_never_lies_in_the_past() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, open_base_s=1.0)
    b.acquire().failure(0.0, "down")
    clock.advance(3.0)
    assert b.snapshot()["open_until"] == WALL0 + 3.0


@pytest.mark.parametrize(
    ("option", "bad", "good", "message"),
    [
        ("failure_threshold", 0, 1, "failure_threshold must be >= 1"),
        ("window_s", 0.0, 0.001, "window_s must be positive and finite"),
        ("window_s", float("inf"), 1e9, "window_s must be positive and finite"),
        ("window_s", -1.0, 0.5, "window_s must be positive and finite"),
        ("min_calls", 0, 1, "min_calls must be >= 1"),
        ("failure_rate", 0.0, 1.0, "failure_rate must be in (0, 1]"),
        ("failure_rate", 1.01, 0.01, "failure_rate must be in (0, 1]"),
        ("slow_call_s", 0.0, 0.001, "slow_call_s must be positive"),
        ("slow_call_rate", 0.0, 1.0, "slow_call_rate must be in (0, 1]"),
        ("slow_call_rate", 1.5, 0.01, "slow_call_rate must be in (0, 1]"),
        ("open_base_s", 0.0, 0.001, "open_base_s must be positive"),
        ("open_max_s", 0.0, 0.5, "open_max_s must be positive"),
        ("open_multiplier", 0.99, 1.0, "open_multiplier must be >= 1"),
        ("open_multiplier", 0.5, 1.5, "open_multiplier must be >= 1"),
        ("open_jitter", -0.1, 0.0, "open_jitter must be in [0, 1)"),
        ("open_jitter", 1.0, 0.99, "open_jitter must be in [0, 1)"),
        ("half_open_max_calls", 0, 1, "half_open_max_calls must be >= 1"),
        ("half_open_successes", 0, 1, "half_open_successes must be >= 1"),
        ("history", 0, 1, "history must be >= 1"),
        ("retry_hint_s", -0.001, 0.0, "retry_hint_s must not be negative"),
    ],
)
def test_each_setting_is_checked_at_its_boundary(
    option: str, bad: float, good: float, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        CircuitBreaker("db", **{option: bad})  # type: ignore[arg-type]
    assert str(caught.value) == message
    CircuitBreaker("db", **{option: good})  # type: ignore[arg-type]


def test_history_keeps_the_last_fifty_transitions_by_default() -> None:
    b = make()
    for _ in range(30):
        b.force_open()
        b.automatic()
    assert len(b.transitions) == 50
    assert b.transitions[-1].to_state is BreakerState.CLOSED
    short = make(history=1)
    short.force_open()
    short.automatic()
    assert [t.to_state for t in short.transitions] == [BreakerState.CLOSED]


def test_no_open_period_before_the_first_trip() -> None:
    b = make()
    assert b.open_period == 0.0
    assert b.snapshot()["open_period_s"] is None


def test_a_closed_permit_is_not_a_trial() -> None:
    assert make().acquire().trial is False


@pytest.mark.parametrize("state", ["open", "half_open", "forced_open"])
def test_a_refusal_names_the_breaker(state: str) -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=1)
    if state == "forced_open":
        b.force_open()
    else:
        b.acquire().failure(0.0, "down")
        if state == "half_open":
            b.probe_succeeded()
            b.acquire()
    with pytest.raises(BreakerOpen) as caught:
        b.acquire()
    assert caught.value.name == "db"
    assert caught.value.state.value == state
    assert str(caught.value).startswith(f"circuit breaker 'db' is {state}; retry after ")


@pytest.mark.parametrize("override", ["force_open", "disable"])
def test_an_override_clears_the_half_open_figures_at_once(override: str) -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=3, half_open_successes=3)
    open_then_half_open(b, clock)
    b.acquire().success(0.0)
    b.acquire()
    getattr(b, override)()
    half_open = b.snapshot()["half_open"]
    assert (half_open["in_flight"], half_open["successes"]) == (0, 0)


def test_trial_slots_are_counted_one_by_one() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1, half_open_max_calls=3, half_open_successes=5)
    open_then_half_open(b, clock)
    first, second, third = b.acquire(), b.acquire(), b.acquire()
    assert b.snapshot()["half_open"]["in_flight"] == 3
    first.success(0.0)
    assert b.snapshot()["half_open"]["in_flight"] == 2
    second.release()
    assert b.snapshot()["half_open"]["in_flight"] == 1
    third.success(0.0)
    assert b.snapshot()["half_open"]["in_flight"] == 0
    assert b.snapshot()["half_open"]["successes"] == 2


def test_a_failure_exactly_at_the_slow_limit_is_not_slow() -> None:
    b = make(failure_threshold=10, slow_call_s=0.5)
    b.acquire().failure(0.5, "x")
    assert b.window_counts() == {"calls": 1, "failures": 1, "slow": 0}
    b.acquire().failure(0.5001, "x")
    assert b.window_counts()["slow"] == 1


def test_every_transition_is_a_new_generation() -> None:
    clock = FakeClock()
    b = make(clock, failure_threshold=1)
    permits = []
    for _ in range(3):
        permits.append(b.acquire())
        b.force_open()
        b.automatic()
    # Each permit belongs to a generation that is over: none of them counts.
    for permit in permits:
        permit.failure(0.0, "late")
    assert b.state is BreakerState.CLOSED
    assert b.consecutive_failures == 0
