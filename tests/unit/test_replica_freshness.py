"""How fresh the replica is: since PostgreSQL last confirmed it, or since its snapshot was
written when it has not been confirmed since; never fresh while it is not connected."""

from __future__ import annotations

from proxy.resilience import FakeClock
from proxy.store.replica import Replica


def test_fresh_within_counts_from_the_last_contact_and_needs_a_connection() -> None:
    clock = FakeClock()
    rep = Replica(clock=clock)
    assert rep.age() is None and not rep.fresh_within(5.0)
    rep.touch()
    assert not rep.fresh_within(5.0)  # in step, but not connected
    rep.connected = True
    assert rep.fresh_within(0.0)
    clock.advance(5.0)
    assert rep.age() == 5.0
    assert rep.fresh_within(5.0)  # the bound is inclusive
    assert not rep.fresh_within(4.999)
    rep.touch()
    assert rep.fresh_within(0.0)
    rep.connected = False
    assert not rep.fresh_within(60.0)


def test_a_snapshot_is_as_fresh_as_when_it_was_written() -> None:
    clock = FakeClock(wall_start=1_000.0)
    rep = Replica(clock=clock)
    clock.advance(10.0)  # the wall clock now reads 1,010
    rep.load_snapshot({"tenants": [], "agents": []}, watermark=0, written_at=1_004.0)
    rep.connected = True
    assert rep.age() == 6.0
    assert rep.fresh_within(6.0) and not rep.fresh_within(5.0)
    rep.load_snapshot({"tenants": [], "agents": []}, watermark=0, written_at=1_020.0)
    assert rep.age() == 0.0 and rep.fresh_within(0.0)  # written "later": never negative
