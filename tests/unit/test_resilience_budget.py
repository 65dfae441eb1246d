"""Retry budget: ratio of recent requests plus a floor, over a sliding window."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.resilience._budget import RetryBudget
from proxy.resilience._clock import FakeClock


def spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
        assert spent < 10_000
    return spent


def test_floor_allows_retries_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0, clock=FakeClock())
    assert budget.allowed_now() == 10
    assert spend_all(budget) == 10
    assert budget.exhausted_count == 1
    assert not budget.try_spend()
    assert budget.exhausted_count == 2


def test_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=FakeClock())
    assert not budget.try_spend()
    for _ in range(4):
        budget.record_request()
    assert budget.allowed_now() == 2
    assert spend_all(budget) == 2
    budget.record_request()  # 0.5 * 5 = 2.5 > 2: one more
    assert budget.allowed_now() == 1
    assert budget.try_spend()
    assert not budget.try_spend()


def test_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_s=0.25, window_s=8.0, clock=clock)
    assert spend_all(budget) == 2  # 0.25 * 8
    clock.advance(7.5)
    assert not budget.try_spend()
    clock.advance(0.5)  # t = 8: the retries of t = 0 have aged out
    assert budget.try_spend()


def test_requests_age_out_too() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=4.0, clock=clock)
    for _ in range(3):
        budget.record_request()
    clock.advance(4.0)
    assert budget.allowed_now() == 0
    assert not budget.try_spend()


def test_snapshot() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10.0, clock=FakeClock())
    for _ in range(10):
        budget.record_request()
    assert budget.allowed_now() == 7
    for _ in range(7):
        assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.snapshot() == {
        "requests": 10,
        "retries": 7,
        "allowed_now": 0,
        "exhausted_count": 1,
        "ratio": 0.2,
        "min_per_s": 0.5,
        "window_s": 10.0,
    }


def test_many_requests_keep_memory_fixed() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    for _ in range(1_000):
        for _ in range(50):
            budget.record_request()
        clock.advance(0.5)
    # The clock ends at t = 500 with nothing yet in that second: the ten 1 s buckets hold
    # t = 491 .. 499.5, that is 18 batches.
    assert budget.snapshot()["requests"] == 900


@pytest.mark.parametrize(
    "options", [{"ratio": -0.1}, {"min_per_s": -1.0}, {"bucket_s": 0.0}, {"window_s": 0.0}]
)
def test_rejects_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**options)
