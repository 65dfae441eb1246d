"""The HTTP API: thin handlers over `RegistryService`, and the one table of routes and roles.

`ROUTES` is the single place that says which role each endpoint needs; the auth middleware reads
it, and a test walks every route of the app to prove none is missing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from proxy.http import keys
from proxy.http.auth import Role
from proxy.http.body import field_errors, read_json, validate
from proxy.http.problems import PROBLEM_TYPE, ProblemError
from proxy.registry.models import (
    ID_PATTERN,
    IF_MATCH_PATTERN,
    PRINTABLE,
    AgentQuery,
    AuditTime,
    BreakerCommand,
    HeartbeatRequest,
    LoadRequest,
    PatchRequest,
    PerformanceRequest,
    RegisterRequest,
)
from proxy.registry.requests import request_hash
from proxy.service import Answer, RequestContext
from proxy.store.repository import REGISTRY_KINDS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ID = re.compile(ID_PATTERN)
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: Role | None  # None: public (probes, metrics, the API document)
    name: str
    summary: str
    body: type[BaseModel] | None = None
    answer: str | None = None  # component name of the success body in the OpenAPI document


def json_response(answer: Answer) -> web.Response:
    headers = {"X-Registry-Source": answer.source, **answer.headers}
    body = answer.body
    if answer.status == 204 or body is None:
        return web.Response(status=answer.status, headers=headers)
    # The header itself, not content_type=: aiohttp's content-type property parses and rebuilds.
    headers["Content-Type"] = PROBLEM_TYPE if answer.status >= 400 else "application/json"
    encoded = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(status=answer.status, body=encoded, headers=headers)


def _ctx(request: web.Request) -> RequestContext:
    return request[keys.CONTEXT]


def _agent_id(request: web.Request) -> str:
    agent_id = request.match_info["agent_id"]
    if not _ID.fullmatch(agent_id):
        raise ProblemError(
            422,
            "agent_id is not a valid id",
            errors=[{"field": "agent_id", "message": f"must match {ID_PATTERN}"}],
        )
    return agent_id


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _ID.fullmatch(key):
        raise ProblemError(
            422,
            "Idempotency-Key is not valid",
            errors=[{"field": "Idempotency-Key", "message": f"must match {ID_PATTERN}"}],
        )
    return key


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    raw = raw.strip()
    if _IF_MATCH.fullmatch(raw) is None:
        raise ProblemError(400, 'If-Match must be an ETag of this API, like "12"')
    if raw == "*":
        return None
    return int(raw.removeprefix("W/").strip('"'))


async def _body(request: web.Request, model: type[BaseModel], *, allow_empty: bool = False) -> Any:
    limits = request.app[keys.SETTINGS].request
    raw = await read_json(
        request,
        max_bytes=limits.max_body_bytes,
        max_depth=limits.max_json_depth,
        max_items=limits.max_array_items,
        allow_empty=allow_empty,
        read_timeout=limits.read_timeout_s,
    )
    return validate(model, raw)


async def _write(
    request: web.Request, kind: str, payload: dict[str, Any], target: str | None, client: Any
) -> web.Response:
    service = request.app[keys.SERVICE]
    answer = await service.write(
        _ctx(request),
        kind,
        payload,
        req_hash=request_hash(kind, target, client),
        idempotency_key=_idempotency_key(request),
    )
    if answer.status == 201 and kind == "register":
        answer.headers.setdefault("Location", f"/v1/agents/{payload['body']['agent_id']}")
    return json_response(answer)


# ---- registry endpoints ----------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    body: RegisterRequest = await _body(request, RegisterRequest)
    data = body.model_dump(mode="json")
    return await _write(request, "register", {"body": data}, None, data)


async def get_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    answer = await request.app[keys.SERVICE].get_agent(_ctx(request), agent_id)
    return json_response(answer)


_LIST_PARAMS = ("languages", "specializations")


def _query_params(request: web.Request) -> AgentQuery:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if key in _LIST_PARAMS:
            # Comma-separated, as the document says; an empty value is an empty list, and an
            # empty item (`a,,b`, a lone comma) is refused like any capability that is not one.
            data[key] = [v for raw in values if raw for v in raw.split(",")]
        elif len(values) > 1:
            raise ProblemError(
                422,
                f"{key} given more than once",
                errors=[{"field": key, "message": "give it once"}],
            )
        else:
            data[key] = values[0]
    try:
        return AgentQuery.model_validate(data)
    except ValidationError as exc:
        raise ProblemError(
            422, "the query has invalid parameters", errors=field_errors(exc)
        ) from None


async def query_agents(request: web.Request) -> web.Response:
    answer = await request.app[keys.SERVICE].query(_ctx(request), _query_params(request))
    return json_response(answer)


async def patch_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    if_match = _if_match(request)
    body: PatchRequest = await _body(request, PatchRequest)
    data = body.model_dump(mode="json", exclude_unset=True)
    payload = {"agent_id": agent_id, "body": data, "if_match": if_match}
    return await _write(request, "patch", payload, agent_id, [data, if_match])


async def put_load(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    body: LoadRequest = await _body(request, LoadRequest)
    data = body.model_dump(mode="json")
    return await _write(request, "load", {"agent_id": agent_id, "body": data}, agent_id, data)


async def heartbeat(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    body: HeartbeatRequest = await _body(request, HeartbeatRequest, allow_empty=True)
    client = body.model_dump(mode="json", exclude_unset=True)
    observed = body.observed_at or datetime.now(UTC)
    payload = {"agent_id": agent_id, "observed_at": observed.isoformat()}
    return await _write(request, "heartbeat", payload, agent_id, client)


async def post_performance(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    body: PerformanceRequest = await _body(request, PerformanceRequest)
    client = body.model_dump(mode="json")
    data = dict(client)
    if data["event_id"] is None:
        # Generated before the first attempt, so a retry or a replay counts it once.
        data["event_id"] = uuid.uuid4().hex
    payload = {"agent_id": agent_id, "body": data}
    return await _write(request, "performance", payload, agent_id, client)


async def delete_agent(request: web.Request) -> web.Response:
    agent_id = _agent_id(request)
    return await _write(request, "unregister", {"agent_id": agent_id}, agent_id, None)


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[keys.SERVICE].stats(_ctx(request)))


async def operation(request: web.Request) -> web.Response:
    op_id = request.match_info["op_id"]
    if not _ID.fullmatch(op_id):
        raise ProblemError(
            422, "op_id is not valid", errors=[{"field": "op_id", "message": "not an op id"}]
        )
    return json_response(await request.app[keys.SERVICE].operation(_ctx(request), op_id))


# ---- operations endpoints --------------------------------------------------------------------


def status_document(app: web.Application) -> dict[str, Any]:
    service = app[keys.SERVICE]
    settings = app[keys.SETTINGS]
    probe = app[keys.PROBE]
    sync = app[keys.SYNC]
    journal = service.journal
    replica_stats = (
        service.replica.stats()
        if service.replica is not None
        else {
            "agents": 0,
            "age_seconds": None,
            "partial": False,
            "warm": False,
        }
    )
    if sync is not None:
        replica_stats.update(
            resyncs=sync.resyncs, catch_ups=sync.catch_ups, notifications=sync.notifications
        )
    return {
        "read_mode": settings.read_mode.value,
        "write_fallback": settings.write_fallback.value,
        "breaker": service.breaker.snapshot(),
        "probe": probe.snapshot(),
        "retry_budget": service.budget.snapshot() if service.budget is not None else None,
        "replica": replica_stats,
        "journal": journal.stats() if journal is not None else {"depth": 0, "enabled": False},
        "replay": dict(service.replays),
        "pool": service.db.stats(),
        "overload": service.overload_stats(),
    }


# Parts of the status document about the sidecar and PostgreSQL as a whole, which every role
# sees; anything else reaches a non-admin token only as `tenant_status` rebuilds it.
_SIDECAR_WIDE = (
    "read_mode",
    "write_fallback",
    "breaker",
    "probe",
    "retry_budget",
    "pool",
    "overload",
)


def tenant_status(app: web.Application, full: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The status document as a non-admin token sees it: the sidecar's own health, and replica
    and journal figures of its tenant only. No other tenant's counts, no journal path, no replay
    errors (which name the writes they failed on)."""
    service = app[keys.SERVICE]
    replica, journal = service.replica, service.journal
    pending = journal.pending_for(tenant) if journal is not None else []
    doc = {key: full[key] for key in _SIDECAR_WIDE if key in full}
    rep = full["replica"]
    doc["replica"] = {
        "agents": replica.count(tenant) if replica is not None else 0,
        # The journaled writes the replica shows over its rows: those of the registry's kinds.
        "pending_writes": (
            sum(e.kind in REGISTRY_KINDS for e in pending) if replica is not None else 0
        ),
        **{
            key: rep[key]
            for key in ("age_seconds", "partial", "warm", "connected", "from_snapshot")
            if key in rep
        },
    }
    if journal is None:
        doc["journal"] = {"depth": 0, "enabled": False}
    else:
        oldest = min((entry.created_at for entry in pending), default=None)
        doc["journal"] = {
            "depth": len(pending),
            "oldest_pending_age_s": max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            "failed": journal.failed,
        }
    doc["scope"] = {"tenant": tenant}
    return doc


async def status(request: web.Request) -> web.Response:
    document = status_document(request.app)
    principal = request[keys.PRINCIPAL]
    if principal.role < Role.ADMIN:
        document = tenant_status(request.app, document, principal.tenant)
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def admin_breaker(request: web.Request) -> web.Response:
    body: BreakerCommand = await _body(request, BreakerCommand)
    service = request.app[keys.SERVICE]
    principal = request[keys.PRINCIPAL]
    service.set_breaker(body.state, body.reason or f"{body.state} by {principal.token_id}")
    recorded = await service.record_admin(
        _ctx(request), f"breaker.{body.state}", "breaker:postgres"
    )
    return web.Response(
        body=orjson.dumps(service.breaker.snapshot()),
        content_type="application/json",
        headers={"X-Registry-Source": recorded.source},
    )


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Printable, like every actor, action and target the log records (PostgreSQL text cannot
    # even hold a NUL).
    actor: Annotated[str, StringConstraints(max_length=128), PRINTABLE] | None = None
    action: Annotated[str, StringConstraints(max_length=64), PRINTABLE] | None = None
    target: Annotated[str, StringConstraints(max_length=128), PRINTABLE] | None = None
    since: AuditTime | None = None
    until: AuditTime | None = None
    after_id: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=1000)


async def audit(request: web.Request) -> web.Response:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ProblemError(
                422,
                f"{key} given more than once",
                errors=[{"field": key, "message": "give it once"}],
            )
        data[key] = values[0]
    try:
        q = AuditQuery.model_validate(data)
    except ValidationError as exc:
        raise ProblemError(
            422, "the query has invalid parameters", errors=field_errors(exc)
        ) from None
    answer = await request.app[keys.SERVICE].audit(_ctx(request), **q.model_dump())
    return json_response(answer)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    service = request.app[keys.SERVICE]
    db_ok = service.db.pool is not None and service.breaker.state.value in (
        "closed",
        "half_open",
        "disabled",
    )
    replica_ok = service.replica is not None and service.replica.warm
    ready = db_ok or replica_ok
    # Readiness is about reads; a journal that cannot take writes is shown, not hidden.
    journal = service.journal.condition if service.journal is not None else "disabled"
    body = {"ready": ready, "database": db_ok, "replica_warm": replica_ok, "journal": journal}
    return web.Response(
        status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    m = request.app[keys.METRICS]
    service = request.app[keys.SERVICE]
    pool = service.db.stats()
    m.pool_connections.labels("in_use").set(pool["in_use"])
    m.pool_connections.labels("idle").set(pool["idle"])
    m.pool_connections.labels("max").set(pool["max"])
    if service.replica is not None:
        m.replica_agents.set(service.replica.size)
        age = service.replica.age()
        m.replica_age.set(age if age is not None else float("nan"))
    if service.journal is not None:
        m.journal_depth.set(service.journal.depth)
        m.journal_writable.set(1 if service.journal.writable else 0)
        m.journal_quarantine_files.set(service.journal.quarantine_files)
    if service.bulkhead is not None:
        m.db_queue_depth.set(service.bulkhead.queued)
    if service.lag is not None:
        m.loop_lag.set(service.lag.last_s)
    resp = web.Response(body=generate_latest(m.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


async def openapi(request: web.Request) -> web.Response:
    from proxy.http.openapi import document

    return web.Response(body=orjson.dumps(document()), content_type="application/json")


R, W, A = Role.READER, Role.WRITER, Role.ADMIN

ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/v1/agents", register, W, "register", "Register an agent", RegisterRequest, "Agent"
    ),
    Route(
        "GET",
        "/v1/agents",
        query_agents,
        R,
        "query_agents",
        "Capability query, best match first",
        None,
        "QueryAnswer",
    ),
    Route("GET", "/v1/agents/{agent_id}", get_agent, R, "get_agent", "One agent", None, "Agent"),
    Route(
        "PATCH",
        "/v1/agents/{agent_id}",
        patch_agent,
        W,
        "patch_agent",
        "Change name, capabilities or max_concurrent_tasks",
        PatchRequest,
        "Agent",
    ),
    Route(
        "PUT",
        "/v1/agents/{agent_id}/load",
        put_load,
        W,
        "put_load",
        "Report active and queued tasks (last writer wins by observed_at)",
        LoadRequest,
        "Agent",
    ),
    Route(
        "POST",
        "/v1/agents/{agent_id}/heartbeat",
        heartbeat,
        W,
        "heartbeat",
        "Liveness of the agent",
        HeartbeatRequest,
        "HeartbeatAnswer",
    ),
    Route(
        "POST",
        "/v1/agents/{agent_id}/performance",
        post_performance,
        W,
        "post_performance",
        "One task outcome",
        PerformanceRequest,
        "PerformanceAnswer",
    ),
    Route(
        "DELETE",
        "/v1/agents/{agent_id}",
        delete_agent,
        W,
        "delete_agent",
        "Unregister (idempotent)",
    ),
    Route("GET", "/v1/stats", stats, R, "stats", "Registry totals", None, "Stats"),
    Route(
        "GET",
        "/v1/operations/{op_id}",
        operation,
        R,
        "operation",
        "State of a journaled write",
        None,
        "Operation",
    ),
    Route(
        "GET",
        "/v1/status",
        status,
        R,
        "status",
        "Breaker, retry budget, pool; replica and journal figures of the caller's tenant "
        "(admin: of every tenant, with the journal's path and replay errors)",
    ),
    Route(
        "POST",
        "/v1/admin/breaker",
        admin_breaker,
        A,
        "admin_breaker",
        "Force the breaker open, disable it, or return it to automatic",
        BreakerCommand,
    ),
    Route(
        "GET",
        "/v1/audit",
        audit,
        A,
        "audit",
        "Audit log of this tenant: filters actor, action, target, since, until; "
        "paging with after_id and limit",
    ),
    Route("GET", "/healthz", healthz, None, "healthz", "Liveness"),
    Route("GET", "/readyz", readyz, None, "readyz", "Readiness"),
    Route("GET", "/metrics", metrics, None, "metrics", "Prometheus metrics"),
    Route("GET", "/openapi.json", openapi, None, "openapi", "This API as OpenAPI 3.1"),
)

ROLE_BY_NAME: dict[str, Role | None] = {r.name: r.role for r in ROUTES}


def add_routes(app: web.Application) -> None:
    for r in ROUTES:
        if r.method == "GET":
            # HEAD wherever GET is (RFC 9110): the same route, so the same name, role and checks.
            app.router.add_get(r.path, r.handler, name=r.name, allow_head=True)
        else:
            app.router.add_route(r.method, r.path, r.handler, name=r.name)
