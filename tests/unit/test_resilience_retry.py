"""retry.call: schedule, stop rules, classification, breaker and budget interplay, hooks."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.resilience import _retry as retry
from proxy.resilience._breaker import BreakerOpen, BreakerState, CircuitBreaker
from proxy.resilience._budget import RetryBudget
from proxy.resilience._clock import FakeClock
from proxy.resilience._deadline import Deadline, DeadlineExceeded
from proxy.resilience._retry import RetryHooks, backoff_ceiling
from proxy.store import pg_errors

# The retry loop takes the dependency's error rules from its caller; these tests speak of
# PostgreSQL errors, so they pass PostgreSQL's rules as the sidecar does.
call = functools.partial(retry.call, classify=pg_errors.classify, describe=pg_errors.describe)


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


class TopRng(random.Random):
    """Always draws the top of the range, to make deadline arithmetic exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Recorder:
    retries: list[tuple[int, str, float]] = field(default_factory=list)
    calls: list[tuple[str, float]] = field(default_factory=list)
    exhausted: int = 0

    def hooks(self) -> RetryHooks:
        return RetryHooks(
            on_retry=lambda n, exc, delay: self.retries.append((n, type(exc).__name__, delay)),
            on_budget_exhausted=self.bump,
            on_call=lambda outcome, duration: self.calls.append((outcome, duration)),
        )

    def bump(self) -> None:
        self.exhausted += 1


class Script:
    """A fake database call: raises or returns the scripted outcomes in order."""

    def __init__(self, clock: FakeClock, *outcomes: BaseException | str, took: float = 0.0):
        self.clock = clock
        self.outcomes = list(outcomes)
        self.took = took
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        self.clock.advance(self.took)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture(autouse=True)
def _not_testing() -> Iterator[None]:
    retry.set_testing(False)
    yield
    retry.set_testing(False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker_for(clock: FakeClock, **options: Any) -> CircuitBreaker:
    options.setdefault("failure_threshold", 100)
    return CircuitBreaker("db", open_jitter=0.0, clock=clock, **options)


async def test_success_on_first_attempt(clock: FakeClock) -> None:
    rec = Recorder()
    fn = Script(clock, "row", took=0.25)
    breaker = breaker_for(clock)
    result = await call(
        fn,
        breaker=breaker,
        budget=None,
        deadline=Deadline.after(2.0, clock=clock),
        sleep=clock.sleep,
        hooks=rec.hooks(),
    )
    assert result == "row"
    assert fn.timeouts == [2.0]
    assert rec.calls == [("success", 0.25)]
    assert clock.sleeps == []
    assert breaker.window_counts() == {"calls": 1, "failures": 0, "slow": 0}


async def test_full_jitter_schedule(clock: FakeClock) -> None:
    rec = Recorder()
    fn = Script(clock, ConnectionRefusedError(), ConnectionResetError(), "ok")
    result = await call(
        fn,
        breaker=breaker_for(clock),
        budget=None,
        deadline=Deadline.after(10.0, clock=clock),
        attempts=3,
        base_s=0.02,
        max_s=0.5,
        rng=random.Random(42),
        sleep=clock.sleep,
        hooks=rec.hooks(),
    )
    assert result == "ok"
    expected_rng = random.Random(42)
    expected = [expected_rng.uniform(0, 0.02), expected_rng.uniform(0, 0.04)]
    assert clock.sleeps == expected
    assert rec.retries == [
        (1, "ConnectionRefusedError", expected[0]),
        (2, "ConnectionResetError", expected[1]),
    ]
    # Each attempt gets what remains of the deadline after the previous sleeps.
    assert fn.timeouts == [10.0, 10.0 - expected[0], 10.0 - expected[0] - expected[1]]
    assert [outcome for outcome, _ in rec.calls] == ["infrastructure", "infrastructure", "success"]


async def test_backoff_ceiling_doubles_up_to_max(clock: FakeClock) -> None:
    assert [backoff_ceiling(n, base_s=0.1, max_s=0.35) for n in range(1, 6)] == [
        0.1,
        0.2,
        0.35,
        0.35,
        0.35,
    ]
    assert backoff_ceiling(10_000, base_s=0.1, max_s=0.5) == 0.5
    fn = Script(clock, OSError("down"))
    with pytest.raises(OSError, match="down"):
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=5,
            base_s=0.1,
            max_s=0.35,
            rng=TopRng(),
            sleep=clock.sleep,
        )
    assert clock.sleeps == [0.1, 0.2, 0.35, 0.35]
    assert len(fn.timeouts) == 5


async def test_gives_up_after_attempts_with_the_last_error(clock: FakeClock) -> None:
    errors = [ConnectionRefusedError("1"), ConnectionRefusedError("2"), ConnectionRefusedError("3")]
    fn = Script(clock, *errors)
    with pytest.raises(ConnectionRefusedError) as info:
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=3,
            sleep=clock.sleep,
        )
    assert info.value is errors[2]
    assert len(fn.timeouts) == 3
    assert len(clock.sleeps) == 2


async def test_stops_when_the_next_sleep_would_pass_the_deadline(clock: FakeClock) -> None:
    # Each call takes 0.25 s; sleeps are the ceiling (0.125, then 0.25). Deadline 0.75 s:
    # t = 0.25 fail, 0.5 left > 0.125: sleep; t = 0.625 fail, 0.125 left <= 0.25: stop.
    fn = Script(clock, OSError("slow"), took=0.25)
    with pytest.raises(OSError, match="slow"):
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(0.75, clock=clock),
            attempts=10,
            base_s=0.125,
            max_s=1.0,
            rng=TopRng(),
            sleep=clock.sleep,
        )
    assert clock.sleeps == [0.125]
    assert fn.timeouts == [0.75, 0.375]


async def test_expired_deadline_sends_nothing(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    fn = Script(clock, "never")
    deadline = Deadline.after(1.0, clock=clock)
    clock.advance(1.0)
    with pytest.raises(DeadlineExceeded) as info:
        await call(fn, breaker=breaker, budget=None, deadline=deadline, sleep=clock.sleep)
    assert info.value.during_call is False
    assert fn.timeouts == []
    assert breaker.window_counts()["calls"] == 0


async def test_running_out_of_time_is_a_counted_infrastructure_failure(clock: FakeClock) -> None:
    rec = Recorder()
    breaker = breaker_for(clock)
    seen: list[float] = []

    async def hang(timeout: float) -> None:
        seen.append(timeout)
        clock.advance(0.01)  # the fake time the real 10 ms timeout stands for
        await asyncio.Event().wait()

    with pytest.raises(DeadlineExceeded) as info:
        await call(
            hang,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(0.01, clock=clock),
            attempts=3,
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    assert info.value.during_call is True
    assert isinstance(info.value.__cause__, TimeoutError)
    assert seen == [0.01]
    assert breaker.consecutive_failures == 1
    assert rec.calls == [("infrastructure", 0.01)]
    assert clock.sleeps == []


async def test_own_timeout_with_time_left_is_retried(clock: FakeClock) -> None:
    fn = Script(clock, TimeoutError("driver timeout"), "ok")
    result = await call(
        fn,
        breaker=breaker_for(clock),
        budget=None,
        deadline=Deadline.after(5.0, clock=clock),
        sleep=clock.sleep,
    )
    assert result == "ok"
    assert len(fn.timeouts) == 2


async def test_permanent_errors_are_neither_retried_nor_counted(clock: FakeClock) -> None:
    rec = Recorder()
    breaker = breaker_for(clock)
    error = PgError("23505")
    fn = Script(clock, error)
    with pytest.raises(PgError) as info:
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    assert info.value is error
    assert len(fn.timeouts) == 1
    assert breaker.window_counts() == {"calls": 0, "failures": 0, "slow": 0}
    assert rec.calls == [("permanent", 0.0)]
    assert rec.retries == []


async def test_transient_errors_are_retried_but_not_counted(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    fn = Script(clock, PgError("40001"), PgError("40P01"), "ok")
    result = await call(
        fn,
        breaker=breaker,
        budget=None,
        deadline=Deadline.after(5.0, clock=clock),
        sleep=clock.sleep,
    )
    assert result == "ok"
    assert breaker.consecutive_failures == 0
    assert breaker.window_counts() == {"calls": 1, "failures": 0, "slow": 0}


async def test_no_retry_once_the_breaker_opens(clock: FakeClock) -> None:
    breaker = breaker_for(clock, failure_threshold=2)
    errors = [ConnectionResetError("a"), ConnectionResetError("b")]
    fn = Script(clock, *errors)
    with pytest.raises(ConnectionResetError) as info:
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            attempts=5,
            sleep=clock.sleep,
        )
    assert info.value is errors[1]  # the failure that tripped it, not BreakerOpen
    assert breaker.state is BreakerState.OPEN
    assert len(fn.timeouts) == 2
    assert len(clock.sleeps) == 1


async def test_breaker_open_propagates_at_once(clock: FakeClock) -> None:
    rec = Recorder()
    breaker = breaker_for(clock)
    breaker.force_open("ops")
    fn = Script(clock, "never")
    with pytest.raises(BreakerOpen):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    assert fn.timeouts == []
    assert rec.calls == [("rejected", 0.0)]


async def test_breaker_opened_by_others_during_the_backoff(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    fn = Script(clock, OSError("down"), "ok")

    async def sleep_while_others_trip_it(seconds: float) -> None:
        breaker.force_open("others saw the outage")
        await clock.sleep(seconds)

    with pytest.raises(BreakerOpen):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            sleep=sleep_while_others_trip_it,
        )
    assert len(fn.timeouts) == 1


async def test_budget_exhaustion_stops_retries_and_fires_the_hook(clock: FakeClock) -> None:
    rec = Recorder()
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10.0, clock=clock)  # one retry
    breaker = breaker_for(clock)
    error = ConnectionRefusedError("down")
    fn = Script(clock, error)
    with pytest.raises(ConnectionRefusedError):
        await call(
            fn,
            breaker=breaker,
            budget=budget,
            deadline=Deadline.after(5.0, clock=clock),
            attempts=5,
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    assert len(fn.timeouts) == 2
    assert rec.exhausted == 1
    assert budget.snapshot()["requests"] == 1  # once per call, not per attempt
    assert budget.snapshot()["retries"] == 1
    assert budget.exhausted_count == 1

    with pytest.raises(ConnectionRefusedError):
        await call(
            fn,
            breaker=breaker,
            budget=budget,
            deadline=Deadline.after(5.0, clock=clock),
            attempts=5,
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    assert len(fn.timeouts) == 3  # no retry left at all
    assert rec.exhausted == 2


async def test_budget_is_not_spent_when_no_retry_would_happen(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10.0, clock=clock)
    fn = Script(clock, OSError("down"))
    with pytest.raises(OSError, match="down"):
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=budget,
            deadline=Deadline.after(5.0, clock=clock),
            attempts=1,
            sleep=clock.sleep,
        )
    assert budget.snapshot()["retries"] == 0


async def test_hook_exceptions_are_ignored(clock: FakeClock) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("metrics bug")

    hooks = RetryHooks(on_retry=broken, on_budget_exhausted=broken, on_call=broken)
    fn = Script(clock, OSError("down"), "ok")
    result = await call(
        fn,
        breaker=breaker_for(clock),
        budget=None,
        deadline=Deadline.after(5.0, clock=clock),
        sleep=clock.sleep,
        hooks=hooks,
    )
    assert result == "ok"


async def test_set_testing_zeroes_backoff_and_caps_attempts(clock: FakeClock) -> None:
    retry.set_testing(True)
    assert retry.is_testing()
    fn = Script(clock, OSError("a"), OSError("b"), "ok")
    assert (
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            base_s=1.0,
            sleep=clock.sleep,
        )
        == "ok"
    )
    assert clock.sleeps == [0.0, 0.0]

    retry.set_testing(True, attempts=1)
    fn = Script(clock, OSError("a"), "ok")
    with pytest.raises(OSError, match="a"):
        await call(
            fn,
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(5.0, clock=clock),
            sleep=clock.sleep,
        )
    assert len(fn.timeouts) == 1
    retry.set_testing(False)
    assert not retry.is_testing()
    with pytest.raises(ValueError):
        retry.set_testing(True, attempts=0)


async def test_cancellation_releases_the_permit(clock: FakeClock) -> None:
    breaker = breaker_for(clock, failure_threshold=1, half_open_max_calls=1)
    breaker.acquire().failure(0.0, "down")
    clock.advance(breaker.open_period)
    started = asyncio.Event()
    rec = Recorder()

    async def hang(timeout: float) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        call(
            hang,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(60.0, clock=clock),
            sleep=clock.sleep,
            hooks=rec.hooks(),
        )
    )
    await started.wait()
    assert breaker.state is BreakerState.HALF_OPEN
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.calls == [("cancelled", 0.0)]
    # The single trial slot is free again and nothing was counted.
    assert breaker.acquire().trial
    assert breaker.state is BreakerState.HALF_OPEN


async def test_rejects_zero_attempts(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        await call(
            Script(clock, "x"),
            breaker=breaker_for(clock),
            budget=None,
            deadline=Deadline.after(1.0, clock=clock),
            attempts=0,
        )
