"""What surrounds every handler: request id, access log and metrics, errors as problems, auth,
rate limit, deadline.

`Gate` holds it, so that two entry points share one implementation: aiohttp's middlewares
(`observe`, then `guard`) for routes the router resolves, and the front door
(`proxy.http.front`) for the hot read it dispatches itself. Order (outermost first): `serve`
sees every answer, including the problems `admit` raises, so every request is logged and counted
exactly once, and traced once when tracing is on (its span opens in `enter` and ends in
`account`, on both entry points).

The gate is given the role each route needs (`proxy.http.application` hands it the route
table's), so that this module does not depend on the table and its handlers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from time import perf_counter

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDictProxy

from proxy.http import keys
from proxy.http.auth import Role, TokenStore
from proxy.http.problems import ProblemError, from_error, problem
from proxy.http.ratelimit import RateLimiter
from proxy.observability.logging import REQUEST_ID
from proxy.observability.metrics import Metrics
from proxy.observability.spans import ServerSpans
from proxy.registry.errors import RegistryError
from proxy.resilience import Deadline
from proxy.service import RequestContext
from proxy.service.ids import UniqueIds
from proxy.settings import Settings

log = structlog.get_logger("registry_proxy.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET_ROUTES = frozenset({"metrics", "healthz", "readyz"})
_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="registry-proxy"'}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def route_name(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    return name or "unmatched"


@dataclass(frozen=True, slots=True, eq=False)
class Gate:
    settings: Settings
    tokens: TokenStore
    metrics: Metrics
    limiter: RateLimiter | None
    # Request ids: for correlation, never for secrecy.
    ids: UniqueIds
    # The role each route name needs; None for a public route. A name not in it (404, 405)
    # passes untouched, like a public route.
    roles: Mapping[str, Role | None]
    # None unless tracing is on: then every request has a span, from `enter` to `account`.
    spans: ServerSpans | None = None

    async def serve(self, request: web.Request, route: str, handler: Handler) -> web.StreamResponse:
        """Run ``handler`` as the request ``route``: id, problems, metrics, access line."""
        request_id, token, started = self.enter(request, route)
        try:
            response = await handler(request)
        except Exception as exc:
            response = self.problem_for(exc, route)
        finally:
            REQUEST_ID.reset(token)
        return self.leave(request, route, response, request_id, started)

    def enter(
        self, request: web.Request, route: str, *, in_task: bool = True
    ) -> tuple[str, Token[str | None], float]:
        """The first half of `serve`: the request's id, in the log context from here on, and
        its span when tracing is on. ``in_task=False`` from a callback outside any task (where
        tracing is not used).

        The caller resets the context with the token once the answer is made (whatever
        happened), then calls `leave` with the id and the start time."""
        headers = request.headers
        presented = headers.get("X-Request-ID")
        if presented is not None and _REQUEST_ID.fullmatch(presented):
            request_id = presented
        else:
            request_id = self.ids.next()
        request[keys.REQUEST_ID] = request_id
        spans = self.spans
        if spans is not None:
            span = request[keys.SPAN] = spans.start(request.method, route, request_id, headers)
            return request_id, REQUEST_ID.set(request_id, span.trace_id), perf_counter()
        if not in_task:
            return request_id, REQUEST_ID.set_outside_tasks(request_id), perf_counter()
        return request_id, REQUEST_ID.set(request_id), perf_counter()

    def resume(self, request: web.Request, request_id: str) -> Token[str | None]:
        """`enter`'s log context again, for the rest of a request that goes on in a task;
        reset with the token like `enter`'s."""
        span = request[keys.SPAN] if self.spans is not None else None
        return REQUEST_ID.set(request_id, span.trace_id if span is not None else None)

    def leave(
        self,
        request: web.Request,
        route: str,
        response: web.StreamResponse,
        request_id: str,
        started: float,
    ) -> web.StreamResponse:
        """The second half of `serve`: the id on the answer, metrics and the access line."""
        headers = response.headers
        headers["X-Request-ID"] = request_id
        source = headers.get("X-Registry-Source", "none")
        self.account(request, route, response.status, source, request_id, started)
        return response

    def account(
        self,
        request: web.Request,
        route: str,
        status: int,
        source: str,
        request_id: str,
        started: float,
    ) -> None:
        """Metrics, the access line and the end of the span of an answer; `leave` without
        touching the response, for an answer that carries its request id already."""
        elapsed = perf_counter() - started
        self.metrics.requests.observe(route, request.method, status, source, elapsed)
        span = request[keys.SPAN] if self.spans is not None else None
        if (status >= 400 or self.settings.log.access) and route not in _QUIET_ROUTES:
            principal = request.get(keys.PRINCIPAL)
            log.info(
                "request",
                request_id=request_id,
                **({"trace_id": f"{span.trace_id:032x}"} if span is not None else {}),
                tenant=principal.tenant if principal else None,
                token_id=principal.token_id if principal else None,
                method=request.method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                source=source,
            )
        if span is not None:
            span.end(status, source)

    @staticmethod
    def problem_for(exc: Exception, route: str) -> web.StreamResponse:
        """The answer for what a handler raised; called in its except block (for the log)."""
        if isinstance(exc, ProblemError):
            return exc.response()
        if isinstance(exc, RegistryError):
            return from_error(exc)
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            return problem(413, "request body too large")
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise exc  # a redirect is an answer, not a problem
            allow = exc.headers.get("Allow")
            return problem(exc.status, exc.reason, headers={"Allow": allow} if allow else None)
        log.exception("unhandled error", route=route)
        return problem(500, "the sidecar failed to answer; see its log for the request id")

    def admit(self, request: web.Request, route: str) -> RequestContext | None:
        """Authentication, role, rate limit and the request's deadline; a problem if refused.

        Gives the request's context (also kept on the request). Routes the router did not
        match (404, 405) and public routes pass untouched, without one."""
        required = self.roles.get(route)
        if required is None:
            return None
        headers = request.headers
        presented = headers.getall("Authorization", ())
        if len(presented) > 1:
            # Which one counts would depend on the parser in front of us: refuse the ambiguity.
            raise ProblemError(400, "send one Authorization header, not several")
        scheme, _, token = (presented[0] if presented else "").partition(" ")
        token = token.strip()
        if not token or scheme.lower() != "bearer":
            raise ProblemError(401, "send Authorization: Bearer <token>", headers=_UNAUTHENTICATED)
        principal = self.tokens.lookup(token)
        if principal is None:
            raise ProblemError(401, "unknown token", headers=_INVALID_TOKEN)
        request[keys.PRINCIPAL] = principal
        if principal.role < required:
            raise ProblemError(
                403,
                f"role {principal.role.name.lower()} may not call {route}; "
                f"it needs {required.name.lower()}",
            )
        if self.limiter is not None:
            wait = self.limiter.take(principal.token_id)
            if wait > 0:
                raise ProblemError(
                    429,
                    "rate limit exceeded for this token",
                    headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                )
        default_ms = self.settings.request.default_timeout_ms
        timeout_ms = default_ms
        raw = headers.get("X-Request-Timeout")
        if raw is not None:
            timeout_ms = min(timeout_ms, _deadline_ms(raw, headers))
        ctx = request[keys.CONTEXT] = RequestContext(
            tenant=principal.tenant,
            actor=principal.token_id,
            request_id=request[keys.REQUEST_ID],
            deadline=Deadline.after(timeout_ms / 1000),
            client_deadline=timeout_ms < default_ms,
        )
        return ctx


# X-Request-Timeout: ASCII digits only (int() would also take "1_000", "+5" or other scripts'
# digits, which the document does not promise), few enough to fit a 64-bit integer.
DEADLINE_MAX_MS = 10**18 - 1
_DEADLINE = re.compile(r"[0-9]{1,18}")


def _deadline_ms(raw: str, headers: CIMultiDictProxy[str]) -> int:
    if len(headers.getall("X-Request-Timeout")) > 1:
        raise ProblemError(400, "send one X-Request-Timeout header, not several")
    if _DEADLINE.fullmatch(raw.strip()) is None:
        raise ProblemError(400, "X-Request-Timeout must be an integer of milliseconds")
    asked = int(raw)
    if asked < 1:
        raise ProblemError(400, "X-Request-Timeout must be at least 1 ms")
    return asked


GATE = web.AppKey("gate", Gate)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await request.app[GATE].serve(request, route_name(request), handler)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[GATE].admit(request, route_name(request))
    return await handler(request)
