"""The front door: the server's request handler, in front of aiohttp's router.

Get-by-id and the capability query are most of a registry consumer's traffic, and on the replica
each costs less than aiohttp's own dispatch around it (route resolution, match info, the
middleware chain, the response's preparation), so those two routes are recognised here and served
directly: through the same `Gate` the middlewares use (the same authentication, rate limit,
deadline, problems, metrics, access line and, when tracing is on, server span), answered with a
`DirectResponse` when the connection allows. Registration, the write a fleet of agents sends
most, comes in here too (`POST /v1/agents`, the path exactly that): aiohttp's dispatch and
answer are a few percent of its cost. Every other request, every get-by-id path that is not a
plain valid id (percent-escapes of a slash, say) and every query or registration whose path is
not exactly `/v1/agents` goes to the application as it would without this door; a test walks
such paths and requests through both to keep them in step.

Skipping aiohttp's dispatch means doing what it would have done, so the door stands in front of
an app only when `refusal` finds nothing against it: the app's middlewares are exactly those the
door does itself (`REPRODUCED`: a middleware added later would otherwise be skipped on the
hottest route without a word), and the aiohttp internals it reaches are still there (aiohttp is
pinned to the minor version they were checked against). Otherwise the server keeps aiohttp's
own dispatch for every request and says why, once, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.http import keys
from proxy.http.agents import agent_query, register_answer
from proxy.http.answer import answer_body, answer_headers, json_response
from proxy.http.direct import DirectResponse, fits
from proxy.http.middleware import GATE, Gate, guard, observe
from proxy.observability.logging import REQUEST_ID
from proxy.registry.models import ID_PATTERN
from proxy.service import Answer, RegistryService, RequestContext

AGENT_PREFIX = "/v1/agents/"
# Unanchored, to match from an offset: `^` matches only at the string's real start.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_ROUTE = "get_agent"
QUERY_PATH = "/v1/agents"
_QUERY_ROUTE = "query_agents"
_REGISTER_ROUTE = "register"
# The app's middlewares, outermost first, whose work `FrontDoor._get_agent` does itself through
# the gate: `observe` is `Gate.enter` and `Gate.leave` around the handler, `guard` is
# `Gate.admit`. Changing the app's middlewares means changing `_get_agent` and this together.
REPRODUCED: tuple[Middleware, ...] = (observe, guard)
# Not aiohttp's public API: the dispatch the door hands every other request to.
_DISPATCH = "_handle"


def refusal(app: web.Application, server: web.Server) -> str | None:
    """Why the front door must not stand in front of ``app`` on ``server``; None if it may."""
    if tuple(app.middlewares) != REPRODUCED:
        names = [getattr(m, "__name__", repr(m)) for m in app.middlewares]
        return f"the app's middlewares are {names}; the front door runs only observe and guard"
    missing = []
    if not callable(getattr(app, _DISPATCH, None)):
        missing.append(f"Application.{_DISPATCH}")
    if not hasattr(server, "request_handler"):
        missing.append("Server.request_handler")
    if missing:
        return f"this aiohttp has no {', '.join(missing)}"
    return None


class FrontDoor:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._gate: Gate = app[GATE]
        self._service: RegistryService = app[keys.SERVICE]
        self._limits = app[keys.SETTINGS].request

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # Not a coroutine itself: it hands aiohttp the one that answers, one frame fewer.
        if request.method == "GET":
            # The path as sent: no decoding needed, since an id has no '%' (nor '?', so a query
            # string sends the request the long way).
            path = request.raw_path
            if path.startswith(AGENT_PREFIX):
                if _ID.fullmatch(path, len(AGENT_PREFIX)):
                    return self._get_agent(request, path[len(AGENT_PREFIX) :])
            elif path.partition("?")[0] == QUERY_PATH:
                return self._served(request, _QUERY_ROUTE, self._query)
        elif (
            request.method == "POST"
            and request.raw_path == QUERY_PATH
            # aiohttp's dispatch answers `Expect: 100-continue` before the body is read.
            and "Expect" not in request.headers
        ):
            return self._served(request, _REGISTER_ROUTE, self._register)
        # Looked up per request, not bound once: tests wrap the app's dispatch to watch it.
        return self._app._handle(request)  # type: ignore[arg-type]

    async def _get_agent(self, base: web.BaseRequest, agent_id: str) -> web.StreamResponse:
        # `Gate.serve` around the handler, written out: a replica read then runs in this one
        # coroutine without awaiting anything, and its answer is made once, request id and all.
        request: web.Request = base  # type: ignore[assignment]  # the app makes web.Requests
        gate = self._gate
        request_id, token, started = gate.enter(request, _ROUTE)
        try:
            ctx = gate.admit(request, _ROUTE)
            assert ctx is not None  # get_agent needs a reader
            service = self._service
            answer = service.get_agent_at_once(ctx, agent_id)
            if answer is None:
                answer = await service.get_agent_from_database(ctx, agent_id)
        except Exception as exc:
            return gate.leave(request, _ROUTE, gate.problem_for(exc, _ROUTE), request_id, started)
        finally:
            REQUEST_ID.reset(token)
        return self._answer(request, _ROUTE, answer, request_id, started)

    async def _served(
        self,
        base: web.BaseRequest,
        route: str,
        answer_of: Callable[[web.Request, RequestContext], Awaitable[Answer]],
    ) -> web.StreamResponse:
        """`Gate.serve` around ``answer_of`` for a route that needs a role, written out."""
        request: web.Request = base  # type: ignore[assignment]  # the app makes web.Requests
        gate = self._gate
        request_id, token, started = gate.enter(request, route)
        try:
            ctx = gate.admit(request, route)
            assert ctx is not None  # every route served here needs a role
            answer = await answer_of(request, ctx)
        except Exception as exc:
            return gate.leave(request, route, gate.problem_for(exc, route), request_id, started)
        finally:
            REQUEST_ID.reset(token)
        return self._answer(request, route, answer, request_id, started)

    def _query(self, request: web.Request, ctx: RequestContext) -> Awaitable[Answer]:
        return self._service.query(ctx, agent_query(request))

    def _register(self, request: web.Request, ctx: RequestContext) -> Awaitable[Answer]:
        return register_answer(request, self._service, ctx, self._limits)

    def _answer(
        self, request: web.Request, route: str, answer: Answer, request_id: str, started: float
    ) -> web.StreamResponse:
        """The answer written straight to the connection when it allows, else as aiohttp's."""
        gate = self._gate
        body = answer_body(answer)
        if body is None or not fits(request):
            return gate.leave(request, route, json_response(answer), request_id, started)
        gate.account(request, route, answer.status, answer.source, request_id, started)
        fields = answer_headers(answer)
        fields["X-Request-ID"] = request_id
        return DirectResponse(status=answer.status, fields=fields, body=body)
