"""The answers of the running sidecar against its own `/openapi.json`.

Each sample response is looked up in the document by route, method and status code, and its body
is validated with jsonschema (Draft 2020-12) against the schema the document gives for it, with
`#/components/schemas/...` references resolved inside the document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from jsonschema import Draft202012Validator

from proxy.http.routes import ROUTES
from proxy.registry.models import AgentQuery
from tests.conftest import Api, AppFactory, Tokens, agent_body, eventually

ROUTE_BY_NAME = {r.name: r for r in ROUTES}


# ---- helpers ---------------------------------------------------------------------------------


async def fetch_doc(api: Api) -> dict[str, Any]:
    resp = await api.client.get("/openapi.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    return orjson.loads(await resp.read())


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # The schema is validated as part of a document that carries the components, so every
    # "#/components/schemas/X" reference resolves inside it.
    root = {**schema, "components": doc["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def operation(doc: dict[str, Any], route_name: str) -> dict[str, Any]:
    route = ROUTE_BY_NAME[route_name]
    return doc["paths"][route.path][route.method.lower()]


def check(doc: dict[str, Any], route_name: str, status: int, headers: Any, raw: bytes) -> None:
    """The status is documented for the route, and the body matches the schema given for it."""
    responses = operation(doc, route_name)["responses"]
    assert str(status) in responses, (
        f"{route_name} answered {status}, the document lists {sorted(responses)}"
    )
    declared = responses[str(status)].get("content")
    if not raw:
        return
    ctype = headers["Content-Type"].split(";")[0].strip()
    if status >= 400 and ROUTE_BY_NAME[route_name].role is not None:
        assert ctype == "application/problem+json", (route_name, status, ctype)
    if declared is None:
        return  # the document promises no particular body for this answer
    assert ctype in declared, (route_name, status, ctype, sorted(declared))
    body = orjson.loads(raw)
    errors = sorted(
        validator(doc, declared[ctype]["schema"]).iter_errors(body), key=lambda e: e.path
    )
    assert not errors, f"{route_name} {status}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message}" for e in errors
    )


async def request(
    api: Api,
    method: str,
    path: str,
    *,
    json: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: Any = None,
) -> tuple[int, Any, bytes]:
    h = {"Authorization": f"Bearer {token or api.token}"}
    if headers:
        h.update(headers)
    resp = await api.client.request(method, path, json=json, headers=h, data=data)
    raw = await resp.read()
    return resp.status, resp.headers, raw


def load_body(active: int, queued: int = 0) -> dict[str, Any]:
    return {
        "active_tasks": active,
        "queued_tasks": queued,
        "observed_at": datetime.now(UTC).isoformat(),
    }


PERF = {"success": True, "quality_score": 0.75, "latency_ms": 42.5, "task_type": "code"}


# ---- the document itself ---------------------------------------------------------------------


async def test_document_is_openapi_3_1_and_lists_every_route(api: Api) -> None:
    doc = await fetch_doc(api)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    for route in ROUTES:
        assert route.path in doc["paths"], route.path
        op = doc["paths"][route.path].get(route.method.lower())
        assert op is not None, f"{route.method} {route.path} missing"
        assert op["operationId"] == route.name
        assert op["responses"]
        if route.role is not None:
            assert op["security"] == [{"bearer": []}]
        else:
            assert "security" not in op
        if route.body is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{route.body.__name__}"}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    query_params = {
        p["name"] for p in operation(doc, "query_agents")["parameters"] if p["in"] == "query"
    }
    assert query_params == set(AgentQuery.model_fields)


async def test_component_schemas_are_valid_and_references_resolve(api: Api) -> None:
    doc = await fetch_doc(api)
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        # every reference in the document resolves
        validator(doc, {"$ref": f"#/components/schemas/{name}"}).is_valid({})
    # validation is not vacuous: a body of the wrong shape is refused
    agent = validator(doc, {"$ref": "#/components/schemas/Agent"})
    assert not agent.is_valid({"agent_id": "a"})
    assert not agent.is_valid({"agent_id": 1})
    problem = validator(doc, {"$ref": "#/components/schemas/Problem"})
    assert problem.is_valid({"type": "t", "title": "t", "status": 400, "detail": "d"})
    assert not problem.is_valid({"type": "t", "title": "t", "status": "400", "detail": "d"})
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                for media in (response.get("content") or {}).values():
                    ref = media["schema"]["$ref"]
                    name = ref.rsplit("/", 1)[1]
                    assert name in doc["components"]["schemas"], (path, method, status, ref)


async def test_request_bodies_match_the_document(api: Api) -> None:
    """What the server accepts validates against the request schemas, what it rejects does not."""
    doc = await fetch_doc(api)

    def schema_of(route_name: str) -> Draft202012Validator:
        op = operation(doc, route_name)
        return validator(doc, op["requestBody"]["content"]["application/json"]["schema"])

    good = {
        "register": agent_body("rq", max_concurrent_tasks=3),
        "patch_agent": {"name": "n"},
        "put_load": load_body(1),
        "heartbeat": {},
        "post_performance": PERF,
        "admin_breaker": {"state": "automatic"},
    }
    bad = {
        "register": {**agent_body("rq"), "unknown": 1},
        "patch_agent": {"name": "n", "unknown": 1},
        "put_load": {**load_body(1), "active_tasks": -1},
        "heartbeat": {"unknown": 1},
        "post_performance": {**PERF, "quality_score": 2},
        "admin_breaker": {"state": "sideways"},
    }
    for name, body in good.items():
        errors = list(schema_of(name).iter_errors(body))
        assert not errors, (name, [e.message for e in errors])
    for name, body in bad.items():
        assert not schema_of(name).is_valid(body), name


# ---- success answers -------------------------------------------------------------------------


async def test_success_answers_match_the_document(api: Api, tokens: Tokens) -> None:
    doc = await fetch_doc(api)
    admin = api.as_token(tokens.admin)

    status, headers, raw = await request(
        api,
        "POST",
        "/v1/agents",
        json=agent_body("c1", specializations=["s"]),
        headers={"Idempotency-Key": "contract-reg"},
    )
    assert status == 201
    check(doc, "register", status, headers, raw)
    status, headers, raw = await request(api, "POST", "/v1/agents", json=agent_body("c2"))
    check(doc, "register", status, headers, raw)

    status, headers, raw = await request(api, "PUT", "/v1/agents/c1/load", json=load_body(3, 1))
    assert status == 200
    check(doc, "put_load", status, headers, raw)

    status, headers, raw = await request(api, "POST", "/v1/agents/c1/heartbeat")
    assert status == 200
    check(doc, "heartbeat", status, headers, raw)

    status, headers, raw = await request(
        api, "POST", "/v1/agents/c1/performance", json={**PERF, "event_id": "contract-ev"}
    )
    assert status == 201
    # 201 itself is checked by test_performance_201_is_documented
    status, headers, raw = await request(
        api, "POST", "/v1/agents/c1/performance", json={**PERF, "event_id": "contract-ev"}
    )
    assert status == 200
    check(doc, "post_performance", status, headers, raw)

    status, headers, raw = await request(api, "GET", "/v1/agents/c1")
    assert status == 200
    check(doc, "get_agent", status, headers, raw)

    status, headers, raw = await request(api, "PATCH", "/v1/agents/c2", json={"name": "C2"})
    assert status == 200
    check(doc, "patch_agent", status, headers, raw)

    for query in (
        "",
        "?task_type=code&languages=python&limit=5",
        "?min_success_rate=0.5",
        "?task_type=none",
    ):
        status, headers, raw = await request(api, "GET", "/v1/agents" + query)
        assert status == 200
        check(doc, "query_agents", status, headers, raw)

    status, headers, raw = await request(api, "GET", "/v1/stats")
    assert status == 200
    check(doc, "stats", status, headers, raw)

    status, headers, raw = await request(api, "GET", "/v1/operations/contract-reg")
    assert status == 200
    check(doc, "operation", status, headers, raw)

    status, headers, raw = await request(api, "DELETE", "/v1/agents/c2")
    assert status == 204
    check(doc, "delete_agent", status, headers, raw)

    status, headers, raw = await request(api, "GET", "/v1/status")
    assert status == 200
    check(doc, "status", status, headers, raw)

    status, headers, raw = await request(
        admin, "POST", "/v1/admin/breaker", json={"state": "automatic"}, token=tokens.admin
    )
    assert status == 200
    check(doc, "admin_breaker", status, headers, raw)

    for name in ("healthz", "readyz", "metrics", "openapi"):
        route = ROUTE_BY_NAME[name]
        resp = await api.client.get(route.path)
        raw = await resp.read()
        assert resp.status == 200
        check(doc, name, resp.status, resp.headers, raw)


async def test_performance_201_is_documented(api: Api) -> None:
    doc = await fetch_doc(api)
    status, _, _ = await request(api, "POST", "/v1/agents", json=agent_body("p201"))
    assert status == 201
    status, headers, raw = await request(api, "POST", "/v1/agents/p201/performance", json=PERF)
    assert status == 201
    check(doc, "post_performance", status, headers, raw)


async def test_journaled_answers_match_the_document(api: Api, tokens: Tokens) -> None:
    doc = await fetch_doc(api)
    admin = api.as_token(tokens.admin)
    status, _, _ = await request(api, "POST", "/v1/agents", json=agent_body("j1"))
    assert status == 201

    async def replica_has_it() -> bool:
        _, _, raw = await request(api, "GET", "/v1/status")
        return orjson.loads(raw)["replica"]["agents"] >= 1

    await eventually(replica_has_it, message="replica has the agent")
    status, _, _ = await request(
        admin, "POST", "/v1/admin/breaker", json={"state": "forced_open"}, token=tokens.admin
    )
    assert status == 200

    writes = [
        ("register", "POST", "/v1/agents", agent_body("j2")),
        ("patch_agent", "PATCH", "/v1/agents/j1", {"name": "J1"}),
        ("put_load", "PUT", "/v1/agents/j1/load", load_body(2)),
        ("heartbeat", "POST", "/v1/agents/j1/heartbeat", None),
        ("post_performance", "POST", "/v1/agents/j1/performance", PERF),
        ("delete_agent", "DELETE", "/v1/agents/j2", None),
    ]
    op_ids = []
    for name, method, path, body in writes:
        status, headers, raw = await request(api, method, path, json=body)
        assert status == 202, (name, raw)
        check(doc, name, status, headers, raw)
        op_ids.append(orjson.loads(raw)["op_id"])
    for name in ("get_agent", "query_agents", "stats"):
        path = ROUTE_BY_NAME[name].path.replace("{agent_id}", "j1")
        status, headers, raw = await request(api, "GET", path)
        assert status == 200
        assert headers["X-Registry-Source"] == "replica"
        check(doc, name, status, headers, raw)
    status, headers, raw = await request(api, "GET", f"/v1/operations/{op_ids[0]}")
    assert orjson.loads(raw)["status"] == "pending"
    check(doc, "operation", status, headers, raw)

    status, _, _ = await request(
        admin, "POST", "/v1/admin/breaker", json={"state": "automatic"}, token=tokens.admin
    )
    assert status == 200

    async def all_done() -> bool:
        for op_id in op_ids:
            _, _, raw = await request(api, "GET", f"/v1/operations/{op_id}")
            if orjson.loads(raw)["status"] == "pending":
                return False
        return True

    await eventually(all_done, message="journal drained")
    for op_id in op_ids:
        status, headers, raw = await request(api, "GET", f"/v1/operations/{op_id}")
        assert orjson.loads(raw)["status"] == "applied", raw
        check(doc, "operation", status, headers, raw)


# ---- problem answers -------------------------------------------------------------------------


async def test_problem_answers_match_the_document(api: Api, tokens: Tokens) -> None:
    doc = await fetch_doc(api)
    status, _, _ = await request(api, "POST", "/v1/agents", json=agent_body("e1"))
    assert status == 201
    _, _, raw = await request(api, "GET", "/v1/agents/e1")
    revision = orjson.loads(raw)["revision"]
    json_ct = {"Content-Type": "application/json"}

    samples: list[tuple[str, str, str, Any, dict[str, str], str | None, int]] = []
    # (route, method, path, json, headers, token, expected status)
    protected = [r for r in ROUTES if r.role is not None]
    for r in protected:
        path = r.path.replace("{agent_id}", "e1").replace("{op_id}", "x1")
        samples.append((r.name, r.method, path, None, {}, "nope-nope-nope", 401))
    for name, method, path in [
        ("register", "POST", "/v1/agents"),
        ("patch_agent", "PATCH", "/v1/agents/e1"),
        ("put_load", "PUT", "/v1/agents/e1/load"),
        ("heartbeat", "POST", "/v1/agents/e1/heartbeat"),
        ("post_performance", "POST", "/v1/agents/e1/performance"),
        ("delete_agent", "DELETE", "/v1/agents/e1"),
        ("admin_breaker", "POST", "/v1/admin/breaker"),
    ]:
        samples.append((name, method, path, {"x": 1}, {}, tokens.reader, 403))
    samples += [
        ("get_agent", "GET", "/v1/agents/ghost", None, {}, None, 404),
        ("patch_agent", "PATCH", "/v1/agents/ghost", {"name": "x"}, {}, None, 404),
        ("put_load", "PUT", "/v1/agents/ghost/load", load_body(1), {}, None, 404),
        ("heartbeat", "POST", "/v1/agents/ghost/heartbeat", None, {}, None, 404),
        ("post_performance", "POST", "/v1/agents/ghost/performance", PERF, {}, None, 404),
        ("operation", "GET", "/v1/operations/ghost", None, {}, None, 404),
        ("register", "POST", "/v1/agents", agent_body("e1"), {}, None, 409),
        (
            "patch_agent",
            "PATCH",
            "/v1/agents/e1",
            {"name": "x"},
            {"If-Match": f'"{revision + 1}"'},
            None,
            412,
        ),
        ("patch_agent", "PATCH", "/v1/agents/e1", {"name": "x"}, {"If-Match": "nope"}, None, 400),
        ("register", "POST", "/v1/agents", {**agent_body("e2"), "x": 1}, {}, None, 422),
        ("query_agents", "GET", "/v1/agents?limit=0", None, {}, None, 422),
        ("get_agent", "GET", "/v1/agents/-bad", None, {}, None, 422),
        ("operation", "GET", "/v1/operations/-bad", None, {}, None, 422),
        ("put_load", "PUT", "/v1/agents/e1/load", {"active_tasks": -1}, {}, None, 422),
        (
            "post_performance",
            "POST",
            "/v1/agents/e1/performance",
            {**PERF, "success": None},
            {},
            None,
            422,
        ),
        ("heartbeat", "POST", "/v1/agents/e1/heartbeat", {"observed_at": "never"}, {}, None, 422),
        ("admin_breaker", "POST", "/v1/admin/breaker", {"state": "off"}, {}, tokens.admin, 422),
        ("register", "POST", "/v1/agents", agent_body("e3"), {"Idempotency-Key": "!"}, None, 422),
        ("delete_agent", "DELETE", "/v1/agents/e1", None, {"X-Request-Timeout": "soon"}, None, 400),
    ]
    for name, method, path, body, headers, token, expected in samples:
        status, resp_headers, raw = await request(
            api, method, path, json=body, headers=headers, token=token
        )
        assert status == expected, (name, method, path, raw)
        check(doc, name, status, resp_headers, raw)

    # raw bodies: malformed, wrong type, too large
    for name, method, path in [
        ("register", "POST", "/v1/agents"),
        ("put_load", "PUT", "/v1/agents/e1/load"),
    ]:
        status, h, raw = await request(api, method, path, data=b"{", headers=json_ct)
        assert status == 400
        check(doc, name, status, h, raw)
        status, h, raw = await request(
            api, method, path, data=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert status == 415
        check(doc, name, status, h, raw)
        status, h, raw = await request(api, method, path, data=b" " * 70_000, headers=json_ct)
        assert status == 413
        check(doc, name, status, h, raw)
    # the admin endpoint as its own role would see them
    status, h, raw = await request(
        api, "POST", "/v1/admin/breaker", data=b"[", headers=json_ct, token=tokens.admin
    )
    assert status == 400
    check(doc, "admin_breaker", status, h, raw)


@pytest.mark.parametrize(
    "route_name", ["get_agent", "query_agents", "stats", "operation", "status"]
)
async def test_read_400_is_documented(api: Api, route_name: str) -> None:
    doc = await fetch_doc(api)
    path = ROUTE_BY_NAME[route_name].path.replace("{agent_id}", "a").replace("{op_id}", "o")
    status, headers, raw = await request(api, "GET", path, headers={"X-Request-Timeout": "-5"})
    assert status == 400
    check(doc, route_name, status, headers, raw)


async def test_rate_limited_answers_match_the_document(make_api: AppFactory) -> None:
    api = await make_api(rate_limit={"enabled": True, "rate_per_s": 0.01, "burst": 2})
    doc = await fetch_doc(api)
    for name, method, path, body in [
        ("stats", "GET", "/v1/stats", None),
        ("register", "POST", "/v1/agents", agent_body("rl")),
    ]:
        statuses = []
        for _ in range(3):
            status, headers, raw = await request(api, method, path, json=body)
            statuses.append(status)
        assert statuses[-1] == 429, statuses
        assert int(headers["Retry-After"]) >= 1
        check(doc, name, 429, headers, raw)


async def test_unavailable_answers_match_the_document(make_api: AppFactory, tokens: Tokens) -> None:
    api = await make_api(write_fallback="reject", replica={"enabled": False})
    doc = await fetch_doc(api)
    status, _, _ = await request(
        api, "POST", "/v1/admin/breaker", json={"state": "forced_open"}, token=tokens.admin
    )
    assert status == 200
    for name, method, path, body in [
        ("register", "POST", "/v1/agents", agent_body("u1")),
        ("patch_agent", "PATCH", "/v1/agents/u1", {"name": "x"}),
        ("put_load", "PUT", "/v1/agents/u1/load", load_body(1)),
        ("heartbeat", "POST", "/v1/agents/u1/heartbeat", None),
        ("post_performance", "POST", "/v1/agents/u1/performance", PERF),
        ("delete_agent", "DELETE", "/v1/agents/u1", None),
        ("get_agent", "GET", "/v1/agents/u1", None),
        ("query_agents", "GET", "/v1/agents", None),
        ("stats", "GET", "/v1/stats", None),
        ("operation", "GET", "/v1/operations/u1", None),
    ]:
        status, headers, raw = await request(api, method, path, json=body)
        assert status == 503, (name, raw)
        assert int(headers["Retry-After"]) >= 1
        check(doc, name, status, headers, raw)
    resp = await api.client.get("/readyz")
    assert resp.status == 503
    check(doc, "readyz", 503, resp.headers, await resp.read())


async def test_caller_deadline_answer_is_documented(
    api: Api, db: asyncpg.Connection, tokens: Tokens
) -> None:
    doc = await fetch_doc(api)
    status, _, _ = await request(api, "POST", "/v1/agents", json=agent_body("slow"))
    assert status == 201
    async with db.transaction():
        # the row is busy in another session: the write outlives its caller's deadline
        await db.execute(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = 'slow' FOR UPDATE",
            tokens.tenant,
        )
        status, headers, raw = await request(
            api,
            "PATCH",
            "/v1/agents/slow",
            json={"name": "late"},
            headers={"X-Request-Timeout": "100"},
        )
    assert status == 504, raw
    check(doc, "patch_agent", status, headers, raw)


async def test_every_route_answers_as_documented(api: Api, tokens: Tokens) -> None:
    """A walk over ROUTES (whatever it holds) with the admin token: each answer is documented."""
    doc = await fetch_doc(api)
    status, _, _ = await request(api, "POST", "/v1/agents", json=agent_body("walk"))
    assert status == 201
    samples: dict[str, Any] = {
        "register": agent_body("walk-2"),
        "patch_agent": {"name": "walked"},
        "put_load": load_body(1),
        "post_performance": PERF,
        "admin_breaker": {"state": "automatic"},
    }
    for route in ROUTES:
        path = route.path.replace("{agent_id}", "walk").replace("{op_id}", "none")
        status, headers, raw = await request(
            api, route.method, path, json=samples.get(route.name), token=tokens.admin
        )
        assert status < 500, (route.name, status, raw)
        check(doc, route.name, status, headers, raw)
