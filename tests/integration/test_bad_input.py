"""Bad input gets a clear problem document and changes nothing in PostgreSQL.

Every test takes a full picture of what PostgreSQL holds for its tenant (agents, performance
events, operations, audit log, capacity counter) before the bad request, and compares after.
Domain rejections of well-formed writes (unknown agent, stale If-Match) are the exception the
repository documents: they leave no effect, but one `rejected` ledger row and one audit row.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import Api, AppFactory, Tokens, agent_body

PROBLEM_BASE = "https://registry-proxy.dev/problems/"


# ---- helpers ---------------------------------------------------------------------------------


async def state_of(db: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    agents = await db.fetch("SELECT * FROM agents WHERE tenant_id = $1 ORDER BY agent_id", tenant)
    events = await db.fetch(
        "SELECT * FROM performance_events WHERE tenant_id = $1 ORDER BY event_id", tenant
    )
    return {
        "agents": [dict(r) for r in agents],
        "performance_events": [dict(r) for r in events],
        "operations": await db.fetchval(
            "SELECT count(*) FROM operations WHERE tenant_id = $1", tenant
        ),
        "audit_log": await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE tenant_id = $1", tenant
        ),
        "agent_count": await db.fetchval(
            "SELECT agent_count FROM tenants WHERE tenant_id = $1", tenant
        ),
    }


def assert_problem(status: int, raw: bytes, headers: Any, expected: int | None = None) -> Any:
    """The problem document shape, and never a trace of the implementation."""
    text = raw.decode("utf-8", "replace")
    assert "Traceback" not in text
    assert 'File "' not in text
    if expected is not None:
        assert status == expected, text
    assert 400 <= status < 500, text
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    body = orjson.loads(raw)
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key], body
    assert body["type"].startswith(PROBLEM_BASE)
    return body


async def send(
    api: Api,
    method: str,
    path: str,
    *,
    raw: bytes | None = None,
    json: Any = None,
    ctype: str | None = "application/json",
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> Any:
    h = {"Authorization": f"Bearer {token or api.token}"}
    if raw is not None and ctype is not None:
        h["Content-Type"] = ctype
    if headers:
        h.update(headers)
    resp = await api.client.request(method, path, data=raw, json=json, headers=h)
    body = await resp.read()
    return resp.status, body, resp.headers


def field_names(body: Any) -> set[str]:
    return {e["field"] for e in body.get("errors") or []}


def load_body(active: int = 1, queued: int = 0) -> dict[str, Any]:
    return {
        "active_tasks": active,
        "queued_tasks": queued,
        "observed_at": datetime.now(UTC).isoformat(),
    }


PERF = {"success": True, "quality_score": 0.5, "latency_ms": 10.0}

# (method, path, a valid body) for every write endpoint; "known" is registered by `seeded`
WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/agents", agent_body("fresh")),
    ("PATCH", "/v1/agents/known", {"name": "changed"}),
    ("PUT", "/v1/agents/known/load", load_body()),
    ("POST", "/v1/agents/known/heartbeat", {}),
    ("POST", "/v1/agents/known/performance", PERF),
]
WRITE_IDS = ["register", "patch", "load", "heartbeat", "performance"]


@pytest.fixture
async def seeded(api: Api, db: asyncpg.Connection, tokens: Tokens) -> AsyncIterator[Api]:
    """One agent with one performance event, so every table has a row to lose."""
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("known"))
    assert status == 201, body
    status, body, _ = await api.call(
        "POST", "/v1/agents/known/performance", {**PERF, "event_id": "ev-seed"}
    )
    assert status == 201, body
    yield api


# ---- malformed, wrong type, too large --------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"name": "x",}',
        b"{'name': 'x'}",
        b'{"a":1}{"b":2}',
        b"\xff\xfe{}",
        b"NaN",
        b'{"quality_score": NaN}',
        b"1e999",
    ],
    ids=[
        "open",
        "trailing-comma",
        "single-quotes",
        "two-documents",
        "not-utf8",
        "nan",
        "nan-field",
        "huge-number",
    ],
)
async def test_malformed_json_is_400(
    seeded: Api,
    db: asyncpg.Connection,
    tokens: Tokens,
    method: str,
    path: str,
    valid: Any,
    raw: bytes,
) -> None:
    before = await state_of(db, tokens.tenant)
    status, body, headers = await send(seeded, method, path, raw=raw)
    assert_problem(status, body, headers, 400)
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/problem+json",
        "multipart/form-data; boundary=x",
    ],
)
async def test_wrong_content_type_is_415(
    seeded: Api,
    db: asyncpg.Connection,
    tokens: Tokens,
    method: str,
    path: str,
    valid: Any,
    ctype: str,
) -> None:
    before = await state_of(db, tokens.tenant)
    status, body, headers = await send(seeded, method, path, raw=orjson.dumps(valid), ctype=ctype)
    assert_problem(status, body, headers, 415)
    assert await state_of(db, tokens.tenant) == before


async def test_json_with_charset_is_accepted(seeded: Api) -> None:
    status, body, _ = await send(
        seeded,
        "PATCH",
        "/v1/agents/known",
        raw=b'{"name": "cs"}',
        ctype="application/json; charset=utf-8",
    )
    assert status == 200, body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_limit_is_413(
    make_api: AppFactory, db: asyncpg.Connection, tokens: Tokens, chunked: bool
) -> None:
    api = await make_api(request={"max_body_bytes": 1024})
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("known"))
    assert status == 201, body
    before = await state_of(db, tokens.tenant)
    big = agent_body("too-big", name="n" * 150, specializations=[f"s{i:03d}" for i in range(30)])
    big["model_family"] = "m" * 60
    payload = orjson.dumps(big) + b" " * 2000
    assert len(payload) > 1024

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 256):
            yield payload[i : i + 256]

    for method, path in (
        ("POST", "/v1/agents"),
        ("PATCH", "/v1/agents/known"),
        ("POST", "/v1/agents/known/performance"),
    ):
        data: Any = stream() if chunked else payload
        resp = await api.client.request(
            method,
            path,
            data=data,
            headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
        )
        raw = await resp.read()
        assert_problem(resp.status, raw, resp.headers, 413)
    assert await state_of(db, tokens.tenant) == before


async def test_missing_body_is_400(seeded: Api, db: asyncpg.Connection, tokens: Tokens) -> None:
    before = await state_of(db, tokens.tenant)
    for method, path, _ in WRITES:
        if path.endswith("/heartbeat"):
            continue  # an empty heartbeat is fine
        status, body, headers = await send(seeded, method, path, raw=None)
        assert_problem(status, body, headers, 400)
        status, body, headers = await send(seeded, method, path, raw=b"  \n ")
        assert_problem(status, body, headers, 400)
    assert await state_of(db, tokens.tenant) == before


# ---- invalid fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/agents", {**agent_body("x1"), "owner": "me"}, "owner"),
        (
            "POST",
            "/v1/agents",
            {**agent_body("x2"), "capabilities": {"task_types": ["a"], "tools": ["b"]}},
            "capabilities.tools",
        ),
        ("PATCH", "/v1/agents/known", {"name": "n", "nmae": "typo"}, "nmae"),
        ("PUT", "/v1/agents/known/load", {**load_body(), "running": 1}, "running"),
        ("POST", "/v1/agents/known/heartbeat", {"seen_at": "2026-01-01T00:00:00Z"}, "seen_at"),
        ("POST", "/v1/agents/known/performance", {**PERF, "cost": 1}, "cost"),
    ],
    ids=["register", "register-nested", "patch", "load", "heartbeat", "performance"],
)
async def test_unknown_field_is_422_naming_it(
    seeded: Api,
    db: asyncpg.Connection,
    tokens: Tokens,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, method, path, json=body)
    problem = assert_problem(status, raw, headers, 422)
    assert field in field_names(problem), problem
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/agents/known/performance", {**PERF, "quality_score": 1.5}, "quality_score"),
        ("POST", "/v1/agents/known/performance", {**PERF, "quality_score": -0.01}, "quality_score"),
        ("POST", "/v1/agents/known/performance", {**PERF, "latency_ms": -1}, "latency_ms"),
        ("POST", "/v1/agents/known/performance", {**PERF, "success": "yes"}, "success"),
        ("POST", "/v1/agents/known/performance", {**PERF, "event_id": "-bad"}, "event_id"),
        ("POST", "/v1/agents", agent_body("x3", max_concurrent_tasks=0), "max_concurrent_tasks"),
        (
            "POST",
            "/v1/agents",
            agent_body("x4", max_concurrent_tasks=10_001),
            "max_concurrent_tasks",
        ),
        ("POST", "/v1/agents", agent_body("x5", max_concurrent_tasks=2.5), "max_concurrent_tasks"),
        ("POST", "/v1/agents", agent_body("x6", max_concurrent_tasks="3"), "max_concurrent_tasks"),
        ("POST", "/v1/agents", agent_body("x7", name=""), "name"),
        ("POST", "/v1/agents", agent_body("x8", name="tab\there"), "name"),
        ("POST", "/v1/agents", agent_body("x9", name=" padded"), "name"),
        ("POST", "/v1/agents", agent_body("x10", task_types=[]), "capabilities.task_types"),
        ("POST", "/v1/agents", agent_body("x11", languages=["go", "go"]), "capabilities.languages"),
        ("POST", "/v1/agents", agent_body("x12", languages=["l" * 65]), "capabilities.languages.0"),
        (
            "POST",
            "/v1/agents",
            agent_body("x13", specializations=[f"s{i}" for i in range(33)]),
            "capabilities.specializations",
        ),
        ("PUT", "/v1/agents/known/load", {**load_body(), "active_tasks": -1}, "active_tasks"),
        ("PUT", "/v1/agents/known/load", {**load_body(), "queued_tasks": -5}, "queued_tasks"),
        (
            "PUT",
            "/v1/agents/known/load",
            {**load_body(), "active_tasks": 1_000_001},
            "active_tasks",
        ),
        (
            "PUT",
            "/v1/agents/known/load",
            {**load_body(), "observed_at": "2026-01-01T00:00:00"},
            "observed_at",
        ),
        ("PUT", "/v1/agents/known/load", {"active_tasks": 1, "queued_tasks": 0}, "observed_at"),
        ("PATCH", "/v1/agents/known", {"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ("POST", "/v1/agents/known/heartbeat", {"observed_at": "yesterday"}, "observed_at"),
    ],
)
async def test_out_of_range_value_is_422_with_field_errors(
    seeded: Api,
    db: asyncpg.Connection,
    tokens: Tokens,
    method: str,
    path: str,
    body: Any,
    field: str,
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, method, path, json=body)
    problem = assert_problem(status, raw, headers, 422)
    assert field in field_names(problem), problem
    for error in problem["errors"]:
        assert isinstance(error["message"], str)
        assert error["message"]
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize(
    "agent_id",
    ["", "-lead", ".lead", "has space", "slash/inside", "a" * 129, "ünï", "a\nb"],
    ids=["empty", "dash", "dot", "space", "slash", "too-long", "non-ascii", "newline"],
)
async def test_invalid_agent_id_in_body_is_422(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, agent_id: str
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, "POST", "/v1/agents", json=agent_body(agent_id))
    problem = assert_problem(status, raw, headers, 422)
    assert "agent_id" in field_names(problem)
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "POST-heartbeat", "POST-perf", "DELETE"])
@pytest.mark.parametrize(
    "agent_id",
    ["-lead", ".lead", "has%20space", "a" * 129, "%C3%BCn", "a%00b"],
    ids=["dash", "dot", "space", "too-long", "non-ascii", "nul"],
)
async def test_invalid_agent_id_in_path_is_422(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, method: str, agent_id: str
) -> None:
    before = await state_of(db, tokens.tenant)
    path, body = f"/v1/agents/{agent_id}", None
    verb = method
    if method == "PATCH":
        body = {"name": "x"}
    elif method == "PUT":
        path, body = path + "/load", load_body()
    elif method == "POST-heartbeat":
        verb, path = "POST", path + "/heartbeat"
    elif method == "POST-perf":
        verb, path, body = "POST", path + "/performance", PERF
    status, raw, headers = await send(seeded, verb, path, json=body)
    problem = assert_problem(status, raw, headers, 422)
    assert "agent_id" in field_names(problem)
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_agent_id_with_trailing_newline_in_path_is_422(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, method: str
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, method, "/v1/agents/known%0A")
    assert_problem(status, raw, headers, 422)
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize("depth", [9, 20, 200])
async def test_too_deep_json_is_422(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, depth: int
) -> None:
    before = await state_of(db, tokens.tenant)
    deep: Any = "leaf"
    for _ in range(depth - 1):
        deep = {"x": deep}
    for method, path, valid in WRITES:
        body = {**valid, "extra": deep} if isinstance(valid, dict) else deep
        status, raw, headers = await send(seeded, method, path, json=body)
        assert_problem(status, raw, headers, 422)
    assert await state_of(db, tokens.tenant) == before


async def test_very_deep_json_is_422_too(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    raw_body = b"[" * 2000 + b"]" * 2000
    status, raw, headers = await send(seeded, "POST", "/v1/agents", raw=raw_body)
    assert_problem(status, raw, headers, 422)
    assert await state_of(db, tokens.tenant) == before


async def test_too_many_items_is_422(seeded: Api, db: asyncpg.Connection, tokens: Tokens) -> None:
    before = await state_of(db, tokens.tenant)
    body = agent_body("wide", languages=[f"l{i}" for i in range(65)])
    status, raw, headers = await send(seeded, "POST", "/v1/agents", json=body)
    assert_problem(status, raw, headers, 422)
    wide = {**agent_body("wide2"), **{f"k{i}": i for i in range(70)}}
    status, raw, headers = await send(seeded, "POST", "/v1/agents", json=wide)
    assert_problem(status, raw, headers, 422)
    assert await state_of(db, tokens.tenant) == before


async def test_boolean_is_not_a_quality_score(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(
        seeded,
        "POST",
        "/v1/agents/known/performance",
        json={"success": True, "quality_score": True, "latency_ms": False},
    )
    problem = assert_problem(status, raw, headers, 422)
    assert {"quality_score", "latency_ms"} <= field_names(problem)
    assert await state_of(db, tokens.tenant) == before


async def test_unstorable_observed_at_is_422_naming_the_field(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    body = {"active_tasks": 1, "queued_tasks": 0, "observed_at": "0001-01-01T00:00:00+14:00"}
    status, raw, headers = await send(seeded, "PUT", "/v1/agents/known/load", json=body)
    problem = assert_problem(status, raw, headers, 422)
    assert "observed_at" in field_names(problem)
    assert "query argument" not in problem["detail"]
    assert "datetime.datetime" not in problem["detail"]
    assert await state_of(db, tokens.tenant) == before


async def test_heartbeat_at_the_end_of_time_cannot_break_reads(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(
        seeded,
        "POST",
        "/v1/agents/known/heartbeat",
        json={"observed_at": "9999-12-31T23:59:59.999999Z"},
    )
    problem = assert_problem(status, raw, headers, 422)
    assert "observed_at" in field_names(problem)
    assert await state_of(db, tokens.tenant) == before
    status, raw, _ = await send(seeded, "GET", "/v1/agents/known")
    assert status == 200, raw
    status, raw, _ = await send(seeded, "GET", "/v1/agents")
    assert status == 200, raw


# ---- domain rejections -----------------------------------------------------------------------


async def _assert_only_a_rejection_recorded(
    db: asyncpg.Connection, tenant: str, before: dict[str, Any], slug: str
) -> None:
    after = await state_of(db, tenant)
    assert after["agents"] == before["agents"]
    assert after["performance_events"] == before["performance_events"]
    assert after["agent_count"] == before["agent_count"]
    # the rejection itself is the one trace: one ledger row and one audit row
    assert after["operations"] == before["operations"] + 1
    assert after["audit_log"] == before["audit_log"] + 1
    last = await db.fetchrow(
        "SELECT status, reason FROM operations WHERE tenant_id = $1 "
        "ORDER BY created_at DESC, op_id LIMIT 1",
        tenant,
    )
    assert last["status"] == "rejected"
    assert last["reason"].startswith(slug)
    audit = await db.fetchrow(
        "SELECT outcome FROM audit_log WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1", tenant
    )
    assert audit["outcome"] == f"rejected:{slug}"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "", {"name": "x"}),
        ("PUT", "/load", load_body()),
        ("POST", "/heartbeat", None),
        ("POST", "/performance", {**PERF, "event_id": "ev-ghost"}),
    ],
    ids=["patch", "load", "heartbeat", "performance"],
)
async def test_unknown_agent_is_404_without_effect(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, method: str, suffix: str, body: Any
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, method, f"/v1/agents/ghost{suffix}", json=body)
    problem = assert_problem(status, raw, headers, 404)
    assert problem["type"].endswith("/not-found")
    await _assert_only_a_rejection_recorded(db, tokens.tenant, before, "not-found")
    status, raw, headers = await send(seeded, "GET", "/v1/agents/ghost")
    assert_problem(status, raw, headers, 404)


async def test_stale_if_match_is_412_without_effect(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    revision = before["agents"][0]["revision"]
    status, raw, headers = await send(
        seeded,
        "PATCH",
        "/v1/agents/known",
        json={"name": "never"},
        headers={"If-Match": f'"{revision + 1}"'},
    )
    problem = assert_problem(status, raw, headers, 412)
    assert problem["type"].endswith("/precondition-failed")
    await _assert_only_a_rejection_recorded(db, tokens.tenant, before, "precondition-failed")


async def test_duplicate_is_409_without_effect(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(
        seeded, "POST", "/v1/agents", json=agent_body("known", name="Impostor")
    )
    assert_problem(status, raw, headers, 409)
    await _assert_only_a_rejection_recorded(db, tokens.tenant, before, "duplicate-agent")


# ---- who may ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong-token-0000000000", "Token abc", "Bearer"],
    ids=["missing", "unknown", "scheme", "empty"],
)
async def test_missing_or_unknown_token_is_401(
    seeded: Api,
    db: asyncpg.Connection,
    tokens: Tokens,
    method: str,
    path: str,
    valid: Any,
    auth: str | None,
) -> None:
    before = await state_of(db, tokens.tenant)
    headers = {} if auth is None else {"Authorization": auth}
    resp = await seeded.client.request(method, path, json=valid, headers=headers)
    raw = await resp.read()
    assert_problem(resp.status, raw, resp.headers, 401)
    assert "WWW-Authenticate" in resp.headers
    assert await state_of(db, tokens.tenant) == before


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
async def test_reader_writing_is_403(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, method: str, path: str, valid: Any
) -> None:
    before = await state_of(db, tokens.tenant)
    status, raw, headers = await send(seeded, method, path, json=valid, token=tokens.reader)
    assert_problem(status, raw, headers, 403)
    status, raw, headers = await send(seeded, "DELETE", "/v1/agents/known", token=tokens.reader)
    assert_problem(status, raw, headers, 403)
    assert await state_of(db, tokens.tenant) == before


async def test_cross_tenant_read_and_write_is_404_and_leaks_nothing(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    marker = "secret-" + uuid.uuid4().hex
    status, body, _ = await api.call(
        "POST",
        "/v1/agents",
        agent_body("private", name=marker, languages=[marker[:60]], specializations=["hidden"]),
    )
    assert status == 201, body
    before = await state_of(db, tokens.tenant)
    other = tokens.other_writer
    for method, path, payload in [
        ("GET", "/v1/agents/private", None),
        ("PATCH", "/v1/agents/private", {"name": "mine now"}),
        ("PUT", "/v1/agents/private/load", load_body(7)),
        ("POST", "/v1/agents/private/heartbeat", None),
        ("POST", "/v1/agents/private/performance", PERF),
    ]:
        status, raw, headers = await send(api, method, path, json=payload, token=other)
        assert_problem(status, raw, headers, 404)
        assert marker not in raw.decode()
    for path in (
        "/v1/agents",
        f"/v1/agents?languages={marker[:60]}",
        "/v1/agents?specializations=hidden",
        "/v1/stats",
    ):
        status, raw, _ = await send(api, "GET", path, token=other)
        assert status == 200
        assert marker not in raw.decode()
        assert "private" not in raw.decode()
    status, raw, _ = await send(api, "DELETE", "/v1/agents/private", token=other)
    assert status == 204
    assert await state_of(db, tokens.tenant) == before
    status, raw, _ = await send(api, "GET", "/v1/agents/private")
    assert status == 200
    assert orjson.loads(raw)["name"] == marker


# ---- anything at all: never a 5xx ------------------------------------------------------------


def _deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


MALFORMED: list[bytes] = [
    b"",
    b" ",
    b"\x00",
    b"null",
    b"true",
    b"0",
    b"-1",
    b'"text"',
    b"[]",
    b"[{}]",
    b"{}",
    b"{",
    b"}",
    b"]",
    b'{"a":}',
    b'{"a" 1}',
    b'{"a":1,}',
    b'{"a":1}{"b":2}',
    b"\xff\xfe\xfd",
    b"\xef\xbb\xbf{}",
    b'{"a":"\\ud800"}',
    b"NaN",
    b"Infinity",
    b'{"x": NaN}',
    b'{"agent_id": null}',
    b'{"agent_id": ["x"]}',
    b'{"agent_id": {"$ne": 1}}',
    b'{"agent_id": "x\'; DROP TABLE agents; --", "name": "n", "model_family": "m",'
    b' "capabilities": {"task_types": ["a"]}}',
    b'{"success": "true", "quality_score": "0.5", "latency_ms": "1"}',
    b'{"success": true, "quality_score": 1e308, "latency_ms": 1e308}',
    b'{"success": true, "quality_score": 0.5, "latency_ms": 1, "event_id": "../../etc"}',
    b'{"active_tasks": 1e400, "queued_tasks": 0, "observed_at": "2026-01-01T00:00:00Z"}',
    b'{"active_tasks": 99999999999999999999999999, "queued_tasks": 0,'
    b' "observed_at": "2026-01-01T00:00:00Z"}',
    b'{"active_tasks": -9223372036854775809, "queued_tasks": 0,'
    b' "observed_at": "2026-01-01T00:00:00Z"}',
    b'{"active_tasks": 1, "queued_tasks": 0, "observed_at": 1e20}',
    b'{"active_tasks": 1, "queued_tasks": 0, "observed_at": -1e20}',
    b'{"active_tasks": 1, "queued_tasks": 0, "observed_at": "2026-13-45T99:99:99Z"}',
    b'{"active_tasks": 1, "queued_tasks": 0, "observed_at": "0001-01-01T00:00:00+14:00"}',
    b'{"observed_at": "0001-01-01T00:00:00+14:00"}',
    b'{"observed_at": "9999-12-31T23:59:59-14:00"}',
    b'{"observed_at": 253402300800}',
    b'{"name": "\\u0000"}',
    b'{"name": null}',
    b'{"name": ""}',
    b'{"name": 5}',
    b'{"max_concurrent_tasks": 1.0}',
    b'{"max_concurrent_tasks": true}',
    b'{"max_concurrent_tasks": 99999999999999999999}',
    b'{"capabilities": {"task_types": [1, 2, 3]}}',
    b'{"capabilities": {"task_types": [null]}}',
    b'{"capabilities": []}',
    b'{"capabilities": {"task_types": ["a"], "languages": "python"}}',
    b'{"state": "forced_open", "reason": "' + b"r" * 300 + b'"}',
    b'{"state": ["automatic"]}',
    b'{"__proto__": {"admin": true}}',
    b'{"agent_id": "' + b"a" * 5000 + b'"}',
    b"[" + b"1," * 100 + b"1]",
    b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(100)) + b"}",
    _deep(9),
    _deep(50),
    _deep(1500),
]


@pytest.mark.parametrize("raw", MALFORMED, ids=[f"body{i:02d}" for i in range(len(MALFORMED))])
async def test_no_body_makes_a_write_endpoint_fail(
    seeded: Api, db: asyncpg.Connection, tokens: Tokens, raw: bytes
) -> None:
    """Every write endpoint, on a body that is not a valid request: a 4xx problem, no effect.

    The write endpoints aim at an agent that does not exist ("ghost"), so a body that happens
    to be valid for one of them is a 404 rather than a change; registration bodies here are
    never valid.
    """
    before = await state_of(db, tokens.tenant)
    endpoints = [
        ("POST", "/v1/agents", tokens.writer),
        ("PATCH", "/v1/agents/ghost", tokens.writer),
        ("PUT", "/v1/agents/ghost/load", tokens.writer),
        ("POST", "/v1/agents/ghost/heartbeat", tokens.writer),
        ("POST", "/v1/agents/ghost/performance", tokens.writer),
        ("POST", "/v1/admin/breaker", tokens.admin),
    ]
    for method, path, token in endpoints:
        status, body, headers = await send(seeded, method, path, raw=raw, token=token)
        assert status < 500, (method, path, status, body[:300])
        if path == "/v1/admin/breaker" and status == 200:
            continue  # e.g. {"state": "automatic"}-like bodies are valid commands
        assert_problem(status, body, headers)
    after = await state_of(db, tokens.tenant)
    assert after["agents"] == before["agents"]
    assert after["performance_events"] == before["performance_events"]
    assert after["agent_count"] == before["agent_count"]
    _, status_doc, _ = await seeded.call("GET", "/v1/status")
    assert status_doc["breaker"]["state"] == "closed"
