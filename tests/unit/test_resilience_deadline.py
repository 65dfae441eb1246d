"""Deadlines: the time that remains, and who is blamed when it runs out."""

from __future__ import annotations

import math

import pytest

from proxy.resilience._clock import FakeClock
from proxy.resilience._deadline import Deadline, DeadlineExceeded


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


def test_infinite_and_nan() -> None:
    clock = FakeClock()
    assert Deadline.after(math.inf, clock=clock).remaining() == math.inf
    with pytest.raises(ValueError):
        Deadline.after(math.nan, clock=clock)
    with pytest.raises(ValueError):
        Deadline(math.nan, clock=clock)
