"""FakeClock, SystemClock and the time-bucketed SlidingWindow."""

from __future__ import annotations

import pytest

from proxy.resilience._clock import SYSTEM_CLOCK, Clock, FakeClock, SlidingWindow, SystemClock


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    assert clock.monotonic() == 0.0
    assert clock.wall() == 1_700_000_000.0
    clock.advance(2.5)
    assert clock.monotonic() == 2.5
    assert clock.wall() == 1_700_000_002.5


def test_fake_clock_custom_start_keeps_wall_in_step() -> None:
    clock = FakeClock(start=100.0, wall_start=5.0)
    clock.advance(1.0)
    assert clock.monotonic() == 101.0
    assert clock.wall() == 6.0


@pytest.mark.parametrize("seconds", [-0.001, float("nan")])
def test_fake_clock_refuses_to_go_back(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock.monotonic() == 0.0


async def test_fake_clock_sleep_records_and_advances() -> None:
    clock = FakeClock()
    await clock.sleep(0.25)
    await clock.sleep(0.0)
    await clock.sleep(-1.0)  # recorded as asked, time does not go back
    assert clock.sleeps == [0.25, 0.0, -1.0]
    assert clock.monotonic() == 0.25


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SYSTEM_CLOCK, Clock)
    system = SystemClock()
    first = system.monotonic()
    assert system.monotonic() >= first
    assert system.wall() > 1_600_000_000


def test_window_sums_and_ages_out_exactly() -> None:
    clock = FakeClock()
    window = SlidingWindow(("a", "b"), window_s=10.0, buckets=10, clock=clock)
    window.add(1, 0)  # slice 0
    clock.advance(0.5)
    window.add(1, 1)  # still slice 0
    clock.advance(4.5)  # t = 5.0, slice 5
    window.add(0, 3)
    assert window.totals() == (2, 4)

    clock.advance(4.75)  # t = 9.75: slice 9, slice 0 still in
    assert window.totals() == (2, 4)
    clock.advance(0.25)  # t = 10.0: slice 10 reuses slot 0
    assert window.as_dict() == {"a": 0, "b": 3}
    clock.advance(5.0)  # t = 15.0: slice 5 gone too
    assert window.totals() == (0, 0)


def test_window_long_idle_clears_everything() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=2.0, buckets=4, clock=clock)
    for _ in range(5):
        window.add(1)
        clock.advance(0.25)
    assert window.totals() == (5,)
    clock.advance(1_000.0)
    assert window.totals() == (0,)
    window.add(2)
    assert window.totals() == (2,)


def test_window_clear_and_validation() -> None:
    clock = FakeClock()
    window = SlidingWindow(("n",), window_s=1.0, clock=clock)
    window.add(4)
    window.clear()
    assert window.totals() == (0,)
    with pytest.raises(ValueError):
        window.add(1, 2)
    with pytest.raises(ValueError):
        SlidingWindow((), window_s=1.0)
    with pytest.raises(ValueError):
        SlidingWindow(("n",), window_s=0.0)
    with pytest.raises(ValueError):
        SlidingWindow(("n",), window_s=float("inf"))
    with pytest.raises(ValueError):
        SlidingWindow(("n",), window_s=1.0, buckets=0)
