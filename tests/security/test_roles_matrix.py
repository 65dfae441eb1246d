"""Every endpoint against every kind of caller, and the role table against the real router.

The matrix iterates `proxy.http.routes.ROUTES`: a route added without a request recipe here fails
`test_every_route_has_a_recipe`. Each cell registers a fresh agent in the caller's target tenant,
takes a picture of every row of both tenants in PostgreSQL, makes one call, and compares:

- a caller without a valid token gets 401, a role below the route's gets 403; both change nothing
  in either tenant (nor the breaker);
- an allowed caller of the tenant succeeds with the endpoint's status;
- an allowed caller of the *other* tenant never sees nor touches the first tenant: reads of its
  agents and operations are 404, queries and stats do not count them, writes to its agents are
  404 (recorded as a rejected attempt in the caller's own tenant only, like every domain
  rejection), and deleting one is the idempotent no-op 204 of an unknown id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from proxy.app import create_app
from proxy.http import keys
from proxy.http.auth import Role
from proxy.http.routes import ROLE_BY_NAME, ROUTES, Route
from tests.conftest import Api, AppFactory, Tokens, agent_body, app_of, eventually, make_settings
from tests.security import (
    MoreTokens,
    assert_only_rejection_recorded,
    assert_problem,
    more_tokens,
    pictures,
    send_raw,
    sha256,
)

PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json"}


# ---- callers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    token: str | None  # None: no Authorization header at all
    role: Role | None  # None: not a valid token
    own_tenant: bool = True
    token_id: str | None = None


def callers(more: MoreTokens) -> list[Caller]:
    t = more.base
    return [
        Caller("none", None, None),
        Caller("unknown", "unknown-" + uuid.uuid4().hex, None),
        # The digest the token file stores is not a credential itself.
        Caller("stored-digest", sha256(more.hashed_writer), None),
        Caller("reader", t.reader, Role.READER, token_id="reader"),
        Caller("writer", t.writer, Role.WRITER, token_id="writer"),
        Caller("admin", t.admin, Role.ADMIN, token_id="admin"),
        Caller("hashed-writer", more.hashed_writer, Role.WRITER, token_id="hashed-writer"),
        Caller(
            "anonymous-writer",
            more.anonymous_writer,
            Role.WRITER,
            token_id=sha256(more.anonymous_writer)[:12],
        ),
        Caller("foreign-reader", more.other_reader, Role.READER, False, "other-reader"),
        Caller("foreign-writer", t.other_writer, Role.WRITER, False, "other-writer"),
        Caller("foreign-admin", more.other_admin, Role.ADMIN, False, "other-admin"),
    ]


# ---- one request per route -------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    agent_id: str  # a live agent of the first tenant, registered for this cell
    op_id: str  # the first tenant's operation that registered it
    fresh_id: str  # an id nobody registered


@dataclass(frozen=True)
class Call:
    path: str
    body: Any = None
    query: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat()


RECIPES: dict[str, Callable[[Cell], Call]] = {
    "register": lambda c: Call("/v1/agents", agent_body(c.fresh_id)),
    "query_agents": lambda c: Call("/v1/agents", query="task_type=code&limit=100"),
    "get_agent": lambda c: Call(f"/v1/agents/{c.agent_id}"),
    "patch_agent": lambda c: Call(f"/v1/agents/{c.agent_id}", {"name": "patched"}),
    "put_load": lambda c: Call(
        f"/v1/agents/{c.agent_id}/load",
        {"active_tasks": 1, "queued_tasks": 2, "observed_at": _now()},
    ),
    "heartbeat": lambda c: Call(f"/v1/agents/{c.agent_id}/heartbeat", {}),
    "post_performance": lambda c: Call(
        f"/v1/agents/{c.agent_id}/performance",
        {"event_id": "ev-" + c.fresh_id, "success": True, "quality_score": 0.5, "latency_ms": 3},
    ),
    "delete_agent": lambda c: Call(f"/v1/agents/{c.agent_id}"),
    "stats": lambda c: Call("/v1/stats"),
    "operation": lambda c: Call(f"/v1/operations/{c.op_id}"),
    "status": lambda c: Call("/v1/status"),
    "admin_breaker": lambda c: Call("/v1/admin/breaker", {"state": "automatic"}),
    "audit": lambda c: Call("/v1/audit", query="limit=1000"),
    "healthz": lambda c: Call("/healthz"),
    "readyz": lambda c: Call("/readyz"),
    "metrics": lambda c: Call("/metrics"),
    "openapi": lambda c: Call("/openapi.json"),
}

# What an allowed caller of the agent's own tenant gets.
OWN_SUCCESS = {
    "register": 201,
    "query_agents": 200,
    "get_agent": 200,
    "patch_agent": 200,
    "put_load": 200,
    "heartbeat": 200,
    "post_performance": 201,
    "delete_agent": 204,
    "stats": 200,
    "operation": 200,
    "status": 200,
    "admin_breaker": 200,
    "audit": 200,
}
# What an allowed caller of the other tenant gets for the same request.
FOREIGN = {
    **OWN_SUCCESS,
    "get_agent": 404,
    "patch_agent": 404,
    "put_load": 404,
    "heartbeat": 404,
    "post_performance": 404,
    "operation": 404,
}
WRITES = {"register", "patch_agent", "put_load", "heartbeat", "post_performance", "delete_agent"}
AUDITED = {*WRITES, "admin_breaker"}


def test_every_route_has_a_recipe() -> None:
    assert set(RECIPES) == {r.name for r in ROUTES}
    assert set(OWN_SUCCESS) == {r.name for r in ROUTES if r.role is not None}


def _expected(route: Route, caller: Caller) -> int:
    if route.role is None:
        return 200
    if caller.role is None:
        return 401
    if caller.role < route.role:
        return 403
    return OWN_SUCCESS[route.name] if caller.own_tenant else FOREIGN[route.name]


async def _call(
    api: Api, route: Route, call: Call, token: str | None, request_id: str
) -> tuple[int, bytes, Any]:
    headers = {"X-Request-ID": request_id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = call.path + (f"?{call.query}" if call.query else "")
    kw: dict[str, Any] = {}
    if call.body is not None:
        kw["data"] = orjson.dumps(call.body)
        headers["Content-Type"] = "application/json"
    resp = await api.client.request(route.method, url, headers=headers, **kw)
    return resp.status, await resp.read(), resp.headers


async def _live_ids(db: asyncpg.Connection, tenant: str) -> set[str]:
    rows = await db.fetch(
        "SELECT agent_id FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL", tenant
    )
    return {r["agent_id"] for r in rows}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_every_caller_on(
    route: Route, make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    more = more_tokens(tokens)
    api = await make_api()
    more.install(api)
    breaker = app_of(api)[keys.SERVICE].breaker
    own, other = tokens.tenant, tokens.other_tenant
    for caller in callers(more):
        cell = Cell(f"m-{caller.name}", f"op-{caller.name}", f"n-{caller.name}")
        status, body, _ = await api.call(
            "POST", "/v1/agents", agent_body(cell.agent_id), {"Idempotency-Key": cell.op_id}
        )
        assert status == 201, body
        before = await pictures(db, own, other)
        breaker_before = breaker.state
        request_id = f"rq-{route.name}-{caller.name}"
        call = RECIPES[route.name](cell)
        status, raw, headers = await _call(api, route, call, caller.token, request_id)
        after = await pictures(db, own, other)
        where = f"{route.method} {route.path} as {caller.name}"
        expected = _expected(route, caller)
        assert status == expected, (where, status, raw[:300])
        assert headers["X-Request-ID"] == request_id

        if expected in (401, 403):
            problem = assert_problem(status, raw, headers)
            if expected == 401:
                assert "WWW-Authenticate" in headers, where
                assert problem["type"].endswith("/unauthorized")
            else:
                assert problem["type"].endswith("/forbidden")
            assert after == before, f"{where} changed PostgreSQL"
            assert breaker.state == breaker_before, where
            continue

        if route.role is None or route.method == "GET":
            assert after == before, f"{where} (a read) changed PostgreSQL"
        text = raw.decode("utf-8", "replace")
        if caller.own_tenant:
            assert after[other] == before[other], f"{where} touched the other tenant"
            if route.name in AUDITED:
                new = after[own]["audit_log"][len(before[own]["audit_log"]) :]
                assert [r["actor"] for r in new] == [caller.token_id], (where, new)
                assert new[0]["request_id"] == request_id
            if route.name == "get_agent":
                assert orjson.loads(raw)["agent_id"] == cell.agent_id
            continue

        # A caller of the other tenant.
        assert after[own] == before[own], f"{where} touched the first tenant"
        if route.role is not None:
            assert own not in text, f"{where} answered with the first tenant's name"
        if expected == 404:
            assert_problem(status, raw, headers)
            if route.name in WRITES:
                assert_only_rejection_recorded(
                    before[other], after[other], actor=caller.token_id or "", slug="not-found"
                )
            else:
                assert after[other] == before[other]
        elif route.name == "query_agents":
            found = {r["agent"]["agent_id"] for r in orjson.loads(raw)["results"]}
            assert found <= await _live_ids(db, other), (where, found)
        elif route.name == "stats":
            total = orjson.loads(raw)["total_agents"]
            assert total == len(await _live_ids(db, other)), where
        elif route.name == "audit":
            entries = orjson.loads(raw)["entries"]
            assert {e["request_id"] for e in entries}.isdisjoint(
                r["request_id"] for r in after[own]["audit_log"]
            ), where
            assert all(e["actor"].startswith("other-") for e in entries), entries
        elif route.name == "delete_agent":
            # The idempotent delete of an id unknown in the caller's tenant.
            assert after[other]["agents"] == before[other]["agents"]
            assert cell.agent_id in await _live_ids(db, own)
        elif route.name == "register":
            assert cell.fresh_id in await _live_ids(db, other)
            assert cell.fresh_id not in await _live_ids(db, own)


# ---- the role table against the router -------------------------------------------------------


def test_every_registered_route_is_in_the_role_table(tokens: Tokens, tmp_path: Path) -> None:
    settings = make_settings("postgresql://nobody@127.0.0.1:1/none", tokens, tmp_path / "j")
    app = create_app(settings)
    table = {(r.method, r.path): r for r in ROUTES}
    # HEAD is served wherever GET is, by the same route (same name, role and handler).
    table |= {("HEAD", r.path): r for r in ROUTES if r.method == "GET"}
    registered = list(app.router.routes())
    assert registered, "the app registers no route"
    seen = set()
    for route in registered:
        key = (route.method, route.resource.canonical if route.resource else None)
        assert key in table, f"{key} is served but missing from ROUTES (no role)"
        assert route.name == table[key].name, key  # the guard finds the role by this name
        assert route.name in ROLE_BY_NAME
        assert route.handler is table[key].handler, key
        seen.add(key)
    assert seen == set(table), f"in ROUTES but not served: {set(table) - seen}"
    assert len(registered) == len(table)


def test_public_routes_are_exactly_the_probes_metrics_and_api_document() -> None:
    public = {(r.method, r.path) for r in ROUTES if r.role is None}
    assert public == {("GET", p) for p in PUBLIC_PATHS}
    assert {r.name for r in ROUTES if r.role is None} == {
        name for name, role in ROLE_BY_NAME.items() if role is None
    }
    assert all(r.role is Role.ADMIN for r in ROUTES if r.path.startswith("/v1/admin/"))
    assert next(r.role for r in ROUTES if r.path == "/v1/audit") is Role.ADMIN


async def test_unregistered_methods_and_paths_never_reach_a_handler(
    api: Api, tokens: Tokens, db: asyncpg.Connection
) -> None:
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("kept"))
    assert status == 201, body
    before = await pictures(db, tokens.tenant, tokens.other_tenant)
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
    by_path: dict[str, set[str]] = {}
    for r in ROUTES:
        by_path.setdefault(r.path, set()).add(r.method)
        if r.method == "GET":
            by_path[r.path].add("HEAD")
    for path, served in by_path.items():
        concrete = path.replace("{agent_id}", "kept").replace("{op_id}", "some-op")
        for method in methods:
            if method in served:
                continue
            for token in (None, tokens.reader, tokens.admin):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                resp = await api.client.request(method, concrete, headers=headers, data=b"{}")
                raw = await resp.read()
                assert resp.status == 405, (method, concrete, resp.status, raw[:200])
                if method != "HEAD":
                    assert_problem(resp.status, raw, resp.headers)
    for path in ("/v1", "/v1/", "/v1/agents/kept/extra", "/v1/admin", "/v1/admin/other",
                 "/v1/audit/1", "/admin/breaker", "/v1/agents/kept/load/x", "/%2e%2e/v1/stats",
                 "/v1/agents/../audit", "//v1/stats", "/V1/STATS"):  # fmt: skip
        for token in ("", tokens.admin):
            answer = await send_raw(
                api, b"GET", path.encode(), [(b"Authorization", f"Bearer {token}".encode())]
            )
            # Dot segments may be resolved to a served path, which then wants a token.
            assert answer.status in ((401, 404) if not token else (200, 404)), (path, answer)
            if answer.status != 200:
                assert_problem(answer.status, answer.body, answer.headers)
    assert await pictures(db, tokens.tenant, tokens.other_tenant) == before


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "Bearer", id="scheme-only"),
        pytest.param(lambda t: "Bearer    ", id="blank-token"),
        pytest.param(lambda t: t, id="no-scheme"),
        pytest.param(lambda t: f"Basic {t}", id="basic"),
        pytest.param(lambda t: f"Token {t}", id="other-scheme"),
        pytest.param(lambda t: f"Bearer {t[:-1]}", id="prefix"),
        pytest.param(lambda t: f"Bearer {t}x", id="longer"),
        pytest.param(lambda t: f"Bearer {t.upper()}", id="other-case"),
        pytest.param(lambda t: f"Bearer {t} {t}", id="twice"),
        pytest.param(lambda t: f"Bearer {sha256(t)}", id="digest"),
    ],
)
async def test_malformed_or_altered_credentials_are_401(
    api: Api, tokens: Tokens, db: asyncpg.Connection, authorization: Callable[[str], str]
) -> None:
    before = await pictures(db, tokens.tenant)
    for method, path in (("GET", "/v1/stats"), ("POST", "/v1/agents")):
        resp = await api.client.request(
            method,
            path,
            headers={"Authorization": authorization(tokens.admin)},
            json=agent_body("never"),
        )
        raw = await resp.read()
        assert resp.status == 401, (method, path, raw)
        assert "WWW-Authenticate" in resp.headers
        assert_problem(resp.status, raw, resp.headers)
    assert await pictures(db, tokens.tenant) == before


async def test_token_only_counts_in_the_authorization_header(
    api: Api, tokens: Tokens, db: asyncpg.Connection
) -> None:
    before = await pictures(db, tokens.tenant)
    t = tokens.admin
    attempts: list[tuple[str, dict[str, str]]] = [
        (f"/v1/stats?access_token={t}", {}),
        (f"/v1/stats?token={t}", {}),
        ("/v1/stats", {"X-Api-Key": t}),
        ("/v1/stats", {"Cookie": f"token={t}"}),
        ("/v1/stats", {"Proxy-Authorization": f"Bearer {t}"}),
        ("/v1/stats", {"X-Authorization": f"Bearer {t}"}),
    ]
    for path, headers in attempts:
        resp = await api.client.request("GET", path, headers=headers)
        raw = await resp.read()
        assert resp.status == 401, (path, headers, raw)
        assert_problem(resp.status, raw, resp.headers)
    # The scheme is case-insensitive (RFC 9110) and surrounding blanks are not part of it.
    for header in (f"bearer {t}", f"BEARER {t}", f"Bearer  {t} "):
        resp = await api.client.request("GET", "/v1/stats", headers={"Authorization": header})
        assert resp.status == 200, header
    assert await pictures(db, tokens.tenant) == before


# ---- the replica, the journal and the ledger keep tenants apart too --------------------------


async def test_replica_and_journal_keep_tenants_apart(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api(read_mode="replica")
    more = more_tokens(tokens)
    more.install(api)
    mine, theirs = api.as_token(tokens.writer), api.as_token(more.other_reader)
    for i in range(3):
        status, body, _ = await mine.call("POST", "/v1/agents", agent_body(f"iso-{i}"))
        assert status == 201, body
    replica = app_of(api)[keys.SERVICE].replica
    assert replica is not None
    await eventually(lambda: replica.get(tokens.tenant, "iso-2") is not None, message="replica")

    # Every read now comes from the replica (forced open), and the write goes to the journal.
    status, _, _ = await api.as_token(tokens.admin).call(
        "POST", "/v1/admin/breaker", {"state": "forced_open"}
    )
    assert status == 200
    status, pending, _ = await mine.call("PATCH", "/v1/agents/iso-0", {"name": "journaled"})
    assert status == 202, pending
    status, body, headers = await mine.call("GET", "/v1/agents/iso-0")
    assert status == 200 and headers["X-Registry-Source"] == "replica"
    assert body["name"] == "journaled"

    status, body, headers = await theirs.call("GET", "/v1/agents/iso-0")
    assert status == 404, body
    status, body, headers = await theirs.call("GET", "/v1/agents?task_type=code&limit=100")
    assert status == 200 and headers["X-Registry-Source"] == "replica", body
    assert body["results"] == []
    status, body, _ = await theirs.call("GET", "/v1/stats")
    assert status == 200 and body["total_agents"] == 0, body
    # Not in this tenant's journal, and PostgreSQL cannot be asked: unknown, never "pending".
    status, body, _ = await theirs.call("GET", f"/v1/operations/{pending['op_id']}")
    assert status in (404, 503) and body.get("status") != "pending", body
    status, body, _ = await mine.call("GET", f"/v1/operations/{pending['op_id']}")
    assert status == 200 and body["status"] == "pending", body

    status, _, _ = await api.as_token(tokens.admin).call(
        "POST", "/v1/admin/breaker", {"state": "automatic"}
    )
    assert status == 200

    async def drained() -> bool:
        _, st, _ = await mine.call("GET", "/v1/status")
        return bool(st["journal"]["depth"] == 0)

    await eventually(drained, timeout=20, message="journal drained")
    assert (
        await db.fetchval(
            "SELECT name FROM agents WHERE tenant_id = $1 AND agent_id = 'iso-0'", tokens.tenant
        )
        == "journaled"
    )
    assert (
        await db.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", tokens.other_tenant)
        == 0
    )


async def test_idempotency_keys_belong_to_their_tenant(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api()
    mine, theirs = api.as_token(tokens.writer), api.as_token(tokens.other_writer)
    key = {"Idempotency-Key": "shared-key-1"}
    status, body, headers = await mine.call("POST", "/v1/agents", agent_body("idem-a"), key)
    assert status == 201, body
    # The same key in the other tenant is a different operation: neither the first tenant's
    # stored answer (replayed) nor a conflict with it (422).
    status, body, headers = await theirs.call("POST", "/v1/agents", agent_body("idem-b"), key)
    assert status == 201, body
    assert body["agent_id"] == "idem-b" and "Idempotent-Replayed" not in headers
    status, body, _ = await theirs.call("GET", "/v1/operations/shared-key-1")
    assert status == 200 and body["kind"] == "register", body

    # Journaled (breaker forced open): still one operation per tenant.
    admin = api.as_token(tokens.admin)
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    key = {"Idempotency-Key": "shared-key-2"}
    status, body, _ = await mine.call("POST", "/v1/agents", agent_body("idem-c"), key)
    assert status == 202, body
    status, body, _ = await theirs.call("POST", "/v1/agents", agent_body("idem-d"), key)
    assert status == 202, body
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200

    async def applied() -> bool:
        rows = await db.fetch(
            "SELECT tenant_id, status FROM operations WHERE op_id = 'shared-key-2' "
            "AND tenant_id = ANY($1::text[])",
            [tokens.tenant, tokens.other_tenant],
        )
        return sorted((r["tenant_id"], r["status"]) for r in rows) == sorted(
            [(tokens.tenant, "applied"), (tokens.other_tenant, "applied")]
        )

    await eventually(applied, timeout=20, message="both journaled writes applied")
    for tenant, agent_id in ((tokens.tenant, "idem-c"), (tokens.other_tenant, "idem-d")):
        ids = {
            r["agent_id"]
            for r in await db.fetch("SELECT agent_id FROM agents WHERE tenant_id = $1", tenant)
        }
        assert agent_id in ids and len(ids) == 2, (tenant, ids)
