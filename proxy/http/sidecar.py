"""The sidecar's own endpoints: status, readiness, liveness, metrics, the API document and the
admin's breaker switch.

They describe or steer the sidecar rather than the registry. What they show comes from the
service layer's `Sidecar` (`proxy.service.status`) as documents and plain numbers; the metrics
handler turns the numbers into gauges just before Prometheus reads them.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.http import keys
from proxy.http.auth import Role
from proxy.http.body import read_model
from proxy.observability import collector, heap
from proxy.registry.models import BreakerCommand


async def status(request: web.Request) -> web.Response:
    principal = request[keys.PRINCIPAL]
    # An admin sees every tenant's figures; any other token, its own tenant's.
    scope = None if principal.role >= Role.ADMIN else principal.tenant
    document = request.app[keys.SIDECAR].status(tenant=scope)
    if scope is None:
        # The process's heap, for telling live data from memory the allocator keeps.
        document["memory"] = {**heap.stats(), **collector.stats()}
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def admin_breaker(request: web.Request) -> web.Response:
    body = await read_model(request, BreakerCommand)
    service = request.app[keys.SERVICE]
    principal = request[keys.PRINCIPAL]
    service.set_breaker(body.state, body.reason or f"{body.state} by {principal.token_id}")
    recorded = await service.record_admin(
        request[keys.CONTEXT], f"breaker.{body.state}", "breaker:postgres"
    )
    return web.Response(
        body=orjson.dumps(service.breaker.snapshot()),
        content_type="application/json",
        headers={"X-Registry-Source": recorded.source},
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[keys.SIDECAR].readiness()
    return web.Response(
        status=200 if readiness.ready else 503,
        body=orjson.dumps(readiness),
        content_type="application/json",
    )


async def metrics(request: web.Request) -> web.Response:
    m = request.app[keys.METRICS]
    g = request.app[keys.SIDECAR].gauges()
    m.pool_connections.labels("in_use").set(g.pool_in_use)
    m.pool_connections.labels("idle").set(g.pool_idle)
    m.pool_connections.labels("max").set(g.pool_max)
    if g.replica_agents is not None:
        m.replica_agents.set(g.replica_agents)
    if g.replica_age_s is not None:
        m.replica_age.set(g.replica_age_s)
    if g.journal_depth is not None:
        m.journal_depth.set(g.journal_depth)
    if g.journal_writable is not None:
        m.journal_writable.set(1 if g.journal_writable else 0)
    if g.journal_quarantine_files is not None:
        m.journal_quarantine_files.set(g.journal_quarantine_files)
    if g.db_queue_depth is not None:
        m.db_queue_depth.set(g.db_queue_depth)
    if g.loop_lag_s is not None:
        m.loop_lag.set(g.loop_lag_s)
    if g.failover_unconfirmed is not None:
        m.failover_unconfirmed.set(g.failover_unconfirmed)
    resp = web.Response(body=generate_latest(m.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[keys.API_DOCUMENT](), content_type="application/json")
