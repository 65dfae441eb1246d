"""The front door: the server's request handler, in front of aiohttp's router.

Get-by-id is most of a registry consumer's traffic, and on the replica it costs less than
aiohttp's own dispatch around it (route resolution, match info, the middleware chain), so that
one route is recognised here and served directly, through the same `Gate` the middlewares use:
the same authentication, rate limit, deadline, problems, metrics and access line. Every other
request, and every get-by-id path that is not a plain valid id (percent-escapes of a slash,
say), goes to the application as it would without this door; a test walks such paths through
both to keep them in step.
"""

from __future__ import annotations

import re
from typing import cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from proxy.http import keys
from proxy.http.middleware import Gate
from proxy.http.routes import json_response
from proxy.registry.models import ID_PATTERN
from proxy.service.registry import RegistryService

AGENT_PREFIX = "/v1/agents/"
# Unanchored, to match from an offset: `^` matches only at the string's real start.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_ROUTE = "get_agent"


class FrontDoor:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._gate: Gate = app[keys.GATE]
        self._service: RegistryService = app[keys.SERVICE]

    async def __call__(self, base: BaseRequest) -> web.StreamResponse:
        request = cast(web.Request, base)  # the app's request factory makes every request
        if request.method == "GET":
            # The path as sent: no decoding needed, since an id has no '%' (nor '?', so a query
            # string sends the request the long way).
            path = request.raw_path
            if path.startswith(AGENT_PREFIX) and _ID.fullmatch(path, len(AGENT_PREFIX)):
                return await self._gate.serve(request, _ROUTE, self._get_agent)
        return await self._app._handle(request)

    async def _get_agent(self, request: web.Request) -> web.StreamResponse:
        self._gate.admit(request, _ROUTE)
        agent_id = request.raw_path[len(AGENT_PREFIX) :]
        return json_response(await self._service.get_agent(request[keys.CONTEXT], agent_id))
