"""HealthProbe: idle while closed, probes while open, moves open -> half_open on an answer.

The probe's sleep is injected: it records the interval and yields once, so no real time passes.
Tests wait on events the fake check sets; ``settle`` only lets ready tasks run.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.resilience._breaker import BreakerState, CircuitBreaker
from proxy.resilience._clock import FakeClock
from proxy.resilience._probe import HealthProbe

OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
GUARD_S = 2.0  # only bounds a broken test; passing runs never get near it


async def settle(rounds: int = 20) -> None:
    """Let every ready task run to its next real wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeCheck:
    """Fails ``failures`` times, then answers; signals every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.timeouts: list[float] = []
        self.called = asyncio.Event()
        self.answered = asyncio.Event()

    async def __call__(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.called.set()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("still down")
        self.answered.set()


class Sleeps:
    def __init__(self) -> None:
        self.intervals: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.intervals.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("db", failure_threshold=1, open_base_s=60.0, open_max_s=60.0, clock=clock)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


async def test_idle_while_closed_then_probes_until_it_answers(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    check = FakeCheck(failures=2)
    probe = HealthProbe(breaker, check, interval_s=0.25, timeout_s=0.5, sleep=sleeps)
    probe.start()
    try:
        await settle()
        assert check.timeouts == []
        assert sleeps.intervals == []  # waiting on the event, not polling

        breaker.acquire().failure(0.0, "down")
        assert breaker.state is OPEN
        await asyncio.wait_for(check.answered.wait(), GUARD_S)
        # Half-open: each further probe is a trial call, until enough succeed to close.
        await settle(100)
        causes = [(t.to_state, t.cause) for t in breaker.transitions]
        assert causes[-2] == (HALF_OPEN, "probe answered")
        assert causes[-1][0] is BreakerState.CLOSED
        assert causes[-1][1].endswith("trial calls succeeded")
        trials = breaker.half_open_successes
        assert check.timeouts == [0.5] * (3 + trials)
        assert sleeps.intervals == [0.25] * (3 + trials)
        assert probe.probes_total == 3 + trials
        assert probe.probe_failures == 2
        assert probe.last_error is None
        assert probe.last_success_at == 1_700_000_000.0

        await settle()
        assert probe.probes_total == 3 + trials  # closed: idle again
    finally:
        await probe.stop()


async def test_a_failed_trial_probe_reopens_the_breaker(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    check = FakeCheck(failures=0)
    probe = HealthProbe(breaker, check, interval_s=0.25, timeout_s=0.5, sleep=sleeps)
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()
    assert breaker.state is HALF_OPEN
    check.failures = 1
    assert await probe.trial_once() is False
    assert breaker.state is OPEN
    assert breaker.transitions[-1].cause.startswith("trial call failed: probe failed")


async def test_no_trial_probe_when_every_trial_permit_is_taken(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    check = FakeCheck()
    probe = HealthProbe(breaker, check, interval_s=0.25, timeout_s=0.5, sleep=sleeps)
    breaker.acquire().failure(0.0, "down")
    breaker.probe_succeeded()
    permits = [breaker.acquire() for _ in range(breaker.half_open_max_calls)]
    assert await probe.trial_once() is None
    assert check.timeouts == []
    for permit in permits:
        permit.release()


async def test_wakes_again_when_the_breaker_reopens(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    check = FakeCheck()
    probe = HealthProbe(breaker, check, interval_s=0.25, sleep=sleeps)
    probe.start()
    try:
        breaker.acquire().failure(0.0, "down")
        await asyncio.wait_for(check.answered.wait(), GUARD_S)
        assert breaker.state is HALF_OPEN

        await settle(100)  # the trial probes close it
        assert breaker.state is BreakerState.CLOSED

        check.answered.clear()
        breaker.acquire().failure(0.0, "down again")
        assert breaker.state is OPEN
        await asyncio.wait_for(check.answered.wait(), GUARD_S)
        answered = [t for t in breaker.transitions if t.cause == "probe answered"]
        assert len(answered) == 2
    finally:
        await probe.stop()


async def test_starts_probing_when_already_open(breaker: CircuitBreaker, sleeps: Sleeps) -> None:
    breaker.acquire().failure(0.0, "down")
    check = FakeCheck()
    probe = HealthProbe(breaker, check, sleep=sleeps)
    probe.start()
    try:
        await asyncio.wait_for(check.answered.wait(), GUARD_S)
        assert breaker.state is HALF_OPEN
    finally:
        await probe.stop()


async def test_forced_open_is_not_probed(breaker: CircuitBreaker, sleeps: Sleeps) -> None:
    check = FakeCheck()
    probe = HealthProbe(breaker, check, sleep=sleeps)
    probe.start()
    try:
        breaker.force_open("maintenance")
        await settle()
        assert check.timeouts == []
        assert breaker.state is FORCED_OPEN
    finally:
        await probe.stop()


async def test_a_hanging_check_times_out_and_counts_as_a_failure(
    breaker: CircuitBreaker,
) -> None:
    async def hang(timeout: float) -> None:
        await asyncio.Event().wait()

    outcomes: list[bool] = []
    probe = HealthProbe(
        breaker, hang, timeout_s=0.01, on_probe=lambda ok, _duration: outcomes.append(ok)
    )
    breaker.acquire().failure(0.0, "down")
    assert await probe.probe_once() is False
    assert probe.probe_failures == 1
    assert probe.last_error is not None
    assert probe.last_error.startswith("TimeoutError")
    assert outcomes == [False]
    assert breaker.state is OPEN


async def test_probe_hook_errors_are_ignored(breaker: CircuitBreaker) -> None:
    def broken(ok: bool, duration: float) -> None:
        raise RuntimeError("metrics bug")

    probe = HealthProbe(breaker, FakeCheck(), on_probe=broken)
    breaker.acquire().failure(0.0, "down")
    assert await probe.probe_once() is True
    assert breaker.state is HALF_OPEN


async def test_stop_is_clean_and_idempotent(breaker: CircuitBreaker, sleeps: Sleeps) -> None:
    check = FakeCheck(failures=1_000_000)
    probe = HealthProbe(breaker, check, sleep=sleeps)
    await probe.stop()  # never started
    probe.start()
    probe.start()  # already running: no second task
    assert probe.running
    breaker.acquire().failure(0.0, "down")
    await asyncio.wait_for(check.called.wait(), GUARD_S)
    await probe.stop()
    assert probe.snapshot()["running"] is False
    await probe.stop()
    total = probe.probes_total
    breaker.force_open("x")
    breaker.automatic()
    breaker.acquire().failure(0.0, "down again")
    await settle()
    assert probe.probes_total == total  # stopped and unsubscribed
    snap = probe.snapshot()
    assert snap["running"] is False
    assert snap["probes_total"] == total
    assert snap["probe_failures"] == total
    assert snap["last_error"] == "ConnectionRefusedError: still down"


def test_rejects_nonsense(breaker: CircuitBreaker) -> None:
    with pytest.raises(ValueError):
        HealthProbe(breaker, FakeCheck(), interval_s=-1.0)
    with pytest.raises(ValueError):
        HealthProbe(breaker, FakeCheck(), timeout_s=0.0)


class FixedDraws(random.Random):
    """Draws the given values in turn: the jitter's factor is known in advance."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__()
        self._draws = list(draws)

    def random(self) -> float:
        return self._draws.pop(0)


async def test_jitter_spreads_the_intervals_around_the_period(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    """A fleet whose breakers opened on the same outage must not probe in step."""
    draws = [0.0, 1.0, 0.5, 0.25]
    check = FakeCheck(failures=len(draws) + 10)
    probe = HealthProbe(
        breaker, check, interval_s=1.0, sleep=sleeps, jitter=0.2, rng=FixedDraws(draws)
    )
    breaker.acquire().failure(0.0, "down")
    probe.start()
    try:
        async with asyncio.timeout(GUARD_S):
            while len(check.timeouts) < len(draws):
                await asyncio.sleep(0)
    finally:
        await probe.stop()
    assert sleeps.intervals[: len(draws)] == pytest.approx([0.8, 1.2, 1.0, 0.9])


async def test_jitter_draws_from_its_own_generator_when_none_is_given(
    breaker: CircuitBreaker, sleeps: Sleeps
) -> None:
    check = FakeCheck(failures=20)
    probe = HealthProbe(breaker, check, interval_s=1.0, sleep=sleeps, jitter=0.2)
    breaker.acquire().failure(0.0, "down")
    probe.start()
    try:
        async with asyncio.timeout(GUARD_S):
            while len(check.timeouts) < 5:
                await asyncio.sleep(0)
    finally:
        await probe.stop()
    intervals = sleeps.intervals[:5]
    assert all(0.8 <= i <= 1.2 for i in intervals), intervals
    assert len(set(intervals)) > 1, intervals


def test_jitter_is_a_share_below_one(breaker: CircuitBreaker) -> None:
    with pytest.raises(ValueError, match=r"^jitter must be at least 0 and below 1$"):
        HealthProbe(breaker, FakeCheck(), jitter=1.0)
    with pytest.raises(ValueError, match="jitter"):
        HealthProbe(breaker, FakeCheck(), jitter=-0.1)
    assert HealthProbe(breaker, FakeCheck()).jitter == 0.0
