"""retry.call details the schedule tests leave loose: its defaults, the failure it reports to the
breaker (duration and cause), the fast path's refusal to retry what it must not, the message of a
call that ran out of time, and the test switch."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator

import pytest

from proxy.resilience import _retry as retry
from proxy.resilience._breaker import BreakerState, CircuitBreaker
from proxy.resilience._clock import FakeClock
from proxy.resilience._deadline import Deadline, DeadlineExceeded
from proxy.resilience._errors import ErrorKind
from proxy.resilience._retry import RetryHooks, call


@pytest.fixture(autouse=True)
def _not_testing() -> Iterator[None]:
    retry.set_testing(False)
    yield
    retry.set_testing(False)


class Top(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def failing(clock: FakeClock, exc: BaseException, took: float = 0.0, then: str | None = None):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    async def fn(timeout: float) -> str:
        calls.append(timeout)
        clock.advance(took)
        if then is not None and len(calls) > 1:
            return then
        raise exc

    return fn, calls


async def test_defaults_are_three_attempts_from_20ms_up_to_half_a_second() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(100.0, clock=clock),
            rng=Top(),
            sleep=clock.sleep,
        )
    assert len(calls) == 3
    assert clock.sleeps == [0.02, 0.04]
    long = CircuitBreaker("db", failure_threshold=100, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        await call(
            fn,
            breaker=long,
            budget=None,
            deadline=Deadline.after(100.0, clock=clock),
            attempts=8,
            rng=Top(),
            sleep=clock.sleep,
        )
    assert clock.sleeps[-1] == 0.5


async def test_attempts_must_be_positive() -> None:
    breaker = CircuitBreaker("db", clock=FakeClock())

    async def fn(timeout: float) -> str:
        return "x"

    with pytest.raises(ValueError) as caught:
        await call(fn, breaker=breaker, budget=None, deadline=Deadline.after(1.0), attempts=0)
    assert str(caught.value) == "attempts must be >= 1"
    with pytest.raises(ValueError) as again:
        retry.set_testing(True, attempts=0)
    assert str(again.value) == "attempts must be >= 1"


def test_set_testing_defaults_to_on_and_off_clears_the_cap() -> None:
    retry.set_testing()
    assert retry.is_testing()
    retry.set_testing(True, attempts=2)
    assert retry._testing.attempts == 2
    retry.set_testing(False, attempts=2)
    assert not retry.is_testing()
    assert retry._testing.attempts is None


async def test_the_breaker_hears_the_duration_and_the_cause() -> None:
    clock = FakeClock(start=50.0)
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    seen: list[tuple[str, float]] = []
    fn, _ = failing(clock, ConnectionRefusedError("refused here"), took=0.25)
    with pytest.raises(ConnectionRefusedError):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=1,
            sleep=clock.sleep,
            hooks=RetryHooks(on_call=lambda outcome, d: seen.append((outcome, d))),
        )
    assert breaker.state is BreakerState.OPEN
    assert breaker.transitions[-1].cause == (
        "1 consecutive failures (last: ConnectionRefusedError: refused here)"
    )
    assert seen == [("infrastructure", 0.25)]


async def test_a_slow_failure_counts_as_slow_with_the_callers_clock() -> None:
    breaker_clock = FakeClock()
    timer = FakeClock(start=1000.0)
    breaker = CircuitBreaker("db", failure_threshold=100, slow_call_s=1.0, clock=breaker_clock)

    async def fn(timeout: float) -> str:
        timer.advance(2.0)
        raise ConnectionResetError("slow and broken")

    with pytest.raises(ConnectionResetError):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(10.0, clock=breaker_clock),
            attempts=1,
            clock=timer,
        )
    assert breaker.window_counts() == {"calls": 1, "failures": 1, "slow": 1}

    async def ok(timeout: float) -> str:
        timer.advance(0.5)
        return "ok"

    seen: list[float] = []
    await call(
        ok,
        breaker=breaker,
        budget=None,
        deadline=Deadline.after(10.0, clock=breaker_clock),
        clock=timer,
        hooks=RetryHooks(on_call=lambda outcome, d: seen.append(d)),
    )
    assert seen == [0.5]


@pytest.mark.parametrize(
    "exc", [ValueError("a bug"), PermissionError("denied")], ids=["permanent", "os"]
)
async def test_the_fast_path_retries_only_what_may_be_retried(exc: Exception) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    kinds = {ValueError: ErrorKind.PERMANENT, PermissionError: ErrorKind.INFRASTRUCTURE}
    fn, calls = failing(clock, exc)
    with pytest.raises(type(exc)):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=3,
            sleep=clock.sleep,
            classify=lambda e: kinds[type(e)],
        )
    expected = 1 if isinstance(exc, ValueError) else 3
    assert len(calls) == expected


async def test_no_retry_once_the_breaker_refuses() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=1, open_jitter=0.0, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("x"))
    with pytest.raises(ConnectionResetError):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=3,
            sleep=clock.sleep,
        )
    assert len(calls) == 1  # the failure opened the breaker: no second attempt


async def test_a_retry_after_the_fast_path_succeeds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("x"), then="second")
    result = await call(
        fn,
        breaker=breaker,
        budget=None,
        deadline=Deadline.after(10.0, clock=clock),
        attempts=2,
        sleep=clock.sleep,
    )
    assert result == "second"
    assert len(calls) == 2


async def test_a_sleep_as_long_as_the_time_left_is_not_taken() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("x"))
    with pytest.raises(ConnectionResetError):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(0.02, clock=clock),  # exactly the first backoff ceiling
            attempts=3,
            base_s=0.02,
            rng=Top(),
            sleep=clock.sleep,
        )
    assert len(calls) == 1
    assert clock.sleeps == []


async def test_a_call_that_runs_out_of_time_says_how_long_it_had() -> None:
    breaker = CircuitBreaker("db", failure_threshold=100)

    async def hang(timeout: float) -> str:
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(DeadlineExceeded) as caught:
        await call(hang, breaker=breaker, budget=None, deadline=Deadline.after(0.02), attempts=1)
    assert caught.value.during_call is True
    assert str(caught.value).startswith("call did not finish within its 0.0")
    assert str(caught.value).endswith("s")


async def test_a_timeout_of_the_call_itself_before_the_deadline_is_not_the_deadline() -> None:
    breaker = CircuitBreaker("db", failure_threshold=100)

    async def own_timeout(timeout: float) -> str:
        raise TimeoutError("the driver's own, shorter timeout")

    with pytest.raises(TimeoutError) as caught:
        await call(
            own_timeout, breaker=breaker, budget=None, deadline=Deadline.after(60.0), attempts=1
        )
    assert not isinstance(caught.value, DeadlineExceeded)


async def test_no_deadline_means_no_timeout() -> None:
    breaker = CircuitBreaker("db", failure_threshold=100)
    seen: list[float] = []

    async def fn(timeout: float) -> str:
        seen.append(timeout)
        await asyncio.sleep(0)
        return "ok"

    assert await call(fn, breaker=breaker, budget=None, deadline=Deadline(math.inf)) == "ok"
    assert seen == [math.inf]


async def test_a_successful_retry_ends_the_loop() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    fn, calls = failing(clock, ConnectionResetError("x"), then="second")
    result = await call(
        fn,
        breaker=breaker,
        budget=None,
        deadline=Deadline.after(10.0, clock=clock),
        attempts=5,
        sleep=clock.sleep,
    )
    assert result == "second"
    assert len(calls) == 2


async def test_an_error_that_may_not_be_retried_ends_the_loop() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=100, clock=clock)
    errors: list[Exception] = [ConnectionResetError("first"), ValueError("then a bug")]
    calls: list[float] = []

    async def fn(timeout: float) -> str:
        calls.append(timeout)
        raise errors[min(len(calls), len(errors)) - 1]

    with pytest.raises(ValueError, match="then a bug"):
        await call(
            fn,
            breaker=breaker,
            budget=None,
            deadline=Deadline.after(10.0, clock=clock),
            attempts=5,
            sleep=clock.sleep,
        )
    assert len(calls) == 2
