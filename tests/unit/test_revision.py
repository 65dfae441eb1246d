"""The replica's overlay counts revisions exactly as PostgreSQL does, and snapshots keep them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.apply import PROVISIONAL_VERSION, apply_write

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def body(agent_id: str = "a", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent_id": agent_id,
        "name": "A",
        "model_family": "gpt",
        "capabilities": {"task_types": ["code"], "languages": ["python"], "specializations": []},
    }
    out.update(kw)
    return out


def registered(revision: int = 1) -> AgentRecord:
    rec = apply_write("register", "t", {"body": body()}, None, NOW)
    assert rec is not None
    return rec.evolve(version=41, revision=revision)


def patch(rec: AgentRecord | None, data: dict[str, Any], if_match: int | None = None) -> Any:
    payload = {"agent_id": "a", "body": data, "if_match": if_match}
    return apply_write("patch", "t", payload, rec, NOW)


def test_a_registration_starts_at_1() -> None:
    rec = apply_write("register", "t", {"body": body()}, None, NOW)
    assert rec is not None and rec.revision == 1 and rec.version == PROVISIONAL_VERSION


@pytest.mark.parametrize(
    ("data", "step"),
    [
        ({"name": "B"}, 1),
        ({"name": "A"}, 0),
        ({"model_family": "claude"}, 1),
        ({"model_family": "gpt"}, 0),
        ({"max_concurrent_tasks": 3}, 1),
        ({"max_concurrent_tasks": 10}, 0),
        ({"capabilities": {"task_types": ["code"], "languages": ["python"]}}, 0),
        ({"capabilities": {"task_types": ["code"]}}, 1),
        ({"capabilities": {"task_types": ["code"], "specializations": ["x"]}}, 1),
        ({"name": "A", "max_concurrent_tasks": 11}, 1),
        ({"name": "B", "model_family": "claude", "max_concurrent_tasks": 11}, 1),
    ],
)  # fmt: skip
def test_a_patch_moves_it_by_one_when_it_changes_something(data: dict[str, Any], step: int) -> None:
    rec = patch(registered(5), data)
    assert rec.revision == 5 + step


def test_if_match_compares_against_the_revision_not_the_version() -> None:
    rec = registered(5)
    assert patch(rec, {"name": "B"}, if_match=5).name == "B"
    with pytest.raises(errors.PreconditionFailed, match="revision"):
        patch(rec, {"name": "B"}, if_match=rec.version)


def test_reports_leave_it_alone() -> None:
    rec = registered(3)
    later = (NOW + timedelta(seconds=1)).isoformat()
    reports: list[tuple[str, dict[str, Any]]] = [
        ("heartbeat", {"observed_at": later}),
        ("load", {"body": {"active_tasks": 2, "queued_tasks": 1, "observed_at": later}}),
        ("performance", {"body": {"success": True, "quality_score": 1.0, "latency_ms": 3.0}}),
    ]
    for kind, payload in reports:
        payload["agent_id"] = "a"
        after = apply_write(kind, "t", payload, rec, NOW)
        assert after is not None and after.revision == 3, kind
        rec = after


def test_a_reregistration_continues_from_the_unregistered_row() -> None:
    gone = apply_write("unregister", "t", {"agent_id": "a"}, registered(4), NOW)
    assert gone is not None and gone.deleted_at is not None and gone.revision == 4
    with pytest.raises(errors.NotFound):
        patch(gone, {"name": "B"})
    again = apply_write("register", "t", {"body": body(name="Z")}, gone, NOW)
    assert again is not None and again.deleted_at is None and again.revision == 5
    # Unregistering what is not there is still nothing.
    assert apply_write("unregister", "t", {"agent_id": "a"}, None, NOW) is None


def test_the_snapshot_keeps_it_and_an_older_snapshot_still_loads() -> None:
    rec = registered(7)
    row = orjson.loads(orjson.dumps(rec.to_snapshot()))
    assert AgentRecord.from_snapshot(row) == rec
    old = row[:20]  # written before the revision existed
    loaded = AgentRecord.from_snapshot(old)
    assert loaded.revision == 1
    assert loaded.evolve(revision=7) == rec
