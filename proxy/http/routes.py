"""The one table of routes: for each endpoint its method, path, handler, the role it needs, and
what the OpenAPI document says of it.

`ROUTES` is the single place that says which role each endpoint needs: the app factory gives
`ROLE_BY_NAME` to the gate that checks it (`proxy.http.middleware`), the OpenAPI document is
generated from the table (`proxy.http.openapi`), and a test walks every route of the app to prove
none is missing. The handlers live with their resource: `proxy.http.agents`,
`proxy.http.operations`, and the sidecar's own endpoints in `proxy.http.sidecar`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from proxy.http.agents import (
    delete_agent,
    get_agent,
    heartbeat,
    patch_agent,
    post_performance,
    put_load,
    query_agents,
    register,
    stats,
)
from proxy.http.auth import Role
from proxy.http.operations import AuditQuery, audit, operation
from proxy.http.sidecar import admin_breaker, healthz, metrics, openapi, readyz, status
from proxy.registry.models import (
    AgentQuery,
    BreakerCommand,
    HeartbeatRequest,
    LoadRequest,
    PatchRequest,
    PerformanceRequest,
    RegisterRequest,
)


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
    query: type[BaseModel] | None = None  # the model that validates its query string


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
        query=AgentQuery,
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
        query=AuditQuery,
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
