"""`CircuitBreaker.refuses_now`: true exactly while `acquire` would refuse every call, and asking
never changes the breaker's state (an elapsed open period stays open until a call is tried)."""

from __future__ import annotations

import pytest

from proxy.resilience import BreakerOpen, BreakerState, CircuitBreaker, FakeClock


def _breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("db", failure_threshold=2, open_base_s=4.0, open_jitter=0.0, clock=clock)


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.acquire().failure(0.0, "boom")
    assert breaker.state is BreakerState.OPEN


def test_closed_and_disabled_do_not_refuse() -> None:
    breaker = _breaker(FakeClock())
    assert not breaker.refuses_now()
    breaker.disable("test")
    assert not breaker.refuses_now()


def test_open_refuses_until_its_period_ends_without_moving() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    assert breaker.refuses_now()
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    clock.advance(3.5)
    assert breaker.refuses_now()
    clock.advance(0.5)
    # The period is over: a call would be a trial now. Asking does not make it one.
    assert not breaker.refuses_now()
    assert breaker.state is BreakerState.OPEN
    breaker.acquire().success(0.0)
    assert breaker.state is not BreakerState.OPEN


def test_forced_open_refuses_until_automatic() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    breaker.force_open("test")
    clock.advance(3600.0)
    assert breaker.refuses_now()
    breaker.automatic("test")
    assert not breaker.refuses_now()


def test_half_open_is_not_counted_as_refusing() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    clock.advance(4.0)
    permits = [breaker.acquire() for _ in range(breaker.half_open_max_calls)]
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.refuses_now()
    for permit in permits:
        permit.release()
