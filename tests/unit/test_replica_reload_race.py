"""A full resync reads PostgreSQL while rows keep arriving (this sidecar's commits, other
sidecars' notifications). Rows applied after the read began may be newer than what it saw: the
reload must not take the replica back to the older rows, nor lose an agent it never saw, since
the watermark has already passed them and no incremental resync would read them again."""

from __future__ import annotations

from dataclasses import replace

from proxy.store.replica import Replica
from tests.unit.test_replica_overlay import T, base


def test_an_agent_registered_while_the_reload_reads_stays() -> None:
    rep = Replica()
    rep.replace_all([T], [base(1)])
    rep.begin_reload()
    new = replace(base(5), agent_id="b")
    rep.upsert(new)  # committed after the reload's read began: not in what it read
    rep.replace_all([T], [base(1)])
    got = rep.get(T, "b")
    assert got is not None and got.version == 5
    assert rep.count(T) == 2
    assert rep.watermark == 5


def test_a_newer_row_applied_during_the_reload_wins_over_the_older_one_read() -> None:
    rep = Replica()
    rep.replace_all([T], [base(1)])
    rep.begin_reload()
    rep.upsert(base(7, task_count=3))
    rep.upsert(base(6, task_count=2))  # out of order: the newest applied is kept
    rep.replace_all([T], [base(4, task_count=1)])
    got = rep.get(T, "a")
    assert got is not None and (got.version, got.task_count) == (7, 3)


def test_an_unregistration_applied_during_the_reload_is_not_undone() -> None:
    rep = Replica()
    rep.replace_all([T], [base(1)])
    rep.begin_reload()
    gone = base(9)
    rep.upsert(replace(gone, deleted_at=gone.registered_at))
    rep.replace_all([T], [base(1)])  # the read still saw the agent live
    assert rep.get(T, "a") is None
    assert rep.count(T) == 0


def test_rows_older_than_the_read_change_nothing_and_a_failed_reload_keeps_nothing() -> None:
    rep = Replica()
    rep.begin_reload()
    rep.upsert(base(2))
    rep.replace_all([T], [base(8)])
    got = rep.get(T, "a")
    assert got is not None and got.version == 8
    # A reload whose read failed: what came meanwhile is not held for the next one.
    rep.begin_reload()
    rep.upsert(replace(base(9), agent_id="c"))
    rep.end_reload()
    rep.replace_all([T], [base(10)])
    assert rep.get(T, "c") is None
    # Without `begin_reload`, the base is exactly what was read.
    rep.upsert(replace(base(11), agent_id="d"))
    rep.replace_all([T], [base(12)])
    assert rep.get(T, "d") is None
