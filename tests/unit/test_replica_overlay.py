"""The replica's overlay shows each journaled write exactly once: not twice while a replay batch
is in flight, not when PostgreSQL counted its event already, not when its fate is unknown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.registry.agent import AgentRecord
from proxy.registry.apply import apply_write
from proxy.registry.models import AgentQuery
from proxy.resilience import FakeClock
from proxy.store.counted_events import CountedEvents
from proxy.store.pending_write import PendingWrite
from proxy.store.replica import UNFILED_MAX, Replica

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T = "t"


def base(version: int, task_count: int = 0) -> AgentRecord:
    body = {
        "agent_id": "a",
        "name": "A",
        "model_family": "gpt",
        "capabilities": {"task_types": ["code"], "languages": [], "specializations": []},
    }
    rec = apply_write("register", T, {"body": body}, None, NOW)
    assert rec is not None
    return rec.evolve(version=version, task_count=task_count, success_count=task_count)


def post(op_id: str, event_id: str, *, uncertain: bool = False) -> PendingWrite:
    payload: dict[str, Any] = {
        "agent_id": "a",
        "body": {"event_id": event_id, "success": True, "quality_score": 0.5, "latency_ms": 1},
    }
    return PendingWrite(op_id, "performance", payload, NOW, uncertain=uncertain)


def count(rep: Replica) -> int:
    rec = rep.get(T, "a")
    assert rec is not None
    return rec.task_count


def warm(task_count: int = 0) -> Replica:
    rep = Replica()
    rep.replace_all([T, "other"], [base(10, task_count)])
    return rep


def test_pending_writes_are_folded_over_the_base_and_counted_per_tenant() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1"))
    rep.add_pending(T, "a", post("op2", "e2"))
    assert count(rep) == 5
    assert rep.pending_count(T) == 2 and rep.pending_count("other") == 0
    assert rep.pending_count() == 2
    rep.drop_pending(T, "a", "op1")
    assert count(rep) == 4  # the cached fold was dropped with the entry
    assert rep.pending_count(T) == 1


def test_an_event_id_pending_twice_counts_once() -> None:
    rep = warm()
    rep.add_pending(T, "a", post("op1", "same"))
    rep.add_pending(T, "a", post("op2", "same"))
    assert count(rep) == 1


def test_an_event_postgresql_counted_already_does_not_count_again() -> None:
    rep = warm(1)
    rep.event_counted(T, "a", "e1")
    rep.add_pending(T, "a", post("op1", "e1"))
    assert count(rep) == 1
    # A full resync keeps what is known to be counted.
    rep.replace_all([T], [base(11, 1)])
    assert count(rep) == 1


def test_a_retry_journaled_before_its_first_attempt_is_heard_counts_once() -> None:
    rep = warm(0)
    rep.add_pending(T, "a", post("retry", "e1"))
    assert count(rep) == 1
    # The first attempt commits now; its row (with the event) arrives, the retry still pends.
    rep.event_counted(T, "a", "e1")
    rep.upsert(base(11, 1))
    assert count(rep) == 1


def test_a_retry_stays_left_out_after_its_event_id_is_forgotten() -> None:
    clock = FakeClock()
    rep = Replica(clock=clock)
    rep.replace_all([T], [base(10, 1)])
    rep.event_counted(T, "a", "e1")
    rep.add_pending(T, "a", post("retry", "e1"))
    clock.advance(3600)
    rep.event_counted(T, "b", "later")  # expires e1
    assert rep.stats()["counted_events"] == 1
    assert count(rep) == 1


def test_counted_event_ids_are_forgotten_by_age_and_by_count() -> None:
    clock = FakeClock()
    events = CountedEvents(ttl_s=60, max_events=3, clock=clock)
    assert events.add((T, "a"), "e1") and not events.add((T, "a"), "e1")
    clock.advance(30)
    events.add((T, "b"), "e2")
    clock.advance(30)
    events.add((T, "b"), "e3")  # e1 is 60 s old: gone
    assert not events.knows((T, "a"), "e1") and events.knows((T, "b"), "e2")
    events.add((T, "c"), "e4")
    events.add((T, "c"), "e5")  # over three: the oldest, e2, goes
    assert len(events) == 3
    assert not events.knows((T, "b"), "e2") and events.knows((T, "c"), "e5")
    assert events.knows((T, "b"), "e3")  # its agent's other id stays


@pytest.mark.parametrize(("ttl_s", "max_events"), [(0, 10), (-1, 10), (60, 0), (60, -1)])
def test_counted_events_refuse_a_memory_that_cannot_hold_anything(
    ttl_s: float, max_events: int
) -> None:
    with pytest.raises(ValueError, match=r"^ttl_s must be > 0 and max_events >= 1$"):
        CountedEvents(ttl_s=ttl_s, max_events=max_events)


def test_counted_events_are_kept_15_minutes_and_100k_at_most_by_default() -> None:
    events = CountedEvents()
    assert (events.ttl_s, events.max_events) == (900.0, 100_000)


def test_counted_events_of_one_id_for_a_moment_still_work() -> None:
    clock = FakeClock()
    events = CountedEvents(ttl_s=0.001, max_events=1, clock=clock)
    assert events.ttl_s == 0.001 and events.max_events == 1
    assert events.add((T, "a"), "e1") and events.knows((T, "a"), "e1")
    events.add((T, "a"), "e2")
    assert len(events) == 1 and not events.knows((T, "a"), "e1")


def test_agents_that_come_and_go_leave_nothing_behind() -> None:
    """Memory held for counted events does not grow with the agents that ever reported one."""
    clock = FakeClock()
    rep = Replica(clock=clock)
    rep.replace_all([T], [])
    for n in range(2_000):
        clock.advance(1)
        rep.event_counted(T, f"agent-{n}", f"e{n}")
    assert rep.stats()["counted_events"] == 900  # the last 15 minutes' worth


def test_a_write_of_unknown_fate_is_left_out_until_settled() -> None:
    rep = warm(2)
    rep.add_pending(T, "a", post("op1", "e1", uncertain=True))
    rep.add_pending(T, "a", post("op2", "e2"))
    assert count(rep) == 3


def test_rows_for_a_held_agent_wait_until_the_replay_releases_it() -> None:
    rep = warm(0)
    rep.add_pending(T, "a", post("op1", "e1"))
    rep.hold([(T, "a")])
    # PostgreSQL committed the batch; its row arrives before the replay hears of the commit.
    assert rep.upsert(base(12, 1)) is False
    assert count(rep) == 1  # not 2: the base is held at the state before the batch
    rep.replace_all([T], [base(12, 1)])  # a resync meanwhile is held back too
    assert count(rep) == 1
    rep.drop_pending(T, "a", "op1")
    rep.release([(T, "a")])
    assert count(rep) == 1
    rec = rep.get(T, "a")
    assert rec is not None and rec.version == 12


def test_a_release_applies_only_the_newest_buffered_row() -> None:
    rep = warm(0)
    rep.hold([(T, "a")])
    rep.upsert(base(14, 4))
    rep.upsert(base(13, 3))
    rep.release([(T, "a")])
    rec = rep.get(T, "a")
    assert rec is not None and (rec.version, rec.task_count) == (14, 4)
    rep.release([(T, "a")])  # releasing again changes nothing
    assert count(rep) == 4


def test_the_kept_orders_and_sums_answer_as_a_full_scan_would() -> None:
    """Random rows, pending writes, drops and resyncs: the walk down the kept order and the kept
    sums give what ranking and counting every agent afresh gives."""
    import random
    from datetime import timedelta

    from proxy.registry import matching
    from proxy.registry.models import AgentQuery

    rng = random.Random(11)
    tasks, langs = ["code", "review", "docs"], ["python", "go", "rust"]
    rep = Replica()
    version = 0

    def row(agent_id: str) -> AgentRecord:
        nonlocal version
        version += 1
        body = {
            "agent_id": agent_id,
            "name": agent_id,
            "model_family": "gpt",
            "capabilities": {
                "task_types": rng.sample(tasks, rng.randint(1, 2)),
                "languages": rng.sample(langs, rng.randint(1, 2)),
                "specializations": [],
            },
            "max_concurrent_tasks": rng.choice([4, 10]),
        }
        rec = apply_write("register", T, {"body": body}, None, NOW)
        assert rec is not None
        n = rng.randint(0, 20)
        return rec.evolve(
            version=version,
            task_count=n,
            success_count=rng.randint(0, n),
            quality_sum=rng.random() * n,
            active_tasks=rng.randint(0, 4),
            last_heartbeat_at=NOW - timedelta(minutes=rng.randint(0, 10)),
        )

    ids = [f"a{i:02d}" for i in range(40)]
    rep.replace_all([T], [row(a) for a in ids])
    queries = [
        AgentQuery.model_validate(q)
        for q in (
            {"limit": 100},
            {"task_type": "code", "limit": 5},
            {"task_type": "review", "languages": ["go"], "limit": 10},
            {"max_utilization": 0.5, "limit": 7},
            {"min_success_rate": 0.4, "task_type": "docs", "limit": 3},
        )
    ]

    def check() -> None:
        everyone = [r for a in ids if (r := rep.get(T, a)) is not None and r.deleted_at is None]
        for q in queries:
            passing = (r for r in everyone if matching.matches(r, q))
            expected = sorted(passing, key=matching.sort_key)
            assert rep.query(T, q) == expected[: q.limit], q
        kept = rep.tenant_stats(T, NOW)
        scanned = matching.stats(everyone, NOW)
        for key, value in scanned.items():
            if isinstance(value, float):
                assert abs(kept[key] - value) < 1e-9, key
            else:
                assert kept[key] == value, key

    check()
    for step in range(300):
        agent = rng.choice(ids)
        roll = rng.random()
        if roll < 0.3:
            rep.upsert(row(agent))
        elif roll < 0.6:
            rep.add_pending(T, agent, post(f"op{step}", f"e{step}"))
        elif roll < 0.75:
            t_pending = rep._tenants[T].pending.get(agent)
            if t_pending:
                rep.drop_pending(T, agent, t_pending[0].op_id)
        elif roll < 0.8:
            gone = rep.get(T, agent)
            if gone is not None:
                version += 1
                rep.upsert(gone.evolve(version=version, deleted_at=NOW))
        elif roll < 0.85:
            rep.replace_all([T], [row(a) for a in ids if rng.random() < 0.9])
        if step % 10 == 0:
            check()
    check()


def agent(agent_id: str, version: int, *, deleted: bool = False) -> AgentRecord:
    body = {
        "agent_id": agent_id,
        "name": agent_id,
        "model_family": "gpt",
        "capabilities": {"task_types": ["code"], "languages": [], "specializations": []},
    }
    rec = apply_write("register", "w", {"body": body}, None, NOW)
    assert rec is not None
    return rec.evolve(version=version, deleted_at=NOW if deleted else None)


def test_a_tenant_written_to_and_never_read_holds_no_growing_backlog_of_changes() -> None:
    """Agents registered and unregistered by the thousand in a tenant no read ever asks for:
    what the replica keeps for them stays bounded (it grew with every agent id once)."""
    rep = Replica()
    rep.replace_all(["w"], [])
    version = 0
    for n in range(5 * UNFILED_MAX):
        version += 2
        rep.upsert(agent(f"a{n}", version - 1))
        rep.upsert(agent(f"a{n}", version, deleted=True))
        assert len(rep._tenants["w"].dirty) < UNFILED_MAX
    assert rep.count("w") == 0 and rep.size == 0
    rep.upsert(agent("kept", version + 1))
    assert [r.agent_id for r in rep.query("w", AgentQuery(task_type="code"))] == ["kept"]


def test_a_full_resync_files_its_agents_once_at_the_end() -> None:
    rep = Replica()
    records = [agent(f"a{n}", n + 1) for n in range(2 * UNFILED_MAX + 5)]
    rep.replace_all(["w"], records)
    assert rep.count("w") == len(records)
    assert not rep._tenants["w"].dirty


def test_a_write_of_an_event_that_a_write_of_unknown_fate_reported_is_of_unknown_fate() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1", uncertain=True))
    again = post("op2", "e1")  # the client sent the event again during the outage
    rep.add_pending(T, "a", again)
    assert again.uncertain
    assert count(rep) == 3
    # The first write had committed: PostgreSQL's row counts the event, and it shows once.
    rep.upsert(base(11, 4))
    assert count(rep) == 4
    other = post("op3", "e2")
    rep.add_pending(T, "a", other)
    assert not other.uncertain and count(rep) == 5
    # Settled, the doubt goes with them (a write kept, another event's, leaves it gone too).
    rep.drop_pending(T, "a", "op1")
    rep.drop_pending(T, "a", "op2")
    later = post("op4", "e1")
    rep.add_pending(T, "a", later)
    assert not later.uncertain


def test_the_doubt_over_an_event_outlives_a_full_resync() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1", uncertain=True))
    rep.replace_all([T, "other"], [base(11, 4)])
    again = post("op2", "e1")
    rep.add_pending(T, "a", again)
    assert again.uncertain and count(rep) == 4


def test_a_write_committed_while_a_replay_batch_holds_its_agent_shows_until_the_hold_ends() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1"))  # journaled during an outage
    assert count(rep) == 4
    rep.hold([(T, "a")])  # the replay's batch with op1 is in flight
    # A write sent before the outage commits now: its row (3 + e2) must wait for the batch,
    # and the write shows from the overlay meanwhile.
    rep.committed(base(12, 4), post("op2", "e2"))
    assert count(rep) == 5
    # The batch commits: op1 leaves the overlay, the hold ends, PostgreSQL's row is the base.
    rep.settled(T, "a", "op1", "e1")
    rep.release([(T, "a")])
    rep.upsert(base(13, 5))
    assert count(rep) == 5
    assert not rep.has_pending(T, "a")
    # The event was counted when the hold ended: sent again, it is not shown twice.
    rep.add_pending(T, "a", post("op3", "e2"))
    assert count(rep) == 5


def test_a_write_settled_while_its_agent_is_held_shows_until_the_hold_ends() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1"))
    rep.add_pending(T, "a", post("op2", "e2"))
    assert count(rep) == 5
    # A batch of unknown fate holds the agent; a later batch settles op1 only. The base is still
    # the row from before both, so op1 must stay shown.
    rep.hold([(T, "a")])
    rep.settled(T, "a", "op1", "e1")
    assert count(rep) == 5 and rep.has_pending(T, "a")
    rep.settled(T, "a", "op2", "e2")
    rep.release([(T, "a")])
    rep.upsert(base(12, 5))
    assert count(rep) == 5 and not rep.has_pending(T, "a")
    # Both events were counted when the hold ended.
    rep.add_pending(T, "a", post("op3", "e1"))
    assert count(rep) == 5


def test_a_write_settled_with_no_hold_leaves_the_overlay_at_once() -> None:
    rep = warm(3)
    rep.add_pending(T, "a", post("op1", "e1"))
    rep.upsert(base(11, 4))
    rep.settled(T, "a", "op1", "e1")
    assert count(rep) == 4 and not rep.has_pending(T, "a")


def test_a_write_committed_with_no_hold_goes_to_the_base_at_once() -> None:
    rep = warm(3)
    rep.committed(base(11, 4), post("op1", "e1"))
    assert count(rep) == 4 and not rep.has_pending(T, "a")
    rep.add_pending(T, "a", post("op2", "e1"))
    assert count(rep) == 4


def test_holds_says_whether_a_row_would_change_nothing() -> None:
    rep = Replica()
    assert not rep.holds("w", "a", 1)  # no such tenant
    rep.replace_all(["w"], [agent("a", 5)])
    assert rep.holds("w", "a", 5) and rep.holds("w", "a", 4)
    assert not rep.holds("w", "a", 6)
    assert not rep.holds("w", "b", 1)
    # A replay holds the agent: its rows go to the buffer, so none is said to change nothing.
    rep.hold([("w", "a")])
    assert not rep.holds("w", "a", 5)
    rep.release([("w", "a")])
    assert rep.holds("w", "a", 5)
    rep.upsert(agent("a", 7, deleted=True))
    assert not rep.holds("w", "a", 7)
