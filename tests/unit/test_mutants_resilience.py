"""Exact figures and messages of the resilience primitives other than the breaker: what
/v1/status shows of the probe, the queue and the loop lag, the errors' texts and defaults, and
the counters behind the metrics. The behavioural tests check what happens; these check that the
numbers an operator reads are the right ones."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from proxy.resilience._breaker import BreakerState, CircuitBreaker
from proxy.resilience._bulkhead import Bulkhead, BulkheadHooks, Overloaded
from proxy.resilience._clock import SYSTEM_CLOCK, FakeClock, SlidingWindow
from proxy.resilience._deadline import Deadline, DeadlineExceeded
from proxy.resilience._errors import ErrorKind, Rejected
from proxy.resilience._looplag import LoopLag
from proxy.resilience._probe import HealthProbe

WALL0 = 1_700_000_000.0


# -- health probe -----------------------------------------------------------------------------


def _open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    breaker.acquire().failure(0.0, "down")
    return breaker


def test_probe_defaults_and_validation() -> None:
    breaker = CircuitBreaker("db", clock=FakeClock())

    async def check(timeout: float) -> None:
        return None

    probe = HealthProbe(breaker, check)
    assert (probe.interval_s, probe.timeout_s) == (0.25, 0.5)
    HealthProbe(breaker, check, interval_s=0.0)  # zero is allowed: probe back to back
    with pytest.raises(ValueError, match=r"^interval_s must not be negative$"):
        HealthProbe(breaker, check, interval_s=-0.1)
    with pytest.raises(ValueError, match=r"^timeout_s must be positive$"):
        HealthProbe(breaker, check, timeout_s=0.0)
    assert probe.snapshot() == {
        "running": False,
        "interval_s": 0.25,
        "timeout_s": 0.5,
        "probes_total": 0,
        "probe_failures": 0,
        "last_error": None,
        "last_success_at": None,
    }


async def test_probe_once_figures_and_notifications() -> None:
    clock = FakeClock()
    breaker = _open_breaker(clock)
    seen: list[tuple[bool, float]] = []
    answers = [RuntimeError("refused"), None]

    async def check(timeout: float) -> None:
        assert timeout == 0.5
        clock.advance(0.125)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    own_clock = FakeClock(start=10.0, wall_start=WALL0 + 100)
    probe = HealthProbe(breaker, check, clock=clock, on_probe=lambda ok, d: seen.append((ok, d)))
    assert await probe.probe_once() is False
    assert (probe.probes_total, probe.probe_failures) == (1, 1)
    assert probe.last_error is not None and "refused" in probe.last_error
    assert breaker.state is BreakerState.OPEN
    assert await probe.probe_once() is True
    assert probe.last_error is None
    assert probe.last_success_at == WALL0 + 0.25
    assert breaker.state is BreakerState.HALF_OPEN
    assert seen == [(False, 0.125), (True, 0.125)]
    assert (probe.probes_total, probe.probe_failures) == (2, 1)
    # A probe reads its own clock when given one, else the breaker's.
    assert HealthProbe(breaker, check, clock=own_clock)._clock is own_clock
    assert HealthProbe(breaker, check)._clock is clock


async def test_trial_once_reports_to_the_breaker_with_the_duration() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db",
        failure_threshold=1,
        open_jitter=0.0,
        clock=clock,
        half_open_successes=2,
        slow_call_s=1.0,
    )
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()
    seen: list[tuple[bool, float]] = []
    durations = [0.25, 2.0]

    async def check(timeout: float) -> None:
        clock.advance(durations.pop(0))

    probe = HealthProbe(breaker, check, clock=clock, on_probe=lambda ok, d: seen.append((ok, d)))
    assert await probe.trial_once() is True
    assert probe.last_success_at == WALL0 + 0.25
    assert breaker.state is BreakerState.HALF_OPEN
    # A trial that answers, but slower than slow_call_s, reopens the breaker: the duration
    # reported is the real one.
    assert await probe.trial_once() is True
    assert breaker.state is BreakerState.OPEN
    assert seen == [(True, 0.25), (True, 2.0)]


async def test_a_failed_trial_reopens_with_the_probe_error() -> None:
    clock = FakeClock()
    breaker = _open_breaker(clock)
    breaker.probe_succeeded()
    seen: list[tuple[bool, float]] = []

    async def check(timeout: float) -> None:
        clock.advance(0.5)
        raise ConnectionRefusedError("nope")

    probe = HealthProbe(breaker, check, clock=clock, on_probe=lambda ok, d: seen.append((ok, d)))
    assert await probe.trial_once() is False
    assert breaker.state is BreakerState.OPEN
    assert breaker.transitions[-1].cause == f"trial call failed: probe failed: {probe.last_error}"
    assert (probe.probes_total, probe.probe_failures) == (1, 1)
    assert seen == [(False, 0.5)]


async def test_the_probe_task_is_named_after_the_breaker() -> None:
    breaker = CircuitBreaker("postgres", clock=FakeClock())

    async def check(timeout: float) -> None:
        return None

    probe = HealthProbe(breaker, check)
    probe.start()
    try:
        assert probe.running
        assert probe._task is not None
        assert probe._task.get_name() == "health-probe:postgres"
    finally:
        await probe.stop()
    assert not probe.running


# -- loop lag ---------------------------------------------------------------------------------


def test_loop_lag_snapshot_is_in_milliseconds() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, interval_s=0.01, window_s=0.05, clock=clock)
    lag.record(0.0123456)
    clock.advance(0.01)
    lag.record(0.2)
    clock.advance(0.01)
    lag.record(0.3)
    assert lag.snapshot() == {
        "threshold_ms": 100.0,
        "last_ms": 300.0,
        "max_ms": 300.0,
        "shedding": False,
        "episodes": 0,
    }
    lag2 = LoopLag(threshold_s=0.0004567, clock=clock)
    lag2.record(0.0001234567)
    assert lag2.snapshot()["threshold_ms"] == 0.457
    assert lag2.snapshot()["last_ms"] == 0.123
    assert lag2.snapshot()["max_ms"] == 0.123


def test_loop_lag_counts_episodes() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    for _ in range(3):
        lag.record(0.2)
        clock.advance(0.01)
    assert lag.snapshot()["shedding"] is True
    assert lag.snapshot()["episodes"] == 1


async def test_loop_lag_task() -> None:
    lag = LoopLag(threshold_s=10.0, interval_s=0.001)
    lag.start()
    try:
        assert lag._task is not None and lag._task.get_name() == "loop-lag"
        first = lag._task
        lag.start()  # already running: the same task
        assert lag._task is first
        for _ in range(200):
            await asyncio.sleep(0.002)
            if lag.last_s > 0 or lag.max_s > 0:
                break
        # The lag is measured against when the timer was due: small, never negative.
        assert 0.0 <= lag.last_s < 0.5
    finally:
        await lag.stop()
    assert first.cancelled()
    await lag.stop()  # idempotent


# -- bulkhead ---------------------------------------------------------------------------------


def test_bulkhead_validation() -> None:
    with pytest.raises(ValueError, match=r"^limit must be >= 1$"):
        Bulkhead(limit=0, max_queue=0)
    with pytest.raises(ValueError, match=r"^max_queue must be >= 0$"):
        Bulkhead(limit=1, max_queue=-1)
    assert Bulkhead(limit=1, max_queue=0).max_queue == 0


def test_overloaded_error() -> None:
    exc = Overloaded("busy", reason="queue-full")
    assert isinstance(exc, Rejected)
    assert (str(exc), exc.reason, exc.retry_after) == ("busy", "queue-full", 1.0)


async def test_bulkhead_figures() -> None:
    clock = FakeClock()
    waited: list[float] = []
    shed: list[str] = []
    bulkhead = Bulkhead(
        limit=1,
        max_queue=1,
        clock=clock,
        hooks=BulkheadHooks(waited=waited.append, shed=shed.append),
    )
    far = Deadline.after(60.0, clock=clock)
    assert bulkhead.snapshot() == {
        "limit": 1,
        "in_use": 0,
        "queued": 0,
        "max_queue": 1,
        "admitted_total": 0,
        "queued_total": 0,
        "shed_total": {"queue-full": 0, "queue-timeout": 0},
        "wait_seconds_total": 0.0,
        "max_wait_seconds": 0.0,
    }
    await bulkhead.acquire(far)
    queued = asyncio.ensure_future(bulkhead.acquire(far))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as full:
        await bulkhead.acquire(far)
    assert str(full.value) == (
        "all 1 database connections are busy and 1 requests are already waiting"
    )
    assert (full.value.reason, full.value.retry_after) == ("queue-full", 1.0)
    with pytest.raises(Overloaded):
        await bulkhead.acquire(far)
    clock.advance(0.0000015)
    bulkhead.release()
    await queued
    assert bulkhead.snapshot() == {
        "limit": 1,
        "in_use": 1,
        "queued": 0,
        "max_queue": 1,
        "admitted_total": 2,
        "queued_total": 1,
        "shed_total": {"queue-full": 2, "queue-timeout": 0},
        "wait_seconds_total": 0.000002,
        "max_wait_seconds": 0.000002,
    }
    assert waited == [0.0, 0.0000015]
    assert shed == ["queue-full", "queue-full"]
    assert bulkhead.wait_seconds_total == 0.0000015
    # A second wait adds to the total instead of replacing it.
    queued = asyncio.ensure_future(bulkhead.acquire(far))
    await asyncio.sleep(0)
    clock.advance(0.5)
    bulkhead.release()
    await queued
    assert bulkhead.wait_seconds_total == pytest.approx(0.5000015)
    assert bulkhead.max_wait_seen_s == 0.5
    assert bulkhead.admitted_total == 3


async def test_bulkhead_timeout_message_and_count() -> None:
    bulkhead = Bulkhead(limit=1, max_queue=4, max_wait_s=0.02)
    deadline = Deadline.after(60.0)
    await bulkhead.acquire(deadline)
    with pytest.raises(Overloaded) as late:
        await bulkhead.acquire(deadline)
    assert str(late.value) == "no database connection became free within 20 ms"
    assert late.value.reason == "queue-timeout"
    assert bulkhead.shed_total == {"queue-full": 0, "queue-timeout": 1}
    assert bulkhead.queued == 0
    bulkhead.release()
    assert bulkhead.in_use == 0


# -- deadline and clock -----------------------------------------------------------------------


def test_deadline_errors() -> None:
    exc = DeadlineExceeded()
    assert (str(exc), exc.during_call) == ("deadline exceeded", True)
    with pytest.raises(ValueError, match=r"^a deadline cannot be NaN$"):
        Deadline(math.nan)
    with pytest.raises(ValueError, match=r"^a deadline cannot be NaN seconds away$"):
        Deadline.after(math.nan)


def test_an_expired_deadline_says_by_how_much() -> None:
    clock = FakeClock()
    deadline = Deadline.after(1.0, clock=clock)
    clock.advance(1.25)
    with pytest.raises(DeadlineExceeded) as caught:
        deadline.raise_if_expired()
    assert str(caught.value) == "deadline passed 0.250s ago"
    assert caught.value.during_call is False


def test_sliding_window_counts_start_at_zero() -> None:
    clock = FakeClock()
    window = SlidingWindow(("a", "b"), window_s=1.0, buckets=2, clock=clock)
    window.add(1, 2)
    clock.advance(0.5)
    window.add(3, 0)
    clock.advance(0.6)
    assert window.as_dict() == {"a": 3, "b": 0}
    clock.advance(5.0)
    window.add(0, 1)
    assert window.as_dict() == {"a": 0, "b": 1}


def test_system_clock_repr() -> None:
    assert repr(SYSTEM_CLOCK) == "SystemClock()"


# -- second pass: boundaries and texts --------------------------------------------------------


def test_loop_lag_defaults_and_validation() -> None:
    lag = LoopLag(threshold_s=0.1)
    assert (lag.interval_s, lag.window_s) == (0.025, 0.25)
    assert (lag.last_s, lag.max_s, lag.behind, lag.behind_since, lag.episodes) == (
        0.0,
        0.0,
        False,
        None,
        0,
    )
    with pytest.raises(ValueError, match=r"^threshold_s must be positive$"):
        LoopLag(threshold_s=0.0)
    LoopLag(threshold_s=1e-9)


def test_loop_lag_standing_rules_at_their_boundaries() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    lag.record(0.2)
    assert not lag.behind  # one late timer is a spike
    clock.advance(0.01)
    lag.record(0.2)
    assert lag.behind  # two samples above the threshold: standing
    assert lag.behind_since == 0.01
    assert lag.episodes == 1
    clock.advance(0.01)
    lag.record(0.1)  # exactly at the threshold: not above it, so the lag has ended
    assert not lag.behind
    assert lag.behind_since is None
    clock.advance(0.01)
    lag.record(0.2)
    clock.advance(0.01)
    lag.record(0.2)
    # The sample at the threshold is still in the window: the minimum is not above it.
    assert not lag.behind
    clock.advance(0.05)
    lag.record(0.2)
    assert lag.behind
    assert lag.episodes == 2


def test_loop_lag_a_sample_exactly_a_window_old_still_counts() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    lag.record(0.05)
    clock.advance(0.05)
    lag.record(0.2)
    assert not lag.behind  # the low sample, exactly window_s old, is still in the window
    clock.advance(0.001)
    lag.record(0.2)
    assert lag.behind


def test_loop_lag_stays_behind_while_the_lag_is_above_the_threshold() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    for _ in range(3):
        lag.record(0.3)
        clock.advance(0.01)
    assert lag.behind
    lag.record(0.05)  # below: the standing lag is over
    assert not lag.behind
    clock.advance(0.01)
    # Not standing (the low sample is in the window) and the last sample is above the
    # threshold: still not behind, and no episode starts.
    lag.record(0.3)
    assert not lag.behind
    assert lag.episodes == 1


def test_retry_budget_defaults_and_validation() -> None:
    from proxy.resilience._budget import RetryBudget

    budget = RetryBudget()
    assert (budget.ratio, budget.min_per_s, budget.window_s) == (0.2, 5.0, 10.0)
    with pytest.raises(ValueError, match=r"^ratio and min_per_s must not be negative$"):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError, match=r"^ratio and min_per_s must not be negative$"):
        RetryBudget(min_per_s=-0.1)
    with pytest.raises(ValueError, match=r"^bucket_s must be positive, got 0\.0$"):
        RetryBudget(bucket_s=0.0)
    assert budget.snapshot()["requests"] == 0
    assert set(budget.snapshot()) >= {"requests", "retries"}


def test_retry_budget_buckets_follow_the_bucket_size() -> None:
    from proxy.resilience._budget import RetryBudget

    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10.0, bucket_s=1.0, clock=clock)
    assert budget.try_spend()  # 0.1/s over 10 s: one retry in the window
    assert not budget.try_spend()
    clock.advance(9.5)
    assert not budget.try_spend()  # still inside the window
    clock.advance(1.0)
    assert budget.try_spend()  # its bucket has left the window
    assert budget.exhausted_count == 2


def test_retry_budget_window_shorter_than_a_bucket() -> None:
    from proxy.resilience._budget import RetryBudget

    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=2.0, window_s=0.5, bucket_s=1.0, clock=clock)
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.advance(0.6)
    assert budget.try_spend()
    requests_and_retries = budget.snapshot()
    assert requests_and_retries["retries"] == 1


def test_sliding_window_validation_texts() -> None:
    with pytest.raises(ValueError, match=r"^a window needs at least one counter$"):
        SlidingWindow((), window_s=1.0)
    with pytest.raises(ValueError, match=r"^window_s must be a positive finite number, got 0\.0$"):
        SlidingWindow(("a",), window_s=0.0)
    with pytest.raises(ValueError, match=r"^buckets must be >= 1, got 0$"):
        SlidingWindow(("a",), window_s=1.0, buckets=0)
    SlidingWindow(("a",), window_s=1.0, buckets=1)
    window = SlidingWindow(("a", "b"), window_s=1.0)
    with pytest.raises(ValueError, match=r"^expected 2 values, got 1$"):
        window.add(1)
    with pytest.raises(ValueError, match=r"^a clock cannot move by -1\.0 seconds$"):
        FakeClock().advance(-1.0)


def test_sliding_window_default_buckets_and_exact_expiry() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=1.0, clock=clock)
    window.add(1)
    clock.advance(0.95)
    window.add(1)
    assert window.as_dict() == {"n": 2}
    clock.advance(0.1)  # 1.05 s: the first bucket (0.0 to 0.1) has left the window
    assert window.as_dict() == {"n": 1}
    clock.advance(0.9)  # 1.95 s: the second one (0.9 to 1.0) is gone too
    assert window.as_dict() == {"n": 0}


def test_sliding_window_over_a_whole_window_of_idle_time() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=1.0, buckets=4, clock=clock)
    window.add(5)
    clock.advance(0.25)
    window.add(1)
    clock.advance(1.0)  # exactly as many slots as the window holds went by
    assert window.as_dict() == {"n": 0}
    window.add(2)
    assert window.as_dict() == {"n": 2}


def test_describe_bounds_and_sqlstate() -> None:
    from proxy.resilience._errors import describe as generic
    from proxy.store.pg_errors import describe

    class WithState(Exception):
        sqlstate = "08006"

    class EmptyState(Exception):
        sqlstate = ""

    assert describe(WithState("lost")) == "WithState [08006]: lost"
    assert generic(WithState("lost")) == "WithState: lost"
    assert generic(WithState("lost"), code="X1") == "WithState [X1]: lost"
    assert len(generic(RuntimeError("x" * 500))) == 200
    assert describe(EmptyState("x")) == "EmptyState: x"
    assert describe(RuntimeError()) == "RuntimeError"
    assert describe(RuntimeError("a \n  b")) == "RuntimeError: a b"
    exact = RuntimeError("x" * (200 - len("RuntimeError: ")))
    assert describe(exact) == str("RuntimeError: " + "x" * 186)
    longer = describe(RuntimeError("x" * 500))
    assert len(longer) == 200 and longer.endswith("...")
    assert describe(RuntimeError("abcdef"), limit=2) == "..."


def test_rejected_defaults_to_one_second() -> None:
    assert Rejected("x").retry_after == 1.0
    assert Rejected("x", retry_after=-3.0).retry_after == 0.0


async def test_bulkhead_refusal_hint_and_counts() -> None:
    bulkhead = Bulkhead(limit=1, max_queue=0)
    deadline = Deadline.after(60.0)
    await bulkhead.acquire(deadline)
    with pytest.raises(Overloaded) as caught:
        await bulkhead.acquire(deadline)
    assert caught.value.retry_after == 1.0
    assert Overloaded("x", reason="r", retry_after=3.0).retry_after == 3.0
    assert bulkhead.admitted_total == 1


async def test_bulkhead_counts_every_admission_and_every_queued_caller() -> None:
    bulkhead = Bulkhead(limit=2, max_queue=5)
    deadline = Deadline.after(60.0)
    await bulkhead.acquire(deadline)
    await bulkhead.acquire(deadline)
    assert bulkhead.admitted_total == 2
    waiting = [asyncio.ensure_future(bulkhead.acquire(deadline)) for _ in range(2)]
    await asyncio.sleep(0)
    assert bulkhead.queued_total == 2
    bulkhead.release()
    bulkhead.release()
    await asyncio.gather(*waiting)
    assert bulkhead.admitted_total == 4
    assert bulkhead.queued == 0


async def test_bulkhead_timeout_message_in_milliseconds() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(limit=1, max_queue=1, max_wait_s=0.01, clock=clock)
    await bulkhead.acquire(Deadline.after(60.0))
    with pytest.raises(Overloaded) as caught:
        await bulkhead.acquire(Deadline.after(60.0))
    assert str(caught.value) == "no database connection became free within 10 ms"
    long = Bulkhead(limit=1, max_queue=1, max_wait_s=0.0125)
    await long.acquire(Deadline.after(60.0))
    with pytest.raises(Overloaded) as later:
        await long.acquire(Deadline.after(60.0))
    assert str(later.value) == "no database connection became free within 12 ms"


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    bulkhead = Bulkhead(limit=1, max_queue=2)
    deadline = Deadline.after(60.0)
    await bulkhead.acquire(deadline)
    first = asyncio.ensure_future(bulkhead.acquire(deadline))
    second = asyncio.ensure_future(bulkhead.acquire(deadline))
    await asyncio.sleep(0)
    bulkhead.release()  # handed to `first`...
    first.cancel()  # ...which leaves before it could take it
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1.0)  # the slot went on to `second`
    assert bulkhead.in_use == 1
    assert bulkhead.queued == 0


async def test_probe_trial_failure_figures() -> None:
    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()
    errors = [OSError("first"), OSError("second")]

    async def check(timeout: float) -> None:
        clock.advance(0.25)
        raise errors.pop(0)

    seen: list[tuple[bool, float]] = []
    probe = HealthProbe(
        breaker, check, clock=clock, timeout_s=5.0, on_probe=lambda ok, d: seen.append((ok, d))
    )
    assert await probe.trial_once() is False
    assert probe.last_error == "OSError: first"
    breaker.probe_succeeded()
    assert await probe.trial_once() is False
    assert probe.probe_failures == 2
    assert probe.last_error == "OSError: second"
    assert seen == [(False, 0.25), (False, 0.25)]
    assert "probe failed: OSError: second" in breaker.transitions[-1].cause


async def test_probe_once_failure_duration() -> None:
    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    breaker.acquire().failure(0.0, "down")

    async def check(timeout: float) -> None:
        clock.advance(0.5)
        raise OSError("no")

    seen: list[tuple[bool, float]] = []
    probe = HealthProbe(breaker, check, clock=clock, on_probe=lambda ok, d: seen.append((ok, d)))
    assert await probe.probe_once() is False
    assert seen == [(False, 0.5)]


async def test_probe_check_is_bounded_by_its_timeout() -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0)
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()

    async def hang(timeout: float) -> None:
        await asyncio.sleep(10)

    probe = HealthProbe(breaker, hang, timeout_s=0.01)
    assert await asyncio.wait_for(probe.trial_once(), 2.0) is False
    breaker.probe_succeeded()  # open again after the failed trial: probe in open state too
    assert await asyncio.wait_for(probe.probe_once(), 2.0) is False


async def test_stopping_the_probe_from_a_cancelled_task_propagates() -> None:
    breaker = CircuitBreaker("db", clock=FakeClock())

    async def check(timeout: float) -> None:
        return None

    probe = HealthProbe(breaker, check)
    probe.start()
    await asyncio.sleep(0)

    async def stopper() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await probe.stop()

    task = asyncio.ensure_future(stopper())
    with pytest.raises(asyncio.CancelledError):
        await task
    await probe.stop()


def test_sliding_window_has_ten_buckets_by_default() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=1.0, clock=clock)
    clock.advance(0.95)
    window.add(1)  # in the bucket 0.9 to 1.0
    clock.advance(0.945)  # 1.895: that bucket is still within the last ten
    assert window.as_dict() == {"n": 1}
    clock.advance(0.01)  # 1.905: ten buckets later it has left
    assert window.as_dict() == {"n": 0}


def test_loop_lag_a_high_sample_exactly_a_window_old_still_counts() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    lag.record(0.2)
    clock.advance(0.05)
    lag.record(0.2)
    assert lag.behind  # both samples are in the window: a standing lag


def test_loop_lag_shedding_is_a_boolean_again_after_recovery() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    for _ in range(3):
        lag.record(0.3)
        clock.advance(0.01)
    lag.record(0.01)
    assert lag.snapshot()["shedding"] is False
    fresh = LoopLag(threshold_s=0.1, clock=clock)
    fresh.record(0.01)  # never behind: recording a low sample changes nothing
    assert fresh.behind is False and fresh.behind_since is None and fresh.episodes == 0


def test_loop_lag_not_standing_while_not_behind_changes_nothing() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    lag.record(0.3)  # one sample, above: not standing, not behind
    assert (lag.behind, lag.behind_since) == (False, None)


def test_classify_reads_only_a_text_sqlstate() -> None:
    from proxy.resilience._errors import classify

    class OddState(OSError):
        sqlstate = 8006

    assert classify(OddState("x")) is ErrorKind.INFRASTRUCTURE


def test_a_failed_trial_leaves_no_trial_in_flight() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()
    breaker.acquire().failure(0.0, "still down")
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["half_open"]["in_flight"] == 0


def test_after_a_long_idle_the_window_rotates_from_clean_slots() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=1.0, buckets=4, clock=clock)
    window.add(5)
    clock.advance(2.0)  # longer than the window: everything is forgotten at once
    window.add(1)
    clock.advance(0.25)  # one slot on: the slot it rotates into must hold nothing
    assert window.as_dict() == {"n": 1}
    clock.advance(0.25)
    assert window.as_dict() == {"n": 1}


def test_the_breaker_window_has_ten_buckets_by_default() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", window_s=1.0, failure_threshold=100, clock=clock)
    clock.advance(0.95)
    breaker.acquire().failure(0.0, "x")
    clock.advance(0.945)
    assert breaker.window_counts()["calls"] == 1
    clock.advance(0.01)
    assert breaker.window_counts()["calls"] == 0


def test_retry_budget_buckets_are_the_window_over_the_bucket_size() -> None:
    from proxy.resilience._budget import RetryBudget

    clock = FakeClock()
    # 2 s in buckets of 0.5 s: four of them. A retry taken at 0.45 s (bucket 0 to 0.5 s) is
    # forgotten at 2.0 s, not before.
    budget = RetryBudget(ratio=0.0, min_per_s=0.5, window_s=2.0, bucket_s=0.5, clock=clock)
    clock.advance(0.45)
    assert budget.try_spend()
    clock.advance(1.5)  # 1.95 s
    assert not budget.try_spend()
    clock.advance(0.05)  # 2.0 s
    assert budget.try_spend()
    # That one was taken at 2.0 s (bucket 2.0 to 2.5 s): still counted at 2.6 s.
    clock.advance(0.6)
    assert not budget.try_spend()
    # A retry taken at 0.6 s (bucket 0.5 to 1.0 s) is still counted at 2.1 s.
    other_clock = FakeClock()
    other = RetryBudget(ratio=0.0, min_per_s=0.5, window_s=2.0, bucket_s=0.5, clock=other_clock)
    other_clock.advance(0.6)
    assert other.try_spend()
    other_clock.advance(1.5)
    assert not other.try_spend()


def test_retry_budget_default_window_has_ten_one_second_buckets() -> None:
    from proxy.resilience._budget import RetryBudget

    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, clock=clock)  # one retry per 10 s
    clock.advance(9.5)
    assert budget.try_spend()
    clock.advance(9.45)  # 18.95 s: its bucket (9 s to 10 s) is still in the window
    assert not budget.try_spend()
    clock.advance(0.1)  # 19.05 s: gone
    assert budget.try_spend()


def test_retry_budget_window_shorter_than_its_bucket_is_one_bucket() -> None:
    from proxy.resilience._budget import RetryBudget

    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=2.0, window_s=0.5, bucket_s=1.0, clock=clock)
    clock.advance(0.3)
    assert budget.try_spend()  # in the only bucket, 0 s to 0.5 s
    clock.advance(0.25)  # 0.55 s: the next bucket, so the retry is forgotten
    assert budget.try_spend()


def test_loop_lag_a_lone_late_sample_after_a_pause_keeps_it_behind() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock)
    for _ in range(3):
        lag.record(0.3)
        clock.advance(0.01)
    assert lag.behind
    clock.advance(1.0)  # the window empties
    lag.record(0.3)  # alone in the window, so not standing, but still above the threshold
    assert lag.behind


async def test_loop_lag_measures_from_when_the_timer_was_due() -> None:
    lag = LoopLag(threshold_s=10.0, interval_s=0.1)
    lag.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if lag.max_s > 0 or lag.last_s > 0:
                break
        await asyncio.sleep(0.15)
    finally:
        await lag.stop()
    # Measured from the start of the sleep instead, the lag would include the interval itself.
    assert lag.max_s < 0.1


async def test_a_waiter_cancelled_before_its_turn_frees_no_slot() -> None:
    bulkhead = Bulkhead(limit=1, max_queue=2)
    deadline = Deadline.after(60.0)
    await bulkhead.acquire(deadline)
    waiter = asyncio.ensure_future(bulkhead.acquire(deadline))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.in_use == 1  # still held by the first caller, and by nobody else
    assert bulkhead.queued == 0
    # The one slot is still taken: a caller with no time to wait is refused.
    with pytest.raises(Overloaded):
        await bulkhead.acquire(Deadline.after(0.0))


def test_loop_lag_gives_every_sample_to_its_hook_and_the_metrics_count_them() -> None:
    from prometheus_client import generate_latest

    from proxy.observability.metrics import Metrics

    metrics = Metrics()
    seen: list[tuple[float, float | None]] = []

    def hook(lag_s: float, waited_s: float | None) -> None:
        seen.append((lag_s, waited_s))
        metrics.observe_loop_lag(lag_s, waited_s)

    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.05, clock=clock, on_sample=hook)
    samples = [(0.0002, 0.0), (0.03, 0.001), (0.0007, None), (0.2, 0.15), (0.02, 0.01), (0.0, 0.0)]
    for sample, waited in samples:
        lag.record(sample, waited)
        clock.advance(0.025)
    assert seen == samples
    text = generate_latest(metrics.registry).decode()

    def bucket(cause: str, le: str) -> str:
        return f'registry_proxy_loop_lag_sample_seconds_bucket{{cause="{cause}",le="{le}"}}'

    # Held up by its own work: less than half the lag spent waiting for a core. A timer on
    # time is never said to have waited for one.
    assert f"{bucket('work', '0.001')} 2.0" in text
    assert f"{bucket('work', '0.05')} 3.0" in text
    # Waiting for a core for at least half of it (exactly half included).
    assert f"{bucket('cpu', '0.025')} 1.0" in text
    assert f"{bucket('cpu', '0.25')} 2.0" in text
    assert f"{bucket('unknown', '0.001')} 1.0" in text
    assert 'registry_proxy_loop_lag_sample_seconds_count{cause="cpu"} 2.0' in text


async def _first_waits(waited: Callable[[], float | None] | None, n: int) -> list[float | None]:
    """The waits for a core the sampler gives its first `n` samples, `waited` its source."""
    seen: list[float | None] = []
    done = asyncio.Event()

    def hook(_lag_s: float, waited_s: float | None) -> None:
        seen.append(waited_s)
        if len(seen) >= n:
            done.set()

    lag = LoopLag(threshold_s=10.0, interval_s=0.001, on_sample=hook, waited=waited)
    lag.start()
    try:
        await asyncio.wait_for(done.wait(), 5.0)
    finally:
        await lag.stop()
    return seen[:n]


async def test_loop_lag_gives_each_sample_the_wait_for_a_core_during_its_interval() -> None:
    waits = iter([1.0, 1.25, 1.5, 2.5, 2.5, 2.5])
    assert await _first_waits(lambda: next(waits), 4) == [0.25, 0.25, 1.0, 0.0]


async def test_loop_lag_without_a_wait_to_read_says_none() -> None:
    assert await _first_waits(None, 1) == [None]


async def test_loop_lag_has_no_wait_for_an_interval_unread_at_either_end() -> None:
    # The source gives None when the kernel's figures cannot be read: an interval needs a
    # reading at both of its ends.
    waits = iter([None, 1.0, None, 2.0, 2.5, 2.5, 2.5])
    assert await _first_waits(lambda: next(waits), 4) == [None, None, None, 0.5]
