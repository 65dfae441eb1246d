"""The HTTP server around the app: the front door, and problem documents even for requests
aiohttp cannot parse.

aiohttp answers a request its parser refuses (a header line over the limit, a NUL or a bare CR in
a header, a malformed request line) from its protocol handler, before any middleware runs, and
in text/plain. The sidecar promises an RFC 9457 problem for every error, so its runner installs
a protocol handler whose error answer is one. This reaches into aiohttp's server classes, which
is why aiohttp is pinned below 4; a test sends such requests to keep it honest.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.http.front import FrontDoor
from proxy.http.problems import GENERIC, PROBLEM_TYPE
from proxy.registry.errors import PROBLEM_BASE


class _ProblemRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own version logs the error and refuses when output already started.
        super().handle_error(request, status, exc, message)
        slug, title = GENERIC.get(status, ("malformed-request", HTTPStatus(status).phrase))
        detail = (
            "the request could not be parsed as HTTP (header or request line refused)"
            if status < 500
            else "the sidecar failed to answer; see its log"
        )
        request_id = uuid.uuid4().hex
        body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
        response = web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type=PROBLEM_TYPE,
            headers={"X-Request-ID": request_id},
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class SidecarRunner(web.AppRunner):
    """An AppRunner whose requests enter through `FrontDoor` and whose connections answer
    unparseable requests with problem documents."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its service exists
        server.__class__ = _ProblemServer
        server.request_handler = FrontDoor(self.app)
        return server
