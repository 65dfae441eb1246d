"""Every endpoint of the HTTP API against a real PostgreSQL: success paths and documented errors.

Each test registers what it needs under the fresh tenant of its `tokens`, and checks the effect
of writes in PostgreSQL itself through the `db` connection, not only through the API.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from proxy.http.routes import ROUTES
from proxy.registry.models import ID_PATTERN
from tests.conftest import Api, AppFactory, Tokens, agent_body, eventually

PROBLEM_BASE = "https://registry-proxy.dev/problems/"


# ---- helpers ---------------------------------------------------------------------------------


def assert_problem(
    status: int, body: Any, headers: Any, expected: int, slug: str | None = None
) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    assert body["status"] == expected
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key]
    assert body["type"].startswith(PROBLEM_BASE)
    if slug is not None:
        assert body["type"].endswith("/" + slug), body


async def agent_row(db: asyncpg.Connection, tenant: str, agent_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT * FROM agents WHERE tenant_id = $1 AND agent_id = $2", tenant, agent_id
    )
    return dict(row) if row is not None else None


async def tenant_state(db: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    """Everything PostgreSQL holds for one tenant, in a comparable form."""
    agents = await db.fetch("SELECT * FROM agents WHERE tenant_id = $1 ORDER BY agent_id", tenant)
    events = await db.fetch(
        "SELECT * FROM performance_events WHERE tenant_id = $1 ORDER BY event_id", tenant
    )
    ops = await db.fetchval("SELECT count(*) FROM operations WHERE tenant_id = $1", tenant)
    audit = await db.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", tenant)
    count = await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", tenant)
    return {
        "agents": [dict(r) for r in agents],
        "events": [dict(r) for r in events],
        "operations": ops,
        "audit": audit,
        "agent_count": count,
    }


def load_body(active: int, queued: int = 0, at: datetime | None = None) -> dict[str, Any]:
    when = at or datetime.now(UTC)
    return {"active_tasks": active, "queued_tasks": queued, "observed_at": when.isoformat()}


def perf_body(
    success: bool = True, quality: float = 0.8, latency: float = 120.0, event_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"success": success, "quality_score": quality, "latency_ms": latency}
    if event_id is not None:
        body["event_id"] = event_id
    return body


async def register(api: Api, agent_id: str, **kw: Any) -> dict[str, Any]:
    status, body, _ = await api.call("POST", "/v1/agents", agent_body(agent_id, **kw))
    assert status == 201, body
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [r["agent"]["agent_id"] for r in body["results"]]


# ---- register --------------------------------------------------------------------------------


async def test_register_answers_201_with_location_etag_and_the_agent(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    sent = agent_body(
        "reg-1",
        task_types=["code", "review"],
        languages=["python", "go"],
        specializations=["security"],
        max_concurrent_tasks=4,
    )
    status, body, headers = await api.call("POST", "/v1/agents", sent)
    assert status == 201, body
    assert headers["Location"] == "/v1/agents/reg-1"
    assert body["revision"] == 1
    assert headers["ETag"] == f'"{body["revision"]}"'
    assert headers["X-Registry-Source"] == "database"
    assert body["agent_id"] == "reg-1"
    assert body["name"] == sent["name"]
    assert body["model_family"] == "gpt"
    assert body["capabilities"] == sent["capabilities"]
    assert body["max_concurrent_tasks"] == 4
    assert body["status"] == "active"
    assert body["load"] == {"active_tasks": 0, "queued_tasks": 0, "utilization": 0.0}
    assert body["performance"] == {
        "task_count": 0,
        "success_rate": None,
        "average_quality": None,
        "average_latency_ms": None,
    }
    row = await agent_row(db, tokens.tenant, "reg-1")
    assert row is not None
    assert row["version"] == body["version"]
    assert row["revision"] == body["revision"]
    assert row["task_types"] == ["code", "review"]
    assert row["languages"] == ["python", "go"]
    assert row["specializations"] == ["security"]
    assert row["max_concurrent_tasks"] == 4
    assert row["deleted_at"] is None


async def test_register_defaults_max_concurrent_tasks_to_10(api: Api) -> None:
    body = await register(api, "reg-default")
    assert body["max_concurrent_tasks"] == 10


async def test_register_duplicate_is_409_duplicate_agent_and_keeps_the_first(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    first = await register(api, "dup", languages=["python"])
    status, body, headers = await api.call(
        "POST", "/v1/agents", agent_body("dup", name="Other name", languages=["rust"])
    )
    assert_problem(status, body, headers, 409, "duplicate-agent")
    row = await agent_row(db, tokens.tenant, "dup")
    assert row is not None
    assert row["name"] == first["name"]
    assert row["languages"] == ["python"]
    assert row["version"] == first["version"]
    assert (
        await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", tokens.tenant)
        == 1
    )


async def test_register_when_full_is_409_registry_full(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens
) -> None:
    api = await make_api(max_agents=2)
    await register(api, "full-1")
    await register(api, "full-2")
    status, body, headers = await api.call("POST", "/v1/agents", agent_body("full-3"))
    assert_problem(status, body, headers, 409, "registry-full")
    assert await agent_row(db, tokens.tenant, "full-3") is None
    assert (
        await db.fetchval(
            "SELECT count(*) FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL", tokens.tenant
        )
        == 2
    )
    # unregistering frees a place
    status, _, _ = await api.call("DELETE", "/v1/agents/full-1")
    assert status == 204
    await register(api, "full-3")


async def test_register_existing_agent_in_a_full_tenant_is_a_duplicate(
    make_api: AppFactory,
) -> None:
    api = await make_api(max_agents=2)
    await register(api, "full-1")
    await register(api, "full-2")
    status, body, headers = await api.call("POST", "/v1/agents", agent_body("full-1"))
    assert_problem(status, body, headers, 409, "duplicate-agent")


# ---- get -------------------------------------------------------------------------------------


async def test_get_answers_the_agent_with_derived_load_and_performance(api: Api) -> None:
    await register(api, "g1", max_concurrent_tasks=4)
    status, _, _ = await api.call("PUT", "/v1/agents/g1/load", load_body(3, 2))
    assert status == 200
    for success, quality, latency in (
        (True, 0.9, 100.0),
        (False, 0.3, 300.0),
        (True, 0.6, 200.0),
        (True, 0.2, 400.0),
    ):
        status, body, _ = await api.call(
            "POST", "/v1/agents/g1/performance", perf_body(success, quality, latency)
        )
        assert status == 201, body
    status, body, headers = await api.call("GET", "/v1/agents/g1")
    assert status == 200
    # Load and performance moved the version, not the revision the ETag is.
    assert body["revision"] == 1
    assert headers["ETag"] == f'"{body["revision"]}"'
    assert headers["X-Registry-Source"] == "database"
    assert body["load"] == {"active_tasks": 3, "queued_tasks": 2, "utilization": 0.75}
    perf = body["performance"]
    assert perf["task_count"] == 4
    assert perf["success_rate"] == pytest.approx(0.75)
    assert perf["average_quality"] == pytest.approx(0.5)
    assert perf["average_latency_ms"] == pytest.approx(250.0)


async def test_get_utilization_is_capped_at_1(api: Api) -> None:
    await register(api, "g-over", max_concurrent_tasks=2)
    status, body, _ = await api.call("PUT", "/v1/agents/g-over/load", load_body(5))
    assert status == 200
    assert body["load"]["utilization"] == 1.0


async def test_get_unknown_agent_is_404(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/agents/nobody")
    assert_problem(status, body, headers, 404, "not-found")


async def test_get_invalid_agent_id_is_422(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/agents/-starts-with-dash")
    assert_problem(status, body, headers, 422)
    assert body["errors"][0]["field"] == "agent_id"


# ---- query -----------------------------------------------------------------------------------


async def _query_fixture(api: Api) -> None:
    await register(api, "q-py", task_types=["code"], languages=["python"], specializations=["web"])
    await register(
        api,
        "q-pygo",
        task_types=["code", "review"],
        languages=["python", "go"],
        specializations=["web", "security"],
    )
    await register(api, "q-go", task_types=["review"], languages=["go"])
    await register(
        api, "q-rust", task_types=["code"], languages=["rust"], specializations=["security"]
    )


async def test_query_without_filters_returns_every_agent_with_score_and_reasons(
    api: Api,
) -> None:
    await _query_fixture(api)
    status, body, headers = await api.call("GET", "/v1/agents")
    assert status == 200
    assert headers["X-Registry-Source"] == "database"
    assert sorted(ids(body)) == ["q-go", "q-py", "q-pygo", "q-rust"]
    for result in body["results"]:
        assert 0.0 <= result["match_score"] <= 1.0
        assert isinstance(result["match_reasons"], list)
        assert result["match_reasons"]
        assert all(isinstance(r, str) for r in result["match_reasons"])
    # no history and no load: all equal, ordered by agent id
    assert ids(body) == sorted(ids(body))
    assert {r["match_score"] for r in body["results"]} == {0.65}  # 0.5*0.5 + 0.2*0.5 + 0.3


async def test_query_by_task_type(api: Api) -> None:
    await _query_fixture(api)
    status, body, _ = await api.call("GET", "/v1/agents?task_type=review")
    assert status == 200
    assert ids(body) == ["q-go", "q-pygo"]
    for result in body["results"]:
        assert "handles task type review" in result["match_reasons"]


async def test_query_by_languages_comma_separated_and_repeated(api: Api) -> None:
    await _query_fixture(api)
    status, comma, _ = await api.call("GET", "/v1/agents?languages=python,go")
    assert status == 200
    assert ids(comma) == ["q-pygo"]
    status, repeated, _ = await api.call("GET", "/v1/agents?languages=python&languages=go")
    assert status == 200
    assert ids(repeated) == ["q-pygo"]
    status, single, _ = await api.call("GET", "/v1/agents", params={"languages": "python"})
    assert status == 200
    assert ids(single) == ["q-py", "q-pygo"]
    # compared exactly: no prefix and no case folding
    status, none, _ = await api.call("GET", "/v1/agents?languages=Python")
    assert status == 200
    assert ids(none) == []


async def test_query_by_specializations(api: Api) -> None:
    await _query_fixture(api)
    status, body, _ = await api.call("GET", "/v1/agents?specializations=security")
    assert status == 200
    assert ids(body) == ["q-pygo", "q-rust"]
    status, body, _ = await api.call("GET", "/v1/agents?specializations=security,web")
    assert status == 200
    assert ids(body) == ["q-pygo"]


async def test_query_max_utilization_is_strictly_below(api: Api) -> None:
    for agent_id, active in (("u-0", 0), ("u-5", 5), ("u-6", 6), ("u-10", 10)):
        await register(api, agent_id, max_concurrent_tasks=10)
        status, _, _ = await api.call("PUT", f"/v1/agents/{agent_id}/load", load_body(active))
        assert status == 200
    status, body, _ = await api.call("GET", "/v1/agents?max_utilization=0.5")
    assert status == 200
    assert ids(body) == ["u-0"]  # 0.5 itself is excluded
    status, body, _ = await api.call("GET", "/v1/agents?max_utilization=0.6")
    assert sorted(ids(body)) == ["u-0", "u-5"]
    status, body, _ = await api.call("GET", "/v1/agents?max_utilization=1")
    assert sorted(ids(body)) == ["u-0", "u-5", "u-6"]


async def test_query_min_success_rate(api: Api) -> None:
    await register(api, "s-none")
    await register(api, "s-half")
    await register(api, "s-all")
    for success in (True, False):
        status, _, _ = await api.call("POST", "/v1/agents/s-half/performance", perf_body(success))
        assert status == 201
    status, _, _ = await api.call("POST", "/v1/agents/s-all/performance", perf_body(True))
    assert status == 201
    status, body, _ = await api.call("GET", "/v1/agents?min_success_rate=0.5")
    assert status == 200
    assert sorted(ids(body)) == ["s-all", "s-half"]
    status, body, _ = await api.call("GET", "/v1/agents?min_success_rate=0.51")
    assert ids(body) == ["s-all"]
    # an agent without history passes only at 0
    status, body, _ = await api.call("GET", "/v1/agents?min_success_rate=0")
    assert sorted(ids(body)) == ["s-all", "s-half", "s-none"]


async def test_query_limit_and_order(api: Api) -> None:
    for i in range(5):
        await register(api, f"lim-{i}")
    # lim-3 gets a proven record, lim-1 gets load: both move
    for _ in range(3):
        status, _, _ = await api.call("POST", "/v1/agents/lim-3/performance", perf_body(True, 1.0))
        assert status == 201
    status, _, _ = await api.call("PUT", "/v1/agents/lim-1/load", load_body(8))
    assert status == 200
    status, body, _ = await api.call("GET", "/v1/agents?limit=3")
    assert status == 200
    assert ids(body) == ["lim-3", "lim-0", "lim-2"]
    scores = [r["match_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    status, body, _ = await api.call("GET", "/v1/agents?limit=100")
    assert ids(body) == ["lim-3", "lim-0", "lim-2", "lim-4", "lim-1"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=x",
        "max_utilization=1.5",
        "min_success_rate=-0.1",
        "max_utilization=nan",
        "task_type=a&task_type=b",
        "unknown=1",
    ],
)
async def test_query_invalid_parameters_are_422(api: Api, query: str) -> None:
    status, body, headers = await api.call("GET", "/v1/agents?" + query)
    assert_problem(status, body, headers, 422)
    assert body["errors"]


async def test_a_capability_with_a_comma_is_refused(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    """Query strings separate capabilities with commas, so such a value could never be found."""
    status, body, headers = await api.call(
        "POST", "/v1/agents", agent_body("comma", languages=["c,d"])
    )
    assert_problem(status, body, headers, 422)
    assert "capabilities.languages.0" in {e["field"] for e in body["errors"]}
    assert await agent_row(db, tokens.tenant, "comma") is None
    await register(api, "no-comma", languages=["c"])
    status, body, headers = await api.call(
        "PATCH", "/v1/agents/no-comma", {"capabilities": {"task_types": ["a,b"]}}
    )
    assert_problem(status, body, headers, 422)


# ---- patch -----------------------------------------------------------------------------------


async def test_patch_changes_fields_and_bumps_version(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await register(api, "p1")
    patch = {
        "name": "Renamed",
        "max_concurrent_tasks": 3,
        "capabilities": {"task_types": ["plan"], "languages": ["go"]},
    }
    status, body, headers = await api.call("PATCH", "/v1/agents/p1", patch)
    assert status == 200, body
    assert body["version"] > before["version"]
    assert body["revision"] == before["revision"] + 1
    assert headers["ETag"] == f'"{body["revision"]}"'
    assert body["name"] == "Renamed"
    assert body["max_concurrent_tasks"] == 3
    assert body["capabilities"] == {
        "task_types": ["plan"],
        "languages": ["go"],
        "specializations": [],
    }
    assert body["model_family"] == before["model_family"]
    row = await agent_row(db, tokens.tenant, "p1")
    assert row is not None
    assert row["name"] == "Renamed"
    assert row["task_types"] == ["plan"]
    assert row["version"] == body["version"]
    assert row["revision"] == body["revision"]


async def test_patch_with_matching_if_match(api: Api) -> None:
    before = await register(api, "p-if")
    status, body, _ = await api.call(
        "PATCH", "/v1/agents/p-if", {"name": "ok"}, headers={"If-Match": f'"{before["revision"]}"'}
    )
    assert status == 200, body
    status, body2, _ = await api.call(
        "PATCH",
        "/v1/agents/p-if",
        {"name": "weak"},
        headers={"If-Match": f'W/"{body["revision"]}"'},
    )
    assert status == 200, body2
    status, body3, _ = await api.call(
        "PATCH", "/v1/agents/p-if", {"name": "any"}, headers={"If-Match": "*"}
    )
    assert status == 200, body3
    assert body3["name"] == "any"


async def test_patch_with_stale_if_match_is_412_and_changes_nothing(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    first = await register(api, "p-stale")
    status, second, _ = await api.call("PATCH", "/v1/agents/p-stale", {"name": "second"})
    assert status == 200
    before = await agent_row(db, tokens.tenant, "p-stale")
    status, body, headers = await api.call(
        "PATCH",
        "/v1/agents/p-stale",
        {"name": "third"},
        headers={"If-Match": f'"{first["revision"]}"'},
    )
    assert_problem(status, body, headers, 412, "precondition-failed")
    assert await agent_row(db, tokens.tenant, "p-stale") == before
    status, now, _ = await api.call("GET", "/v1/agents/p-stale")
    assert now["name"] == "second"
    assert now["version"] == second["version"]
    assert now["revision"] == second["revision"]


@pytest.mark.parametrize("value", ["abc", '"12"x', "12 13", '"-1"', "W/", '""', '"1.5"'])
async def test_patch_with_malformed_if_match_is_400(
    api: Api, db: asyncpg.Connection, tokens: Tokens, value: str
) -> None:
    await register(api, "p-bad")
    before = await agent_row(db, tokens.tenant, "p-bad")
    status, body, headers = await api.call(
        "PATCH", "/v1/agents/p-bad", {"name": "x"}, headers={"If-Match": value}
    )
    assert_problem(status, body, headers, 400)
    assert await agent_row(db, tokens.tenant, "p-bad") == before


async def test_patch_with_if_match_beyond_bigint_is_400(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "p-big")
    before = await agent_row(db, tokens.tenant, "p-big")
    for value in ('"9223372036854775808"', '"9999999999999999999"'):
        status, body, headers = await api.call(
            "PATCH", "/v1/agents/p-big", {"name": "x"}, headers={"If-Match": value}
        )
        assert_problem(status, body, headers, 400)
        assert "query argument" not in body["detail"]
    assert await agent_row(db, tokens.tenant, "p-big") == before


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"name": None},
        {"max_concurrent_tasks": 0},
        {"capabilities": {"task_types": []}},
        {"agent_id": "renamed"},
        {"status": "active"},
    ],
)
async def test_patch_empty_or_invalid_is_422(
    api: Api, db: asyncpg.Connection, tokens: Tokens, patch: dict[str, Any]
) -> None:
    await register(api, "p-empty")
    before = await agent_row(db, tokens.tenant, "p-empty")
    status, body, headers = await api.call("PATCH", "/v1/agents/p-empty", patch)
    assert_problem(status, body, headers, 422)
    assert body["errors"]
    assert await agent_row(db, tokens.tenant, "p-empty") == before


async def test_patch_unknown_agent_is_404(api: Api) -> None:
    status, body, headers = await api.call("PATCH", "/v1/agents/ghost", {"name": "x"})
    assert_problem(status, body, headers, 404, "not-found")


# ---- load ------------------------------------------------------------------------------------


async def test_put_load_sets_tasks_and_utilization(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await register(api, "l1", max_concurrent_tasks=8)
    status, body, headers = await api.call("PUT", "/v1/agents/l1/load", load_body(2, 7))
    assert status == 200, body
    assert body["load"] == {"active_tasks": 2, "queued_tasks": 7, "utilization": 0.25}
    assert body["version"] > before["version"]
    # A load report is not a change a PATCH could make: the ETag stays.
    assert body["revision"] == before["revision"]
    assert headers["ETag"] == f'"{before["revision"]}"'
    row = await agent_row(db, tokens.tenant, "l1")
    assert row is not None
    assert (row["active_tasks"], row["queued_tasks"]) == (2, 7)


async def test_put_load_older_observation_loses(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "l-lww")
    newer = datetime.now(UTC)
    status, first, _ = await api.call("PUT", "/v1/agents/l-lww/load", load_body(4, 1, newer))
    assert status == 200
    before = await agent_row(db, tokens.tenant, "l-lww")
    older = newer - timedelta(seconds=5)
    status, body, _ = await api.call("PUT", "/v1/agents/l-lww/load", load_body(9, 9, older))
    assert status == 200, body
    assert body["load"]["active_tasks"] == 4
    assert body["load"]["queued_tasks"] == 1
    assert body["version"] == first["version"]
    assert await agent_row(db, tokens.tenant, "l-lww") == before
    # the same instant or a later one wins
    status, body, _ = await api.call(
        "PUT", "/v1/agents/l-lww/load", load_body(6, 0, newer + timedelta(seconds=1))
    )
    assert status == 200
    assert body["load"]["active_tasks"] == 6


async def test_put_load_unknown_agent_is_404(api: Api) -> None:
    status, body, headers = await api.call("PUT", "/v1/agents/ghost/load", load_body(1))
    assert_problem(status, body, headers, 404, "not-found")


# ---- heartbeat -------------------------------------------------------------------------------


async def test_heartbeat_with_empty_body(api: Api, db: asyncpg.Connection, tokens: Tokens) -> None:
    before = await register(api, "h1")
    status, body, _ = await api.call("POST", "/v1/agents/h1/heartbeat")
    assert status == 200, body
    assert body["agent_id"] == "h1"
    assert body["status"] == "active"
    assert body["version"] > before["version"]
    seen = datetime.fromisoformat(body["last_heartbeat_at"])
    assert seen >= datetime.fromisoformat(before["last_heartbeat_at"])
    row = await agent_row(db, tokens.tenant, "h1")
    assert row is not None
    assert row["last_heartbeat_at"] == seen


async def test_heartbeat_with_json_empty_object_and_observed_at(api: Api) -> None:
    await register(api, "h2")
    status, body, _ = await api.call("POST", "/v1/agents/h2/heartbeat", {})
    assert status == 200, body
    later = datetime.now(UTC) + timedelta(seconds=2)
    status, body, _ = await api.call(
        "POST", "/v1/agents/h2/heartbeat", {"observed_at": later.isoformat()}
    )
    assert status == 200, body
    assert datetime.fromisoformat(body["last_heartbeat_at"]) == later
    # an older relayed heartbeat never moves it back
    status, body, _ = await api.call(
        "POST",
        "/v1/agents/h2/heartbeat",
        {"observed_at": (later - timedelta(minutes=1)).isoformat()},
    )
    assert status == 200
    assert datetime.fromisoformat(body["last_heartbeat_at"]) == later


async def test_heartbeat_unknown_agent_is_404(api: Api) -> None:
    status, body, headers = await api.call("POST", "/v1/agents/ghost/heartbeat")
    assert_problem(status, body, headers, 404, "not-found")


# ---- performance -----------------------------------------------------------------------------


async def test_performance_is_counted_once_per_event_id(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "perf")
    status, body, _ = await api.call(
        "POST", "/v1/agents/perf/performance", perf_body(True, 0.8, 100.0, "ev-1")
    )
    assert status == 201, body
    assert body == {
        "agent_id": "perf",
        "event_id": "ev-1",
        "counted": True,
        "performance": {
            "task_count": 1,
            "success_rate": 1.0,
            "average_quality": 0.8,
            "average_latency_ms": 100.0,
        },
    }
    status, again, _ = await api.call(
        "POST", "/v1/agents/perf/performance", perf_body(False, 0.1, 999.0, "ev-1")
    )
    assert status == 200, again
    assert again["counted"] is False
    assert again["event_id"] == "ev-1"
    assert again["performance"]["task_count"] == 1
    assert again["performance"]["success_rate"] == 1.0
    row = await agent_row(db, tokens.tenant, "perf")
    assert row is not None
    assert (row["task_count"], row["success_count"]) == (1, 1)
    assert row["quality_sum"] == pytest.approx(0.8)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tokens.tenant
        )
        == 1
    )


async def test_performance_without_event_id_gets_one_generated(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "perf-gen")
    status, body, _ = await api.call(
        "POST",
        "/v1/agents/perf-gen/performance",
        {**perf_body(False, 0.2, 50.0), "task_type": "code"},
    )
    assert status == 201, body
    assert body["counted"] is True
    assert re.match(ID_PATTERN, body["event_id"])
    row = await db.fetchrow(
        "SELECT * FROM performance_events WHERE tenant_id = $1 AND event_id = $2",
        tokens.tenant,
        body["event_id"],
    )
    assert row is not None
    assert row["agent_id"] == "perf-gen"
    assert row["success"] is False
    assert row["task_type"] == "code"
    # two posts without event_id are two outcomes
    status, second, _ = await api.call(
        "POST", "/v1/agents/perf-gen/performance", perf_body(False, 0.2, 50.0)
    )
    assert status == 201
    assert second["event_id"] != body["event_id"]
    assert second["performance"]["task_count"] == 2


async def test_performance_unknown_agent_is_404_and_records_no_event(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    status, body, headers = await api.call(
        "POST", "/v1/agents/ghost/performance", perf_body(event_id="ev-ghost")
    )
    assert_problem(status, body, headers, 404, "not-found")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tokens.tenant
        )
        == 0
    )


# ---- delete ----------------------------------------------------------------------------------


async def test_delete_is_idempotent_and_allows_re_registering(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "d1", languages=["python"])
    status, _, _ = await api.call("POST", "/v1/agents/d1/performance", perf_body())
    assert status == 201
    status, body, headers = await api.call("DELETE", "/v1/agents/d1")
    assert status == 204
    assert body is None
    row = await agent_row(db, tokens.tenant, "d1")
    assert row is not None
    assert row["deleted_at"] is not None
    status, body, _ = await api.call("DELETE", "/v1/agents/d1")
    assert status == 204
    status, body, headers = await api.call("GET", "/v1/agents/d1")
    assert_problem(status, body, headers, 404)
    status, body, _ = await api.call("GET", "/v1/agents")
    assert ids(body) == []
    status, body, _ = await api.call("POST", "/v1/agents/d1/heartbeat")
    assert status == 404
    # re-register: a fresh agent
    again = await register(api, "d1", languages=["go"])
    assert again["capabilities"]["languages"] == ["go"]
    assert again["performance"]["task_count"] == 0
    assert again["load"]["active_tasks"] == 0
    row = await agent_row(db, tokens.tenant, "d1")
    assert row is not None
    assert row["deleted_at"] is None
    assert (
        await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", tokens.tenant)
        == 1
    )


async def test_delete_never_registered_is_204(api: Api) -> None:
    status, body, _ = await api.call("DELETE", "/v1/agents/never")
    assert status == 204
    assert body is None


# ---- stats -----------------------------------------------------------------------------------


async def test_stats_match_the_registered_agents(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    status, empty, _ = await api.call("GET", "/v1/stats")
    assert status == 200
    assert empty == {
        "total_agents": 0,
        "active_agents": 0,
        "idle_agents": 0,
        "average_utilization": 0.0,
        "average_success_rate": None,
    }
    for agent_id in ("st-a", "st-b", "st-c", "st-d", "st-gone"):
        await register(api, agent_id, max_concurrent_tasks=10)
    for agent_id, active in (("st-a", 5), ("st-c", 10), ("st-d", 2)):
        status, _, _ = await api.call("PUT", f"/v1/agents/{agent_id}/load", load_body(active))
        assert status == 200
    for agent_id, success in (("st-a", True), ("st-a", False), ("st-b", True)):
        status, _, _ = await api.call(
            "POST", f"/v1/agents/{agent_id}/performance", perf_body(success)
        )
        assert status == 201
    status, _, _ = await api.call("DELETE", "/v1/agents/st-gone")
    assert status == 204
    # st-d has not been heard of for 10 minutes: unresponsive
    await db.execute(
        "UPDATE agents SET last_heartbeat_at = now() - interval '10 minutes' "
        "WHERE tenant_id = $1 AND agent_id = 'st-d'",
        tokens.tenant,
    )
    status, body, headers = await api.as_token(tokens.reader).call("GET", "/v1/stats")
    assert status == 200, body
    assert headers["X-Registry-Source"] == "database"
    assert body["total_agents"] == 4
    assert body["active_agents"] == 3
    assert body["idle_agents"] == 1  # st-b: active and no task running
    assert body["average_utilization"] == pytest.approx((0.5 + 0.0 + 1.0 + 0.2) / 4)
    assert body["average_success_rate"] == pytest.approx((0.5 + 1.0) / 2)


# ---- operations ------------------------------------------------------------------------------


async def test_operation_unknown_is_404(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/operations/no-such-op")
    assert_problem(status, body, headers, 404, "not-found")


async def test_operation_of_a_write_with_idempotency_key_is_applied(api: Api) -> None:
    status, _, _ = await api.call(
        "POST", "/v1/agents", agent_body("op-1"), headers={"Idempotency-Key": "key-op-1"}
    )
    assert status == 201
    status, body, _ = await api.call("GET", "/v1/operations/key-op-1")
    assert status == 200, body
    assert body["op_id"] == "key-op-1"
    assert body["status"] == "applied"
    assert body["kind"] == "register"
    assert body.get("reason") is None


async def test_operation_of_a_rejected_write_says_why(api: Api) -> None:
    status, _, _ = await api.call(
        "PATCH", "/v1/agents/ghost", {"name": "x"}, headers={"Idempotency-Key": "key-rej"}
    )
    assert status == 404
    status, body, _ = await api.call("GET", "/v1/operations/key-rej")
    assert status == 200
    assert body["status"] == "rejected"
    assert "not-found" in body["reason"]


async def test_operation_invalid_id_is_422(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/operations/.bad")
    assert_problem(status, body, headers, 422)


# ---- status, admin breaker, journal ----------------------------------------------------------


async def test_status_document(api: Api, tokens: Tokens) -> None:
    await register(api, "stat-1")
    status, body, _ = await api.as_token(tokens.reader).call("GET", "/v1/status")
    assert status == 200, body
    assert body["breaker"]["state"] == "closed"
    assert isinstance(body["breaker"]["transitions"], list)
    assert body["journal"]["depth"] == 0
    replica = body["replica"]
    assert isinstance(replica["agents"], int)
    assert replica["age_seconds"] is None or replica["age_seconds"] >= 0
    assert replica["partial"] is False
    assert body["pool"]["connected"] is True
    assert body["pool"]["max"] >= 1
    for key in ("in_use", "idle"):
        assert body["pool"][key] >= 0

    async def replica_sees_agent() -> bool:
        _, doc, _ = await api.call("GET", "/v1/status")
        return doc["replica"]["agents"] >= 1

    await eventually(replica_sees_agent, message="replica counts the registered agent")


async def test_only_an_admin_sees_the_process_heap(api: Api, tokens: Tokens) -> None:
    _, body, _ = await api.as_token(tokens.reader).call("GET", "/v1/status")
    assert "memory" not in body
    status, body, _ = await api.as_token(tokens.admin).call("GET", "/v1/status")
    assert status == 200, body
    memory = body["memory"]
    assert memory["python_blocks"] > 0
    if memory["glibc"]:
        assert memory["c_in_use_bytes"] > 0 and memory["c_free_bytes"] >= 0


async def test_admin_breaker_needs_the_admin_role(api: Api, tokens: Tokens) -> None:
    for token in (tokens.reader, tokens.writer):
        status, body, headers = await api.as_token(token).call(
            "POST", "/v1/admin/breaker", {"state": "forced_open"}
        )
        assert_problem(status, body, headers, 403, "forbidden")
    status, body, _ = await api.call("GET", "/v1/status")
    assert body["breaker"]["state"] == "closed"
    status, body, headers = await api.as_token(tokens.admin).call(
        "POST", "/v1/admin/breaker", {"state": "sideways"}
    )
    assert_problem(status, body, headers, 422)


async def test_forced_open_serves_reads_from_replica_and_journals_writes(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    admin = api.as_token(tokens.admin)
    created = await register(api, "br-1", languages=["python"])

    async def replica_has_it() -> bool:
        _, doc, _ = await api.call("GET", "/v1/status")
        return doc["replica"]["agents"] >= 1

    await eventually(replica_has_it, message="replica has the agent")

    status, body, _ = await admin.call(
        "POST", "/v1/admin/breaker", {"state": "forced_open", "reason": "maintenance"}
    )
    assert status == 200, body
    assert body["state"] == "forced_open"

    status, body, headers = await api.call("GET", "/v1/agents/br-1")
    assert status == 200, body
    assert headers["X-Registry-Source"] == "replica"
    assert "Age" in headers
    assert body["version"] == created["version"]
    status, body, headers = await api.call("GET", "/v1/agents?languages=python")
    assert status == 200
    assert headers["X-Registry-Source"] == "replica"
    assert ids(body) == ["br-1"]
    status, body, headers = await api.call("GET", "/v1/stats")
    assert status == 200
    assert headers["X-Registry-Source"] == "replica"
    assert body["total_agents"] == 1
    # Each read counts as a database call the breaker refused, as it did before the fallback.
    metrics = await (await api.client.get("/metrics")).text()
    for operation in ("get_agent", "query", "stats"):
        assert re.search(
            r"registry_proxy_db_call_duration_seconds_count\{"
            rf'operation="{operation}",outcome="rejected"\}} [1-9]',
            metrics,
        ), operation
    status, body, _ = await api.call("GET", "/v1/agents/br-missing")
    assert status == 404, body  # the replica is complete: it knows the agent is not there
    resp = await api.client.get("/readyz")
    assert resp.status == 200  # the replica is warm

    status, accepted, headers = await api.call("PATCH", "/v1/agents/br-1", {"name": "offline"})
    assert status == 202, accepted
    assert headers["X-Registry-Source"] == "journal"
    assert accepted["status"] == "pending"
    op_id = accepted["op_id"]
    assert headers["Location"] == f"/v1/operations/{op_id}"
    status, op, _ = await api.call("GET", f"/v1/operations/{op_id}")
    assert status == 200
    assert op["status"] == "pending"
    # read-your-writes from the replica, not yet in PostgreSQL
    status, body, headers = await api.call("GET", "/v1/agents/br-1")
    assert headers["X-Registry-Source"] == "replica"
    assert body["name"] == "offline"
    row = await agent_row(db, tokens.tenant, "br-1")
    assert row is not None
    assert row["name"] == created["name"]
    status, doc, _ = await api.call("GET", "/v1/status")
    assert doc["breaker"]["state"] == "forced_open"
    assert doc["journal"]["depth"] >= 1  # the patch (and anything else journaled meanwhile)

    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
    assert status == 200
    assert body["state"] == "closed"

    async def applied() -> bool:
        _, op, _ = await api.call("GET", f"/v1/operations/{op_id}")
        return op["status"] == "applied"

    await eventually(applied, message="journaled patch applied")
    row = await agent_row(db, tokens.tenant, "br-1")
    assert row is not None
    assert row["name"] == "offline"
    assert row["version"] > created["version"]

    async def drained() -> bool:
        _, doc, _ = await api.call("GET", "/v1/status")
        return doc["journal"]["depth"] == 0

    await eventually(drained, message="journal drained")
    status, doc, _ = await api.call("GET", "/v1/status")
    moves = [(t["from"], t["to"]) for t in doc["breaker"]["transitions"]]
    assert ("closed", "forced_open") in moves
    assert ("forced_open", "closed") in moves
    assert moves.index(("closed", "forced_open")) < moves.index(("forced_open", "closed"))
    status, body, headers = await api.call("GET", "/v1/agents/br-1")
    assert status == 200
    assert headers["X-Registry-Source"] == "database"
    assert body["name"] == "offline"


async def test_short_client_deadlines_do_not_open_the_breaker(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "impatient")
    answers = []
    # PostgreSQL is healthy; the agent's row is merely locked for a while by another session,
    # so each write outlives the short deadline its caller chose
    async with db.transaction():
        await db.execute(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = 'impatient' FOR UPDATE",
            tokens.tenant,
        )
        for _ in range(6):
            status, body, headers = await api.call(
                "PUT",
                "/v1/agents/impatient/load",
                load_body(1),
                headers={"X-Request-Timeout": "100"},
            )
            answers.append((status, (body or {}).get("type")))
    _, doc, _ = await api.call("GET", "/v1/status")
    assert doc["breaker"]["state"] == "closed", (answers, doc["breaker"]["transitions"])
    assert doc["journal"]["depth"] == 0
    assert all(status == 504 for status, _ in answers), answers
    assert all(kind.endswith("/deadline-exceeded") for _, kind in answers), answers
    # and the next caller is served by PostgreSQL at once
    status, body, headers = await api.call("PUT", "/v1/agents/impatient/load", load_body(2))
    assert status == 200, body
    assert headers["X-Registry-Source"] == "database"


# ---- probes, metrics, document ---------------------------------------------------------------


async def test_healthz_readyz_metrics_openapi_are_public(api: Api) -> None:
    resp = await api.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    resp = await api.client.get("/readyz")
    assert resp.status == 200
    ready = await resp.json()
    assert ready["ready"] is True
    assert ready["database"] is True
    await api.call("GET", "/v1/stats")
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "registry_proxy_requests_total" in text
    assert re.search(r'registry_proxy_requests_total\{[^}]*route="stats"[^}]*\} [1-9]', text)
    resp = await api.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"


# ---- Idempotency-Key ------------------------------------------------------------------------


async def test_idempotency_key_same_body_replays_without_a_second_effect(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    key = {"Idempotency-Key": "reg-key-1"}
    status1, body1, headers1 = await api.call("POST", "/v1/agents", agent_body("idem"), key)
    assert status1 == 201
    state = await tenant_state(db, tokens.tenant)
    status2, body2, headers2 = await api.call("POST", "/v1/agents", agent_body("idem"), key)
    assert status2 == status1
    assert body2 == body1
    assert headers2.get("Idempotent-Replayed") == "true"
    assert headers2["Location"] == headers1["Location"]
    assert await tenant_state(db, tokens.tenant) == state
    assert (
        await db.fetchval(
            "SELECT count(*) FROM operations WHERE tenant_id = $1 AND op_id = 'reg-key-1'",
            tokens.tenant,
        )
        == 1
    )


async def test_idempotency_key_replays_performance_without_counting_twice(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "idem-perf")
    key = {"Idempotency-Key": "perf-key-1"}
    status1, body1, _ = await api.call("POST", "/v1/agents/idem-perf/performance", perf_body(), key)
    assert status1 == 201
    status2, body2, _ = await api.call("POST", "/v1/agents/idem-perf/performance", perf_body(), key)
    assert (status2, body2) == (status1, body1)
    row = await agent_row(db, tokens.tenant, "idem-perf")
    assert row is not None
    assert row["task_count"] == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM performance_events WHERE tenant_id = $1", tokens.tenant
        )
        == 1
    )


async def test_idempotency_key_with_a_different_body_is_422(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    key = {"Idempotency-Key": "reg-key-2"}
    status, _, _ = await api.call("POST", "/v1/agents", agent_body("idem-a"), key)
    assert status == 201
    state = await tenant_state(db, tokens.tenant)
    status, body, headers = await api.call("POST", "/v1/agents", agent_body("idem-b"), key)
    assert_problem(status, body, headers, 422, "idempotency-key-reused")
    assert await tenant_state(db, tokens.tenant) == state
    assert await agent_row(db, tokens.tenant, "idem-b") is None


async def test_idempotency_key_must_be_a_valid_id(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    status, body, headers = await api.call(
        "POST", "/v1/agents", agent_body("idem-bad"), {"Idempotency-Key": "has space"}
    )
    assert_problem(status, body, headers, 422)
    assert await agent_row(db, tokens.tenant, "idem-bad") is None


# ---- request ids -----------------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(api: Api) -> None:
    _, _, headers = await api.call("GET", "/v1/stats", headers={"X-Request-ID": "trace-42.a:b"})
    assert headers["X-Request-ID"] == "trace-42.a:b"
    _, _, h1 = await api.call("GET", "/v1/stats")
    _, _, h2 = await api.call("GET", "/v1/stats")
    assert h1["X-Request-ID"]
    assert h1["X-Request-ID"] != h2["X-Request-ID"]
    _, _, bad = await api.call("GET", "/v1/stats", headers={"X-Request-ID": "no spaces allowed"})
    assert bad["X-Request-ID"] != "no spaces allowed"
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", bad["X-Request-ID"])
    # problems carry it too
    _, _, h404 = await api.call("GET", "/v1/agents/ghost", headers={"X-Request-ID": "r-404"})
    assert h404["X-Request-ID"] == "r-404"


# ---- roles and tenants -----------------------------------------------------------------------


async def test_reader_cannot_write(api: Api, db: asyncpg.Connection, tokens: Tokens) -> None:
    await register(api, "ro")
    reader = api.as_token(tokens.reader)
    state = await tenant_state(db, tokens.tenant)
    attempts = [
        ("POST", "/v1/agents", agent_body("ro-new")),
        ("PATCH", "/v1/agents/ro", {"name": "x"}),
        ("PUT", "/v1/agents/ro/load", load_body(3)),
        ("POST", "/v1/agents/ro/heartbeat", None),
        ("POST", "/v1/agents/ro/performance", perf_body()),
        ("DELETE", "/v1/agents/ro", None),
        ("POST", "/v1/admin/breaker", {"state": "forced_open"}),
    ]
    for method, path, json in attempts:
        status, body, headers = await reader.call(method, path, json)
        assert_problem(status, body, headers, 403, "forbidden")
    assert await tenant_state(db, tokens.tenant) == state
    status, body, _ = await reader.call("GET", "/v1/agents/ro")
    assert status == 200
    status, body, _ = await reader.call("GET", "/v1/agents")
    assert ids(body) == ["ro"]


async def test_foreign_tenant_gets_404_and_changes_nothing(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "mine", languages=["python"])
    status, _, _ = await api.call(
        "POST", "/v1/agents/mine/performance", perf_body(), {"Idempotency-Key": "mine-op"}
    )
    assert status == 201
    state = await tenant_state(db, tokens.tenant)
    other = api.as_token(tokens.other_writer)
    # operations are per tenant too
    status, body, headers = await other.call("GET", "/v1/operations/mine-op")
    assert_problem(status, body, headers, 404)
    status, body, headers = await other.call("GET", "/v1/agents/mine")
    assert_problem(status, body, headers, 404)
    for method, path, json in [
        ("PATCH", "/v1/agents/mine", {"name": "stolen"}),
        ("PUT", "/v1/agents/mine/load", load_body(9)),
        ("POST", "/v1/agents/mine/heartbeat", None),
        ("POST", "/v1/agents/mine/performance", perf_body()),
    ]:
        status, body, headers = await other.call(method, path, json)
        assert_problem(status, body, headers, 404)
        assert "stolen" not in str(body)
    # unregister is idempotent: a foreign id answers like an id never registered
    status, body, _ = await other.call("DELETE", "/v1/agents/mine")
    assert status == 204
    status, body, _ = await other.call("GET", "/v1/agents")
    assert ids(body) == []
    status, body, _ = await other.call("GET", "/v1/stats")
    assert body["total_agents"] == 0
    assert await tenant_state(db, tokens.tenant) == state
    # the same id is free in the other tenant, and does not touch ours
    status, body, _ = await other.call("POST", "/v1/agents", agent_body("mine", languages=["go"]))
    assert status == 201
    assert await tenant_state(db, tokens.tenant) == state
    status, body, _ = await api.call("GET", "/v1/agents/mine")
    assert body["capabilities"]["languages"] == ["python"]


async def test_missing_or_unknown_token_is_401(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    state = await tenant_state(db, tokens.tenant)
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ):
        for method, path in (("GET", "/v1/agents"), ("POST", "/v1/agents")):
            resp = await api.client.request(method, path, headers=headers, json=agent_body("anon"))
            body = await resp.json(content_type=None)
            assert_problem(resp.status, body, resp.headers, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await tenant_state(db, tokens.tenant) == state


# ---- routing ---------------------------------------------------------------------------------


async def test_unknown_path_is_404_problem(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/nothing-here")
    assert_problem(status, body, headers, 404, "not-found")
    resp = await api.client.get("/no/such/path")
    body = await resp.json(content_type=None)
    assert_problem(resp.status, body, resp.headers, 404)


async def test_wrong_method_is_405_with_allow(api: Api) -> None:
    status, body, headers = await api.call("PUT", "/v1/stats")
    assert_problem(status, body, headers, 405, "method-not-allowed")
    assert "GET" in headers["Allow"]
    status, body, headers = await api.call("POST", "/v1/agents/a1")
    assert_problem(status, body, headers, 405)
    allowed = {m.strip() for m in headers["Allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed


async def test_every_route_answers_and_none_is_a_500(api: Api, tokens: Tokens) -> None:
    """A smoke walk of ROUTES with the role each needs: nothing answers 5xx or 401/403."""
    await register(api, "walk")
    admin = api.as_token(tokens.admin)
    samples: dict[str, Any] = {
        "register": agent_body("walk-2"),
        "patch_agent": {"name": "walked"},
        "put_load": load_body(1),
        "heartbeat": None,
        "post_performance": perf_body(),
        "admin_breaker": {"state": "automatic"},
    }
    for route in ROUTES:
        path = route.path.replace("{agent_id}", "walk").replace("{op_id}", "none")
        resp = await admin.client.request(
            route.method, path, json=samples.get(route.name), headers=admin.headers()
        )
        await resp.read()
        assert resp.status < 500, (route.name, resp.status)
        assert resp.status not in (401, 403, 405), (route.name, resp.status)
