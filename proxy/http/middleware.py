"""Middleware: request id, access log and metrics, errors as problems, auth, rate limit, deadline.

Order (outermost first): `observe` sees every answer, including the problems the inner layers
produce, so every request is logged and counted exactly once.
"""

from __future__ import annotations

import os
import re
import time

import structlog
from aiohttp import web

from proxy.http import keys
from proxy.http.problems import ProblemError, from_error, problem
from proxy.http.routes import ROLE_BY_NAME, Handler
from proxy.observability.logging import REQUEST_ID
from proxy.registry.errors import RegistryError
from proxy.resilience.deadline import Deadline
from proxy.service.registry import RequestContext

log = structlog.get_logger("registry_proxy.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET_ROUTES = frozenset({"metrics", "healthz", "readyz"})


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    return name or "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    presented = request.headers.get("X-Request-ID")
    if presented is not None and _REQUEST_ID.fullmatch(presented):
        request_id = presented
    else:
        request_id = os.urandom(16).hex()
    request[keys.REQUEST_ID] = request_id
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    try:
        response = await _answer(request, handler)
    finally:
        REQUEST_ID.reset(token)
    response.headers["X-Request-ID"] = request_id
    elapsed = time.perf_counter() - started
    route = _route_name(request)
    source = response.headers.get("X-Registry-Source", "none")
    request.app[keys.METRICS].observe_request(
        route, request.method, response.status, source, elapsed
    )
    if route not in _QUIET_ROUTES and (
        response.status >= 400 or request.app[keys.SETTINGS].log.access
    ):
        principal = request.get(keys.PRINCIPAL)
        log.info(
            "request",
            request_id=request_id,
            tenant=principal.tenant if principal else None,
            token_id=principal.token_id if principal else None,
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(elapsed * 1000, 3),
            source=source,
        )
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as exc:
        return exc.response()
    except RegistryError as exc:
        return from_error(exc)
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "request body too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return problem(
                exc.status,
                exc.reason,
                headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None,
            )
        raise
    except Exception:
        log.exception("unhandled error", route=_route_name(request))
        return problem(500, "the sidecar failed to answer; see its log for the request id")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, role, rate limit and the request's deadline."""
    route = _route_name(request)
    if route not in ROLE_BY_NAME:
        return await handler(request)  # 404 and 405 come from the router
    required = ROLE_BY_NAME[route]
    if required is None:
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="registry-proxy"'},
        )
    principal = request.app[keys.TOKENS].lookup(token.strip())
    if principal is None:
        raise ProblemError(
            401, "unknown token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    request[keys.PRINCIPAL] = principal
    if principal.role < required:
        raise ProblemError(
            403,
            f"role {principal.role.name.lower()} may not call {route}; "
            f"it needs {required.name.lower()}",
        )
    limiter = request.app[keys.LIMITER]
    if limiter is not None:
        wait = limiter.take(principal.token_id)
        if wait > 0:
            raise ProblemError(
                429,
                "rate limit exceeded for this token",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
    settings = request.app[keys.SETTINGS]
    timeout_ms = settings.request.default_timeout_ms
    raw = request.headers.get("X-Request-Timeout")
    if raw is not None:
        try:
            asked = int(raw)
        except ValueError:
            raise ProblemError(
                400, "X-Request-Timeout must be an integer of milliseconds"
            ) from None
        if asked < 1:
            raise ProblemError(400, "X-Request-Timeout must be at least 1 ms")
        timeout_ms = min(timeout_ms, asked)
    request[keys.CONTEXT] = RequestContext(
        tenant=principal.tenant,
        actor=principal.token_id,
        request_id=request[keys.REQUEST_ID],
        deadline=Deadline.after(timeout_ms / 1000),
        client_deadline=timeout_ms < settings.request.default_timeout_ms,
    )
    return await handler(request)
