"""The ETag is the agent's revision: what a PATCH can change, nothing else.

An agent reports its load, heartbeats and task outcomes all the time; none of them may turn a
client's `If-Match` stale. A change of name, model family, capabilities or max_concurrent_tasks
does. During an outage the replica shows the revision of what it shows, journaled patches
included, so a client can keep patching with If-Match and the journal replays it faithfully.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from proxy.http import keys
from tests.conftest import Api, Tokens, agent_body, app_of, eventually

PRECONDITION = "https://registry-proxy.dev/problems/precondition-failed"


def etag(headers: Any) -> str:
    value = headers.get("ETag")
    assert value is not None, dict(headers)
    return str(value)


async def register(api: Api, agent_id: str, **kw: Any) -> tuple[dict[str, Any], str]:
    status, body, headers = await api.call("POST", "/v1/agents", agent_body(agent_id, **kw))
    assert status == 201, body
    return body, etag(headers)


async def get(api: Api, agent_id: str) -> tuple[dict[str, Any], Any]:
    status, body, headers = await api.call("GET", f"/v1/agents/{agent_id}")
    assert status == 200, body
    return body, headers


async def row_of(db: asyncpg.Connection, tenant: str, agent_id: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT * FROM agents WHERE tenant_id = $1 AND agent_id = $2", tenant, agent_id
    )
    assert row is not None
    return dict(row)


def load(active: int) -> dict[str, Any]:
    return {"active_tasks": active, "queued_tasks": 0, "observed_at": datetime.now(UTC).isoformat()}


PERF = {"success": True, "quality_score": 0.8, "latency_ms": 12.0}


# ---- the agent's own reports do not move it ---------------------------------------------------


async def test_reports_between_get_and_patch_do_not_cause_412(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "e-rep")
    before, headers = await get(api, "e-rep")
    tag = etag(headers)
    assert tag == '"1"'

    status, body, headers = await api.call("POST", "/v1/agents/e-rep/heartbeat")
    assert status == 200, body
    status, body, headers = await api.call("PUT", "/v1/agents/e-rep/load", load(3))
    assert status == 200, body
    assert etag(headers) == tag
    status, body, headers = await api.call("POST", "/v1/agents/e-rep/performance", PERF)
    assert status == 201, body

    now, headers = await get(api, "e-rep")
    assert now["version"] > before["version"]  # the watermark moved three times
    assert etag(headers) == tag

    status, body, headers = await api.call(
        "PATCH", "/v1/agents/e-rep", {"name": "renamed"}, headers={"If-Match": tag}
    )
    assert status == 200, body
    assert body["name"] == "renamed"
    assert etag(headers) == '"2"' == f'"{body["revision"]}"'
    row = await row_of(db, tokens.tenant, "e-rep")
    assert (row["name"], row["revision"]) == ("renamed", 2)


async def test_a_concurrent_patch_causes_412(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "e-race")
    _, headers = await get(api, "e-race")
    tag = etag(headers)

    # Another client changes the agent meanwhile.
    status, body, _ = await api.call(
        "PATCH", "/v1/agents/e-race", {"capabilities": {"task_types": ["plan"]}}
    )
    assert status == 200, body
    before = await row_of(db, tokens.tenant, "e-race")

    status, body, headers = await api.call(
        "PATCH", "/v1/agents/e-race", {"name": "lost update"}, headers={"If-Match": tag}
    )
    assert status == 412, body
    assert body["type"] == PRECONDITION
    assert "revision" in body["detail"]
    assert await row_of(db, tokens.tenant, "e-race") == before

    # With the ETag of a fresh read it goes through.
    _, headers = await get(api, "e-race")
    status, body, _ = await api.call(
        "PATCH", "/v1/agents/e-race", {"name": "informed"}, headers={"If-Match": etag(headers)}
    )
    assert status == 200, body
    assert body["revision"] == 3


async def test_each_patchable_field_moves_it_by_one_and_same_values_do_not(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    created, _ = await register(api, "e-one", max_concurrent_tasks=4)
    assert created["revision"] == 1
    steps: list[tuple[dict[str, Any], int]] = [
        ({"name": "n2"}, 2),
        ({"model_family": "claude"}, 3),
        ({"max_concurrent_tasks": 5}, 4),
        ({"capabilities": {"task_types": ["code", "review"], "languages": ["python"]}}, 5),
        # The same values again: nothing changes, so neither does the ETag.
        ({"name": "n2", "max_concurrent_tasks": 5}, 5),
        ({"capabilities": {"task_types": ["code", "review"], "languages": ["python"]}}, 5),
        # Several fields at once are one change.
        ({"name": "n3", "model_family": "gpt"}, 6),
    ]
    for patch, expected in steps:
        status, body, headers = await api.call("PATCH", "/v1/agents/e-one", patch)
        assert status == 200, body
        assert body["revision"] == expected, patch
        assert etag(headers) == f'"{expected}"'
    row = await row_of(db, tokens.tenant, "e-one")
    assert row["revision"] == 6


async def test_a_reregistration_continues_the_revision(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    await register(api, "e-again")
    status, body, _ = await api.call("PATCH", "/v1/agents/e-again", {"name": "second"})
    assert status == 200 and body["revision"] == 2
    status, _, _ = await api.call("DELETE", "/v1/agents/e-again")
    assert status == 204
    body, tag = await register(api, "e-again")
    assert body["revision"] == 3 and tag == '"3"'
    # No ETag of the earlier registration matches the new one.
    for old in ('"1"', '"2"'):
        status, problem, _ = await api.call(
            "PATCH", "/v1/agents/e-again", {"name": "stale"}, headers={"If-Match": old}
        )
        assert status == 412, problem
    assert (await row_of(db, tokens.tenant, "e-again"))["name"] == body["name"]


# ---- during an outage --------------------------------------------------------------------------


async def test_replica_etags_during_an_outage_hold_through_replay(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    admin = api.as_token(tokens.admin)
    await register(api, "e-out")
    status, body, _ = await api.call("PATCH", "/v1/agents/e-out", {"name": "before"})
    assert status == 200 and body["revision"] == 2
    replica = app_of(api)[keys.SERVICE].replica
    assert replica is not None

    def replica_has_it() -> bool:
        rec = replica.get(tokens.tenant, "e-out")
        return rec is not None and rec.revision == 2

    await eventually(replica_has_it, message="replica holds the agent")

    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"})
    assert status == 200 and body["state"] == "forced_open", body

    ops: dict[str, str] = {}

    async def journaled(
        name: str, method: str, path: str, data: Any, if_match: str | None = None
    ) -> None:
        h = {"If-Match": if_match} if if_match is not None else None
        status, body, headers = await api.call(method, path, data, headers=h)
        assert status == 202, (name, body)
        assert headers["X-Registry-Source"] == "journal"
        ops[name] = body["op_id"]

    # A journaled heartbeat: the replica now folds a pending write over the base row, and still
    # shows an ETag (the revision, which a heartbeat leaves alone).
    await journaled("heartbeat", "POST", "/v1/agents/e-out/heartbeat", None)
    body, headers = await get(api, "e-out")
    assert headers["X-Registry-Source"] == "replica"
    assert body["version"] == 0  # the watermark is PostgreSQL's to draw
    assert etag(headers) == '"2"'

    # A patch with that ETag, then a load report, then a patch with the ETag read after it.
    await journaled("first", "PATCH", "/v1/agents/e-out", {"name": "offline"}, if_match='"2"')
    await journaled("load", "PUT", "/v1/agents/e-out/load", load(1))
    body, headers = await get(api, "e-out")
    assert body["name"] == "offline" and body["load"]["active_tasks"] == 1
    assert etag(headers) == '"3"'
    await journaled(
        "second", "PATCH", "/v1/agents/e-out", {"max_concurrent_tasks": 7}, if_match='"3"'
    )
    # One sent with an ETag read before the first patch: stale, journaled all the same.
    await journaled("stale", "PATCH", "/v1/agents/e-out", {"name": "stale"}, if_match='"2"')
    shown, headers = await get(api, "e-out")
    assert headers["X-Registry-Source"] == "replica"
    assert (shown["name"], shown["max_concurrent_tasks"]) == ("offline", 7)
    replica_tag = etag(headers)
    assert replica_tag == '"4"' == f'"{shown["revision"]}"'

    # A registration during the outage has an ETag too, and a patch with it holds.
    await journaled("register", "POST", "/v1/agents", agent_body("e-new"))
    body, headers = await get(api, "e-new")
    assert headers["X-Registry-Source"] == "replica"
    assert etag(headers) == '"1"'
    await journaled("new-patch", "PATCH", "/v1/agents/e-new", {"name": "n"}, if_match='"1"')
    new_shown, headers = await get(api, "e-new")
    new_tag = etag(headers)
    assert new_tag == '"2"'

    # Nothing reached PostgreSQL yet.
    row = await row_of(db, tokens.tenant, "e-out")
    assert (row["name"], row["revision"]) == ("before", 2)

    status, body, _ = await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"})
    assert status == 200, body

    async def settled() -> bool:
        for op_id in ops.values():
            _, op, _ = await api.call("GET", f"/v1/operations/{op_id}")
            if op["status"] == "pending":
                return False
        return True

    await eventually(settled, timeout=20, message="every journaled write replayed")
    outcomes = {}
    for name, op_id in ops.items():
        status, op, _ = await api.call("GET", f"/v1/operations/{op_id}")
        assert status == 200, op
        outcomes[name] = op
    for name in ("heartbeat", "first", "load", "second", "register", "new-patch"):
        assert outcomes[name]["status"] == "applied", (name, outcomes[name])
    assert outcomes["stale"]["status"] == "rejected"
    assert outcomes["stale"]["reason"].startswith("precondition-failed"), outcomes["stale"]

    # PostgreSQL holds the patches made with the replica's ETags, and the same revision.
    row = await row_of(db, tokens.tenant, "e-out")
    assert (row["name"], row["max_concurrent_tasks"], row["revision"]) == ("offline", 7, 4)
    assert row["active_tasks"] == 1
    new_row = await row_of(db, tokens.tenant, "e-new")
    assert (new_row["name"], new_row["revision"]) == ("n", 2)

    async def from_database() -> bool:
        _, _, headers = await api.call("GET", "/v1/agents/e-out")
        return bool(headers["X-Registry-Source"] == "database")

    await eventually(from_database, message="reads back on PostgreSQL")
    body, headers = await get(api, "e-out")
    assert etag(headers) == replica_tag
    assert body["revision"] == shown["revision"]
    body, headers = await get(api, "e-new")
    assert headers["X-Registry-Source"] == "database"
    assert etag(headers) == new_tag
    assert body["revision"] == new_shown["revision"]
