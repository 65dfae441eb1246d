"""Bulkhead: a bounded number of holders, a bounded FIFO queue, a wait bounded by the deadline;
and LoopLag: shedding only when the lag stands above its threshold for a whole window."""

from __future__ import annotations

import asyncio

import pytest

from proxy.resilience._bulkhead import Bulkhead, BulkheadHooks, Overloaded
from proxy.resilience._clock import FakeClock
from proxy.resilience._deadline import Deadline
from proxy.resilience._errors import ErrorKind, classify
from proxy.resilience._looplag import LoopLag

GUARD_S = 2.0  # only bounds a broken test


def far() -> Deadline:
    return Deadline.after(60.0)


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_admits_up_to_the_limit_at_once() -> None:
    waits: list[float] = []
    b = Bulkhead(limit=2, max_queue=4, hooks=BulkheadHooks(waited=waits.append))
    await b.acquire(far())
    await b.acquire(far())
    assert b.in_use == 2 and b.queued == 0
    assert waits == [0.0, 0.0]
    b.release()
    b.release()
    assert b.in_use == 0


async def test_waiters_are_served_first_come_first_served_and_newcomers_do_not_overtake() -> None:
    b = Bulkhead(limit=1, max_queue=4)
    await b.acquire(far())
    order: list[int] = []

    async def waiter(n: int) -> None:
        await b.acquire(far())
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await settle()
    assert b.queued == 3
    b.release()  # handed to waiter 0; the count of holders stays 1
    await settle()
    assert order == [0] and b.in_use == 1
    # A newcomer while two wait: it queues behind them.
    late = asyncio.create_task(waiter(9))
    await settle()
    assert b.queued == 3
    for _ in range(3):
        b.release()
        await settle()
    await asyncio.wait_for(asyncio.gather(*tasks, late), GUARD_S)
    assert order == [0, 1, 2, 9]
    b.release()
    assert b.in_use == 0


async def test_a_full_queue_refuses_at_once_without_waiting() -> None:
    shed: list[str] = []
    b = Bulkhead(limit=1, max_queue=1, hooks=BulkheadHooks(shed=shed.append))
    await b.acquire(far())
    queued = asyncio.create_task(b.acquire(far()))
    await settle()
    with pytest.raises(Overloaded) as info:
        await b.acquire(far())
    assert info.value.reason == "queue-full"
    assert info.value.retry_after >= 1.0
    assert classify(info.value) is ErrorKind.REJECTED  # never counted against the database
    assert shed == ["queue-full"]
    assert b.shed_total["queue-full"] == 1
    b.release()
    await asyncio.wait_for(queued, GUARD_S)
    b.release()


async def test_the_wait_ends_with_the_deadline_and_leaves_the_queue() -> None:
    b = Bulkhead(limit=1, max_queue=4)
    await b.acquire(far())
    with pytest.raises(Overloaded) as info:
        await b.acquire(Deadline.after(0.01))
    assert info.value.reason == "queue-timeout"
    assert b.queued == 0
    b.release()
    assert b.in_use == 0  # the slot was not handed to the waiter that left


async def test_max_wait_caps_a_long_deadline() -> None:
    b = Bulkhead(limit=1, max_queue=4, max_wait_s=0.01)
    await b.acquire(far())
    with pytest.raises(Overloaded):
        await b.acquire(far())
    b.release()


async def test_a_cancelled_waiter_passes_a_slot_it_was_handed_on() -> None:
    b = Bulkhead(limit=1, max_queue=4)
    await b.acquire(far())
    first = asyncio.create_task(b.acquire(far()))
    second = asyncio.create_task(b.acquire(far()))
    await settle()
    b.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, GUARD_S)
    assert b.in_use == 1 and b.queued == 0
    b.release()
    assert b.in_use == 0


async def test_snapshot_counts_waits_and_refusals() -> None:
    clock = FakeClock()
    b = Bulkhead(limit=1, max_queue=1, clock=clock)
    await b.acquire(far())
    waiting = asyncio.create_task(b.acquire(far()))
    await settle()
    clock.advance(0.25)
    b.release()
    await asyncio.wait_for(waiting, GUARD_S)
    snap = b.snapshot()
    assert snap["in_use"] == 1
    assert snap["queued_total"] == 1
    assert snap["max_wait_seconds"] == 0.25
    assert snap["wait_seconds_total"] == 0.25
    b.release()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="limit"):
        Bulkhead(limit=0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        Bulkhead(limit=1, max_queue=-1)


def test_loop_lag_ignores_a_spike_and_sheds_on_a_standing_lag() -> None:
    clock = FakeClock()
    lag = LoopLag(threshold_s=0.1, window_s=0.5, clock=clock)
    lag.record(0.0)
    clock.advance(0.1)
    lag.record(0.8)  # one late timer: a spike
    assert not lag.behind
    clock.advance(0.1)
    lag.record(0.01)
    assert not lag.behind
    # Every sample of a whole window above the threshold: standing.
    for _ in range(6):
        clock.advance(0.1)
        lag.record(0.2)
    assert lag.behind
    assert lag.episodes == 1
    assert lag.snapshot()["shedding"] is True
    # One timer on time ends it.
    clock.advance(0.1)
    lag.record(0.01)
    assert not lag.behind
    assert lag.snapshot()["max_ms"] == 800.0


async def test_loop_lag_measures_a_blocked_loop() -> None:
    import time

    lag = LoopLag(threshold_s=0.05, interval_s=0.005, window_s=10.0)
    lag.start()
    try:
        await asyncio.sleep(0.02)
        time.sleep(0.1)  # the loop is blocked: the next timer fires late
        await asyncio.sleep(0.02)
        assert lag.max_s >= 0.05
    finally:
        await lag.stop()
    await lag.stop()  # idempotent
