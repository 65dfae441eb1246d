"""The collector policy, on the interpreter's real `gc` (its clock injected)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from proxy.observability import collector
from proxy.observability.collector import Refreezer
from proxy.resilience import FakeClock


class Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def thawed() -> Iterator[None]:
    # Other tests' objects are not this test's business, nor its freezes theirs.
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_survives_a_full_collection_is_frozen(thawed: None) -> None:
    clock = FakeClock()
    policy = Refreezer(full_every_s=600, clock=clock.monotonic).install()
    try:
        kept = [Cycle() for _ in range(100)]
        gc.collect()
        assert gc.get_freeze_count() >= len(kept)
        # A younger collection leaves the frozen objects alone.
        frozen = gc.get_freeze_count()
        gc.collect(1)
        assert gc.get_freeze_count() == frozen
    finally:
        policy.remove()
    assert policy not in gc.callbacks


def test_a_cycle_among_frozen_objects_is_reclaimed_by_the_next_full_walk(thawed: None) -> None:
    clock = FakeClock()
    policy = Refreezer(full_every_s=600, clock=clock.monotonic).install()
    try:
        doomed = Cycle()
        alive = weakref.ref(doomed)
        gc.collect()  # frozen with everything else
        del doomed
        gc.collect()
        # Frozen, the cycle outlives a full collection.
        assert alive() is not None
        clock.advance(600)
        gc.collect()  # the period is over: this one hands the frozen objects back
        assert gc.get_freeze_count() == 0
        gc.collect()  # walks everything, then freezes again
        assert alive() is None
        assert gc.get_freeze_count() > 0
    finally:
        policy.remove()


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Refreezer(full_every_s=0)


def test_serve_installs_the_policy_only_with_a_period() -> None:
    from proxy import cli

    assert cli._refreezer(0) is None
    policy = cli._refreezer(60)
    assert policy is not None
    try:
        assert policy in gc.callbacks
    finally:
        policy.remove()


def test_stats_count_frozen_objects_and_full_collections(thawed: None) -> None:
    before = collector.stats()["python_full_collections"]
    gc.collect()
    gc.freeze()
    doc = collector.stats()
    assert doc["python_full_collections"] == before + 1
    assert doc["python_frozen_objects"] == gc.get_freeze_count() > 0
