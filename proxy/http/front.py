"""The front door: the server's request handler, in front of aiohttp's router.

Get-by-id is most of a registry consumer's traffic, and on the replica it costs less than
aiohttp's own dispatch around it (route resolution, match info, the middleware chain, the
response's preparation), so that one route is recognised here and served directly: through the
same `Gate` the middlewares use (the same authentication, rate limit, deadline, problems,
metrics and access line), answered with a `DirectResponse` when the connection allows. Every
other request, and every get-by-id path that is not a plain valid id (percent-escapes of a
slash, say), goes to the application as it would without this door; a test walks such paths
through both to keep them in step.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from aiohttp import web

from proxy.http import keys
from proxy.http.answer import answer_body, answer_headers, json_response
from proxy.http.direct import DirectResponse, fits
from proxy.http.middleware import GATE, Gate
from proxy.observability.logging import REQUEST_ID
from proxy.registry.models import ID_PATTERN
from proxy.service import RegistryService

AGENT_PREFIX = "/v1/agents/"
# Unanchored, to match from an offset: `^` matches only at the string's real start.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_ROUTE = "get_agent"


class FrontDoor:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._gate: Gate = app[GATE]
        self._service: RegistryService = app[keys.SERVICE]

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # Not a coroutine itself: it hands aiohttp the one that answers, one frame fewer.
        if request.method == "GET":
            # The path as sent: no decoding needed, since an id has no '%' (nor '?', so a query
            # string sends the request the long way).
            path = request.raw_path
            if path.startswith(AGENT_PREFIX) and _ID.fullmatch(path, len(AGENT_PREFIX)):
                return self._get_agent(request, path[len(AGENT_PREFIX) :])
        return self._app._handle(request)  # type: ignore[arg-type]

    async def _get_agent(self, base: web.BaseRequest, agent_id: str) -> web.StreamResponse:
        # `Gate.serve` around the handler, written out: a replica read then runs in this one
        # coroutine without awaiting anything, and its answer is made once, request id and all.
        request: web.Request = base  # type: ignore[assignment]  # the app makes web.Requests
        gate = self._gate
        request_id, token, started = gate.enter(request)
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
        body = answer_body(answer)
        if body is None or not fits(request):
            return gate.leave(request, _ROUTE, json_response(answer), request_id, started)
        gate.account(request, _ROUTE, answer.status, answer.source, request_id, started)
        fields = answer_headers(answer)
        fields["X-Request-ID"] = request_id
        return DirectResponse(status=answer.status, fields=fields, body=body)
