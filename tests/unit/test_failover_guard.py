"""The failover guard's bookkeeping: which writes a standby holds, which a promotion hands back."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime

import pytest

from proxy.resilience import FakeClock
from proxy.service.failover_guard import Committed, FailoverGuard
from proxy.store.wal_position import WalPosition


def write(n: int) -> Committed:
    return Committed.of(f"t/op{n}", "register", "t", f"a{n}", {"payload": {"n": n}})


def position(
    lsn: int, *, timeline: int = 1, standbys: int = 1, flushed: int | None = None
) -> WalPosition:
    return WalPosition(
        in_recovery=False, timeline=timeline, lsn=lsn, standbys=standbys, flushed=flushed
    )


def kept(guard: FailoverGuard, n: int) -> None:
    for i in range(n):
        guard.committed(write(i))


def test_a_write_is_released_once_every_standby_flushed_past_a_read_begun_after_it() -> None:
    guard = FailoverGuard()
    kept(guard, 2)
    begun = guard.read_begins()
    guard.committed(write(2))  # after the read began: not covered by its position
    assert guard.observe(position(100, flushed=99), begun) == []
    assert len(guard) == 3  # the standby is one byte short of the position
    assert guard.observe(position(120, flushed=100), guard.read_begins()) == []
    assert len(guard) == 1  # the first two were at or below 100; the third waits for 120
    assert guard.observe(position(130, flushed=120), guard.read_begins()) == []
    assert len(guard) == 0
    assert guard.stats.released == 3 and guard.stats.held_out == 0


def test_a_new_timeline_hands_back_every_write_not_released_oldest_first() -> None:
    guard = FailoverGuard()
    guard.observe(position(10, flushed=10), guard.read_begins())
    kept(guard, 2)
    guard.observe(position(50, flushed=20), guard.read_begins())
    guard.committed(write(2))
    again = guard.observe(position(40, timeline=2, flushed=None, standbys=0), 0)
    assert [w.op_id for w in again] == ["t/op0", "t/op1", "t/op2"]
    assert len(guard) == 0
    assert guard.stats.promotions == 1 and guard.stats.reapplied == 3


def test_an_older_position_on_the_same_timeline_is_another_server() -> None:
    guard = FailoverGuard()
    guard.observe(position(500, flushed=400), guard.read_begins())
    kept(guard, 1)
    assert [w.op_id for w in guard.observe(position(450), guard.read_begins())] == ["t/op0"]


def test_a_standby_answering_teaches_nothing() -> None:
    guard = FailoverGuard()
    kept(guard, 1)
    standby = WalPosition(in_recovery=True, timeline=None, lsn=None, standbys=0, flushed=None)
    assert guard.observe(standby, guard.read_begins()) == []
    assert len(guard) == 1 and guard.stats.timeline is None


def test_without_visible_positions_a_write_is_held_for_hold_ms() -> None:
    clock = FakeClock()
    guard = FailoverGuard(hold_ms=5_000, clock=clock)
    kept(guard, 1)
    guard.observe(position(100, standbys=1, flushed=None), guard.read_begins())
    assert len(guard) == 1
    clock.advance(4.9)
    guard.observe(position(110, standbys=1), guard.read_begins())
    assert len(guard) == 1
    clock.advance(0.1)
    guard.observe(position(120, standbys=1), guard.read_begins())
    assert len(guard) == 0 and guard.stats.held_out == 1 and guard.stats.released == 0


def test_with_no_standby_ever_seen_a_write_is_released_at_the_next_read() -> None:
    guard = FailoverGuard()
    kept(guard, 3)
    guard.observe(position(100, standbys=0), guard.read_begins())
    assert len(guard) == 0 and guard.stats.released == 3


def test_a_standby_once_seen_and_gone_holds_writes() -> None:
    clock = FakeClock()
    guard = FailoverGuard(hold_ms=1_000, clock=clock)
    guard.observe(position(100, flushed=100), guard.read_begins())
    kept(guard, 1)
    guard.observe(position(200, standbys=0), guard.read_begins())
    assert len(guard) == 1  # the standby may be promoted yet, with what it had
    clock.advance(1)
    guard.observe(position(210, standbys=0), guard.read_begins())
    assert len(guard) == 0


def test_at_most_max_writes_are_kept() -> None:
    guard = FailoverGuard(max_writes=2)
    kept(guard, 5)
    assert len(guard) == 2 and guard.stats.held_out == 3
    again = guard.observe(position(1, timeline=1), 0)
    assert again == []
    assert [w.op_id for w in guard.observe(position(1, timeline=2), 0)] == ["t/op3", "t/op4"]


def test_max_writes_zero_keeps_nothing() -> None:
    guard = FailoverGuard(max_writes=0)
    kept(guard, 3)
    assert len(guard) == 0


async def test_watch_reads_at_once_applies_again_and_survives_failed_reads() -> None:
    positions = [
        RuntimeError("connection refused"),
        position(10, flushed=10),
        position(5, timeline=2, standbys=0),
    ]
    guard = FailoverGuard()
    handed_back: list[list[str]] = []
    done = asyncio.Event()

    async def read() -> WalPosition:
        item = positions.pop(0) if positions else position(6, timeline=2, standbys=0)
        if isinstance(item, Exception):
            raise item
        if item.timeline == 2:
            guard.committed(write(7))  # kept just before the promotion is seen
        return item

    async def reapply(writes: list[Committed]) -> None:
        handed_back.append([w.op_id for w in writes])
        done.set()

    wake = asyncio.Event()
    task = asyncio.create_task(
        guard.watch(read=read, reapply=reapply, interval_s=0.01, wake=wake, idle_s=0)
    )
    try:
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert handed_back == [["t/op7"]]
    assert guard.status()["promotions"] == 1 and guard.status()["timeline"] == 2


async def test_with_nothing_kept_the_position_is_read_only_every_idle_s() -> None:
    clock = FakeClock()
    guard = FailoverGuard(clock=clock)
    reads: list[float] = []

    async def read() -> WalPosition:
        reads.append(clock.monotonic())
        return position(10 * len(reads), flushed=10 * len(reads))

    async def reapply(writes: list[Committed]) -> None:
        raise AssertionError("no promotion here")

    async def until(count: int) -> None:
        async with asyncio.timeout(5):
            while len(reads) < count:
                await asyncio.sleep(0.001)

    wake = asyncio.Event()
    task = asyncio.create_task(
        guard.watch(read=read, reapply=reapply, interval_s=0.001, wake=wake, idle_s=30)
    )
    try:
        await until(1)
        for _ in range(50):  # many rounds pass: nothing kept, no read
            await asyncio.sleep(0.001)
        assert len(reads) == 1
        guard.committed(write(0))  # a write kept: read at the next round
        await until(2)
        assert len(guard) == 0  # the standby had flushed past the read: released
        settled = len(reads)
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert len(reads) == settled
        clock.advance(30)  # idle long enough: one read to keep the timeline known
        await until(settled + 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_kept_write_is_one_untracked_object_and_reads_back_as_the_journal_would() -> None:
    received = datetime(2026, 12, 6, 7, 0, 0, 123456, tzinfo=UTC)
    payload = {"payload": {"body": {"caps": ["a", "b"]}, "n": 1}, "received_at": received}
    w = Committed.of("t/op1", "register", "t", "a1", payload)
    # Nothing for the collector to walk while the write waits for a standby.
    assert not gc.is_tracked(w.record)
    assert w.payload == {
        "payload": {"body": {"caps": ["a", "b"]}, "n": 1},
        "received_at": received.isoformat(),
    }
