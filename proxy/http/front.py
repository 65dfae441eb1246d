"""The front door: the server's request handler, in front of aiohttp's router.

Get-by-id and the capability query are most of a registry consumer's traffic, and on the replica
each costs less than aiohttp's own dispatch around it (route resolution, match info, the
middleware chain, the response's preparation), so those two routes are recognised here and served
directly: through the same `Gate` the middlewares use (the same authentication, rate limit,
deadline, problems, metrics, access line and, when tracing is on, server span), answered with a
`DirectResponse` when the connection allows. The writes a fleet of agents sends come in here
too: registration (`POST /v1/agents`, the path exactly that) and what an agent reports about
itself (`POST .../performance`, `POST .../heartbeat`, `PUT .../load` after a plain valid id).
For a task outcome aiohttp's dispatch and answer were 15% of the sidecar's CPU (370 against 314
us per write at saturation, same run). Every other request, every path whose id is not plain
(percent-escapes of a slash, say), that carries a query string where none is expected, or whose
request has `Expect`, goes to the application as it would without this door; a test walks such
paths and requests through both to keep them in step.

A get-by-id that arrives alone on an idle connection goes one step further (`at_once`): the
server's protocol hands the door the parser's message in the callback that read it, and a replica
read is answered there, with no request object and no task (on Python 3.11 a task, and a loop pass
to start it and one to finish it, cost more than the read). Whatever needs aiohttp after all (a
problem, a read that must ask PostgreSQL) is made there too, then handed to aiohttp to send as
that request's answer; nothing is done twice. With tracing on, every request keeps its task: a
request's span is current in it from the start to the answer.

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
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.typedefs import Middleware

from proxy.http import keys
from proxy.http.agents import (
    AgentWrite,
    agent_query,
    heartbeat_answer,
    load_answer,
    performance_answer,
    register_answer,
)
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
# The writes an agent sends about itself, by method and the path's last segment after its id:
# their route's name and the answer the route's handler gives.
AGENT_WRITES: dict[tuple[str, str], tuple[str, AgentWrite]] = {
    ("POST", "/performance"): ("post_performance", performance_answer),
    ("POST", "/heartbeat"): ("heartbeat", heartbeat_answer),
    ("PUT", "/load"): ("put_load", load_answer),
}
# The app's middlewares, outermost first, whose work `FrontDoor._get_agent` does itself through
# the gate: `observe` is `Gate.enter` and `Gate.leave` around the handler, `guard` is
# `Gate.admit`. Changing the app's middlewares means changing `_get_agent` and this together.
REPRODUCED: tuple[Middleware, ...] = (observe, guard)
# Not aiohttp's public API: the dispatch the door hands every other request to.
_DISPATCH = "_handle"


class Head(dict[Any, Any]):
    """A request answered from the parser's message (`FrontDoor.at_once`), as the gate and the
    answer read it: method, headers, version, keep-alive, and the mapping the gate keeps the
    request's id, principal, context and span in."""

    __slots__ = ("headers", "keep_alive", "method", "version")

    def __init__(self, message: RawRequestMessage) -> None:
        self.method = message.method
        self.headers = message.headers
        self.version = message.version
        self.keep_alive = not message.should_close


async def _ready(response: web.StreamResponse) -> web.StreamResponse:
    return response


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
        # A request's span is current in the task that runs it, from its start to its answer:
        # with tracing on, every request gets a task.
        self.answers_at_once = self._gate.spans is None

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
        # aiohttp's dispatch answers `Expect: 100-continue` before the body is read.
        elif "Expect" not in request.headers:
            path = request.raw_path
            if path == QUERY_PATH:
                if request.method == "POST":
                    return self._served(request, _REGISTER_ROUTE, self._register)
            elif path.startswith(AGENT_PREFIX):
                cut = path.rfind("/")
                write = AGENT_WRITES.get((request.method, path[cut:]))
                if write is not None and _ID.fullmatch(path, len(AGENT_PREFIX), cut):
                    route, answer_of = write
                    agent_id = path[len(AGENT_PREFIX) : cut]
                    limits, service = self._limits, self._service
                    return self._served(
                        request,
                        route,
                        lambda r, ctx: answer_of(r, service, ctx, limits, agent_id),
                    )
        # Looked up per request, not bound once: tests wrap the app's dispatch to watch it.
        return self._app._handle(request)  # type: ignore[arg-type]

    async def _get_agent(self, base: web.BaseRequest, agent_id: str) -> web.StreamResponse:
        # `_get_agent_now` and `_get_agent_later` in one coroutine, written out: a read from
        # PostgreSQL then pays for one coroutine and one log context, not two.
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

    def _get_agent_now(
        self, request: web.Request, agent_id: str
    ) -> web.StreamResponse | Awaitable[web.StreamResponse]:
        """`_get_agent` up to its answer from the replica (or its problem), for `at_once`; what
        needs PostgreSQL after all comes back as the coroutine that asks it."""
        gate = self._gate
        request_id, token, started = gate.enter(request, _ROUTE, in_task=False)
        try:
            ctx = gate.admit(request, _ROUTE)
            assert ctx is not None  # get_agent needs a reader
            answer = self._service.get_agent_at_once(ctx, agent_id)
            if answer is None:
                return self._get_agent_later(request, ctx, agent_id, request_id, started)
        except Exception as exc:
            return gate.leave(request, _ROUTE, gate.problem_for(exc, _ROUTE), request_id, started)
        finally:
            REQUEST_ID.reset(token)
        return self._answer(request, _ROUTE, answer, request_id, started)

    async def _get_agent_later(
        self,
        request: web.Request,
        ctx: RequestContext,
        agent_id: str,
        request_id: str,
        started: float,
    ) -> web.StreamResponse:
        gate = self._gate
        token = gate.resume(request, request_id)
        try:
            answer = await self._service.get_agent_from_database(ctx, agent_id)
        except Exception as exc:
            return gate.leave(request, _ROUTE, gate.problem_for(exc, _ROUTE), request_id, started)
        finally:
            REQUEST_ID.reset(token)
        return self._answer(request, _ROUTE, answer, request_id, started)

    def at_once(self, message: RawRequestMessage) -> bytes | Awaitable[web.StreamResponse] | None:
        """A get-by-id taken from the connection's parser, without aiohttp's request object
        and the task it runs each request in (`proxy.http.server` calls this when the request
        arrived alone on an idle connection).

        Gives the whole answer to write at once; or, for an answer aiohttp must send (a
        problem, a read that needs PostgreSQL), the awaitable to hand aiohttp in place of this
        door for that one request; or None, having done nothing, for any other request."""
        if (
            message.method != "GET"
            or message.version != HttpVersion11
            or message.should_close
            or message.upgrade
        ):
            return None
        path = message.path
        if not path.startswith(AGENT_PREFIX) or not _ID.fullmatch(path, len(AGENT_PREFIX)):
            return None
        if not self._service.may_answer_at_once():
            return None  # every read asks PostgreSQL: aiohttp's task from the start
        request: web.Request = Head(message)  # type: ignore[assignment]  # what the gate reads
        now = self._get_agent_now(request, path[len(AGENT_PREFIX) :])
        if isinstance(now, DirectResponse):
            return now.wire()
        if isinstance(now, web.StreamResponse):
            return _ready(now)
        return now

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
