"""Capability matching and the agent record, without a database: every filter at its boundary,
the score term by term, the order, the reasons and the stats; the record's derived figures and
its snapshot form. The integration tests check the same rules through the API; these pin each
one down exactly, so that a changed constant or comparison is noticed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from proxy.registry import matching
from proxy.registry.agent import HEARTBEAT_TIMEOUT, AgentRecord
from proxy.registry.models import AgentQuery

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def agent(agent_id: str = "a", **changes: Any) -> AgentRecord:
    fields: dict[str, Any] = {
        "tenant_id": "t",
        "agent_id": agent_id,
        "name": f"agent {agent_id}",
        "model_family": "fam",
        "task_types": ("summarize", "translate"),
        "languages": ("en", "fr"),
        "specializations": ("legal",),
        "max_concurrent_tasks": 4,
        "active_tasks": 1,
        "queued_tasks": 2,
        "load_observed_at": NOW - timedelta(seconds=3),
        "registered_at": NOW - timedelta(days=1),
        "last_heartbeat_at": NOW - timedelta(seconds=30),
        "updated_at": NOW - timedelta(seconds=10),
        "version": 7,
        "deleted_at": None,
        "task_count": 0,
        "success_count": 0,
        "quality_sum": 0.0,
        "latency_ms_sum": 0.0,
        "revision": 3,
    }
    fields.update(changes)
    return AgentRecord(**fields)


def query(**params: Any) -> AgentQuery:
    return AgentQuery(**params)


def decoded(ranked: list[orjson.Fragment]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = orjson.loads(orjson.dumps(ranked))
    return result


# -- the record -------------------------------------------------------------------------------


def test_utilization_is_active_over_max_capped_at_one() -> None:
    assert agent(active_tasks=1, max_concurrent_tasks=4).utilization == 0.25
    assert agent(active_tasks=4, max_concurrent_tasks=4).utilization == 1.0
    assert agent(active_tasks=9, max_concurrent_tasks=4).utilization == 1.0


def test_success_rate_and_performance() -> None:
    fresh = agent()
    assert fresh.success_rate is None
    assert fresh.performance() == {
        "task_count": 0,
        "success_rate": None,
        "average_quality": None,
        "average_latency_ms": None,
    }
    seasoned = agent(task_count=4, success_count=3, quality_sum=2.0, latency_ms_sum=100.0)
    assert seasoned.success_rate == 0.75
    assert seasoned.performance() == {
        "task_count": 4,
        "success_rate": 0.75,
        "average_quality": 0.5,
        "average_latency_ms": 25.0,
    }


def test_status_turns_unresponsive_just_after_the_heartbeat_timeout() -> None:
    assert timedelta(minutes=5) == HEARTBEAT_TIMEOUT
    at_limit = agent(last_heartbeat_at=NOW - HEARTBEAT_TIMEOUT)
    assert at_limit.status(NOW) == "active"
    late = agent(last_heartbeat_at=NOW - HEARTBEAT_TIMEOUT - timedelta(microseconds=1))
    assert late.status(NOW) == "unresponsive"


def test_public_document() -> None:
    rec = agent(task_count=2, success_count=1, quality_sum=1.5, latency_ms_sum=30.0)
    assert orjson.loads(rec.public_json(NOW)) == {
        "agent_id": "a",
        "name": "agent a",
        "model_family": "fam",
        "capabilities": {
            "task_types": ["summarize", "translate"],
            "languages": ["en", "fr"],
            "specializations": ["legal"],
        },
        "max_concurrent_tasks": 4,
        "status": "active",
        "registered_at": (NOW - timedelta(days=1)).isoformat(),
        "last_heartbeat_at": (NOW - timedelta(seconds=30)).isoformat(),
        "updated_at": (NOW - timedelta(seconds=10)).isoformat(),
        "version": 7,
        "revision": 3,
        "load": {"active_tasks": 1, "queued_tasks": 2, "utilization": 0.25},
        "performance": {
            "task_count": 2,
            "success_rate": 0.5,
            "average_quality": 0.75,
            "average_latency_ms": 15.0,
        },
    }


def test_public_json_is_cached_per_status() -> None:
    rec = agent(last_heartbeat_at=NOW)
    first = rec.public_json(NOW)
    assert orjson.loads(first)["status"] == "active"
    assert rec.public_json(NOW) is first
    later = NOW + HEARTBEAT_TIMEOUT + timedelta(seconds=1)
    stale = rec.public_json(later)
    assert orjson.loads(stale)["status"] == "unresponsive"
    assert rec.public_json(later) is stale
    assert orjson.loads(rec.public_json(NOW))["status"] == "active"


def test_snapshot_round_trip_and_positions() -> None:
    rec = agent(deleted_at=NOW, task_count=2, success_count=1, quality_sum=1.5)
    # The row as the snapshot file holds it: orjson writes tuples as arrays and datetimes in
    # their ISO form.
    row = orjson.loads(orjson.dumps(rec.to_snapshot()))
    assert row[0:4] == ["t", "a", "agent a", "fam"]
    assert row[4:7] == [["summarize", "translate"], ["en", "fr"], ["legal"]]
    assert row[7:10] == [4, 1, 2]
    assert row[10] == (NOW - timedelta(seconds=3)).isoformat()
    assert row[15] == NOW.isoformat()
    assert row[14] == 7
    assert row[16:21] == [2, 1, 1.5, 0.0, 3]
    assert AgentRecord.from_snapshot(row) == rec


def test_snapshot_without_optional_times_or_revision() -> None:
    rec = agent(load_observed_at=None, revision=1)
    row = orjson.loads(orjson.dumps(rec.to_snapshot()))
    assert row[10] is None and row[15] is None
    assert AgentRecord.from_snapshot(row[:20]) == rec


def test_evolve_makes_a_new_record() -> None:
    rec = agent()
    changed = rec.evolve(name="other", version=8)
    assert (changed.name, changed.version) == ("other", 8)
    assert rec.name == "agent a"


# -- filters ----------------------------------------------------------------------------------


def test_everything_matches_an_empty_query() -> None:
    assert matching.matches(agent(), query())


def test_a_deleted_agent_never_matches() -> None:
    assert not matching.matches(agent(deleted_at=NOW), query())


def test_task_type() -> None:
    assert matching.matches(agent(), query(task_type="translate"))
    assert not matching.matches(agent(), query(task_type="code"))


def test_languages_and_specializations_need_all_of_them() -> None:
    assert matching.matches(agent(), query(languages=["en", "fr"]))
    assert not matching.matches(agent(), query(languages=["en", "de"]))
    assert matching.matches(agent(), query(specializations=["legal"]))
    assert not matching.matches(agent(), query(specializations=["legal", "medical"]))


def test_max_utilization_is_strict() -> None:
    half = agent(active_tasks=2, max_concurrent_tasks=4)
    assert not matching.matches(half, query(max_utilization=0.5))
    assert matching.matches(half, query(max_utilization=0.51))


def test_min_success_rate_is_inclusive_and_needs_a_history() -> None:
    seasoned = agent(task_count=4, success_count=3)
    assert matching.matches(seasoned, query(min_success_rate=0.75))
    assert not matching.matches(seasoned, query(min_success_rate=0.76))
    assert not matching.matches(agent(), query(min_success_rate=0.1))
    # Zero asks for nothing: an agent without history passes.
    assert matching.matches(agent(), query(min_success_rate=0.0))


# -- score and order --------------------------------------------------------------------------


def test_constants() -> None:
    assert (matching.PRIOR, matching.PRIOR_WEIGHT) == (0.5, 5.0)
    assert (matching.W_SUCCESS, matching.W_QUALITY, matching.W_CAPACITY) == (0.5, 0.2, 0.3)


def test_a_new_idle_agent_scores_the_prior_and_full_capacity() -> None:
    assert matching.score(agent(active_tasks=0)) == pytest.approx(0.5 * 0.5 + 0.2 * 0.5 + 0.3)


def test_score_term_by_term() -> None:
    rec = agent(task_count=5, success_count=5, quality_sum=2.5, active_tasks=1)
    success = (5 + 2.5) / 10
    quality = (2.5 + 2.5) / 10
    expected = 0.5 * success + 0.2 * quality + 0.3 * 0.75
    assert matching.score(rec) == pytest.approx(expected, abs=1e-12)


def test_order_is_score_then_id() -> None:
    busy = agent("a", active_tasks=4)
    idle_b = agent("b", active_tasks=0)
    idle_c = agent("c", active_tasks=0)
    assert matching.sort_key(idle_b) < matching.sort_key(idle_c) < matching.sort_key(busy)
    ranked = orjson.loads(orjson.dumps(matching.rank([busy, idle_c, idle_b], query(limit=2), NOW)))
    assert [r["agent"]["agent_id"] for r in ranked] == ["b", "c"]
    assert ranked[0]["match_score"] == round(matching.score(idle_b), 6)
    assert ranked[0]["agent"] == orjson.loads(idle_b.public_json(NOW))


def test_ordered_records_are_taken_as_they_come() -> None:
    # The replica hands them over best first: rank keeps that order and stops at the limit.
    first, second, third = agent("c"), agent("b", active_tasks=4), agent("a")
    ranked = matching.rank([first, second, third], query(limit=2), NOW, ordered=True)
    assert [orjson.dumps(orjson.loads(orjson.dumps(r))["agent"]) for r in ranked] == [
        first.public_json(NOW),
        second.public_json(NOW),
    ]


def test_what_matching_derives_from_a_record_is_kept_with_it() -> None:
    rec = agent(task_count=4, success_count=3, quality_sum=2.0)
    q = query(task_type="code")
    first = matching.reasons(rec, q)
    assert matching.reasons(rec, q) == first
    assert matching.reasons(rec, query(task_type="docs"))[1:] == first[1:]
    # A new version of the agent is a new record: nothing carried over from the old one.
    busier = rec.evolve(active_tasks=rec.max_concurrent_tasks)
    assert matching.reasons(busier, q)[-1] != first[-1]
    assert matching.sort_key(busier) > matching.sort_key(rec)


def test_scores_equal_to_nine_decimals_tie_on_the_id() -> None:
    assert matching.sort_key(agent("z")) == (-round(matching.score(agent("z")), 9), "z")


def test_reasons_without_history() -> None:
    q = query(task_type="translate", languages=["en", "fr"], specializations=["legal"])
    assert matching.reasons(agent(), q) == [
        "handles task type translate",
        "speaks en, fr",
        "specializes in legal",
        "no task history yet (neutral prior)",
        "utilization 25% (1/4)",
    ]


def test_reasons_with_history_and_no_filters() -> None:
    rec = agent(task_count=4, success_count=3, quality_sum=3.2, active_tasks=3)
    assert matching.reasons(rec, query()) == [
        "success rate 75% over 4 tasks",
        "average quality 0.80",
        "utilization 75% (3/4)",
    ]


def test_a_result_is_encoded_as_its_document_would_be() -> None:
    # Each result is put together from pieces encoded once per record; the bytes must be those
    # of the document encoded whole, with the query's reasons before the agent's own.
    rec = agent(task_count=3, success_count=2, quality_sum=2.4, active_tasks=0)
    for q in (query(), query(task_type="summarize", languages=["en", "fr"]), query(limit=1)):
        for now in (NOW, NOW + timedelta(hours=1)):  # active, then unresponsive
            [result] = matching.rank([rec], q, now)
            whole = {
                "agent": orjson.loads(rec.public_json(now)),
                "match_score": round(matching.score(rec), 6),
                "match_reasons": matching.reasons(rec, q),
            }
            assert orjson.dumps(result) == orjson.dumps(whole)


def test_rank_carries_the_reasons() -> None:
    [only] = decoded(matching.rank([agent()], query(task_type="summarize"), NOW))
    assert only["match_reasons"][0] == "handles task type summarize"


# -- stats ------------------------------------------------------------------------------------


def test_stats_of_nothing() -> None:
    assert matching.stats([], NOW) == {
        "total_agents": 0,
        "active_agents": 0,
        "idle_agents": 0,
        "average_utilization": 0.0,
        "average_success_rate": None,
    }


def test_stats() -> None:
    records = [
        agent("a", active_tasks=0),  # active and idle
        agent("b", active_tasks=2, task_count=4, success_count=2),  # active, busy
        agent(
            "c",
            active_tasks=0,
            last_heartbeat_at=NOW - timedelta(hours=1),
            task_count=2,
            success_count=2,
        ),  # unresponsive: neither active nor idle
        agent("d", deleted_at=NOW, active_tasks=4),  # deleted: not counted at all
    ]
    assert matching.stats(records, NOW) == {
        "total_agents": 3,
        "active_agents": 2,
        "idle_agents": 1,
        "average_utilization": pytest.approx(0.5 / 3),
        "average_success_rate": 0.75,
    }


def test_reasons_join_several_specializations() -> None:
    q = query(specializations=["legal", "tax"])
    rec = agent(specializations=("legal", "tax"))
    assert "specializes in legal, tax" in matching.reasons(rec, q)


def test_match_score_is_rounded_to_six_decimals() -> None:
    rec = agent(
        task_count=7, success_count=2, quality_sum=3.3, active_tasks=1, max_concurrent_tasks=3
    )
    [ranked] = decoded(matching.rank([rec], query(), NOW))
    assert ranked["match_score"] == round(matching.score(rec), 6)
    assert ranked["match_score"] != round(matching.score(rec), 7)


def test_a_deleted_agent_anywhere_in_the_list_is_skipped() -> None:
    records = [agent("gone", deleted_at=NOW), agent("a", active_tasks=0), agent("b")]
    assert matching.stats(records, NOW)["total_agents"] == 2
