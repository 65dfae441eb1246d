"""Deadlines and the context-local current deadline."""

from __future__ import annotations

import asyncio
import math

import pytest

from proxy.resilience.clock import FakeClock
from proxy.resilience.deadline import Deadline, DeadlineExceeded, current_deadline, use_deadline


def test_remaining_counts_down_and_never_goes_negative() -> None:
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock=clock)
    assert deadline.at == 2.0
    assert deadline.remaining() == 2.0
    assert not deadline.expired()
    clock.advance(1.5)
    assert deadline.remaining() == 0.5
    clock.advance(0.5)
    assert deadline.remaining() == 0.0
    assert deadline.expired()
    clock.advance(3.0)
    assert deadline.remaining() == 0.0


def test_timeout_for_takes_the_smaller_of_cap_and_remaining() -> None:
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock=clock)
    assert deadline.timeout_for() == 2.0
    assert deadline.timeout_for(0.5) == 0.5
    assert deadline.timeout_for(5.0) == 2.0
    clock.advance(10.0)
    assert deadline.timeout_for(0.5) == 0.0


def test_raise_if_expired_blames_nobody() -> None:
    clock = FakeClock()
    deadline = Deadline.after(1.0, clock=clock)
    deadline.raise_if_expired()
    clock.advance(1.0)
    with pytest.raises(DeadlineExceeded) as info:
        deadline.raise_if_expired()
    assert info.value.during_call is False
    assert isinstance(info.value, TimeoutError)


def test_deadline_exceeded_defaults_to_a_slow_call() -> None:
    assert DeadlineExceeded().during_call is True


def test_tighter_and_shortened() -> None:
    clock = FakeClock()
    long = Deadline.after(5.0, clock=clock)
    short = Deadline.after(1.0, clock=clock)
    assert long.tighter(short) is short
    assert short.tighter(long) is short
    assert long.tighter(None) is long
    assert long.shortened(2.0).remaining() == 2.0
    assert short.shortened(2.0) is short


def test_infinite_and_nan() -> None:
    clock = FakeClock()
    assert Deadline.after(math.inf, clock=clock).remaining() == math.inf
    with pytest.raises(ValueError):
        Deadline.after(math.nan, clock=clock)
    with pytest.raises(ValueError):
        Deadline(math.nan, clock=clock)


def test_use_deadline_nests_and_never_extends() -> None:
    clock = FakeClock()
    outer = Deadline.after(1.0, clock=clock)
    assert current_deadline() is None
    with use_deadline(outer) as effective:
        assert effective is outer
        assert current_deadline() is outer
        with use_deadline(Deadline.after(10.0, clock=clock)) as inner:
            assert inner is outer
        shorter = Deadline.after(0.2, clock=clock)
        with use_deadline(shorter) as inner:
            assert inner is shorter
            assert current_deadline() is shorter
        assert current_deadline() is outer
    assert current_deadline() is None


async def test_current_deadline_follows_tasks() -> None:
    clock = FakeClock()
    deadline = Deadline.after(1.0, clock=clock)

    async def read() -> Deadline | None:
        return current_deadline()

    with use_deadline(deadline):
        seen = await asyncio.create_task(read())
    assert seen is deadline
    assert await asyncio.create_task(read()) is None
