"""The Toxiproxy HTTP API on aiohttp, a thin layer over the proxy collection.

Routing is done here rather than by aiohttp's router because clients see gorilla/mux's exact
behaviour: exact paths (a trailing slash is a 404), matching on the percent-decoded path, 405 with
an empty body for a known path with another method (HEAD included), a 301 to the cleaned path for
``//`` or ``..``, and route middleware (request id, browser block) only on matched routes.
Responses mimic Go's ``net/http``: ``http.Error`` bodies are JSON labelled ``text/plain`` with a
trailing newline; there is no ``Server`` header.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from chaos.toxiproxy import VERSION, errors
from chaos.toxiproxy.collection import PROXY_STRUCT, PopulateError, ProxyCollection
from chaos.toxiproxy.gojson import JsonSyntaxError, JsonValue, StructDecoder, decode_first, encode
from chaos.toxiproxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from chaos.toxiproxy.metrics import Metrics

__all__ = ["HANDLER_TIMEOUT", "ApiServer", "clean_path"]

_log = logging.getLogger("chaos.toxiproxy")

# Go's http.TimeoutHandler wraps every route with this limit and answers 503 past it.
HANDLER_TIMEOUT = 25.0
_TIMEOUT_BODY = b"<html><head><title>Timeout</title></head><body><h1>Timeout</h1></body></html>"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_REQUEST_ID_HEADER = "X-Toxiproxy-Request-Id"

Params = dict[str, str]
Handler = Callable[[web.Request, Params], Awaitable[web.StreamResponse]]


class _RequestIds:
    """20-character xid-style ids: time, machine, pid and counter, in lowercase base32hex."""

    def __init__(self) -> None:
        self._machine = os.urandom(3)
        self._pid = struct.pack(">H", os.getpid() & 0xFFFF)
        self._counter = int.from_bytes(os.urandom(3), "big")

    def next(self) -> str:
        self._counter = counter = (self._counter + 1) & 0xFFFFFF
        raw = (
            struct.pack(">I", int(time.time()) & 0xFFFFFFFF)
            + self._machine
            + self._pid
            + counter.to_bytes(3, "big")
        )
        return base64.b32hexencode(raw).decode("ascii").lower().rstrip("=")


def clean_path(path: str) -> str:
    """gorilla/mux's ``cleanPath``: Go's ``path.Clean`` keeping a trailing slash."""
    if path == "":
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=encode(payload), status=status, headers={"Content-Type": _JSON})


def _error(err: errors.ApiError) -> web.Response:
    # Go's http.Error: the JSON body is labelled text/plain and gets a newline.
    return _plain(encode(err.to_json()) + b"\n", err.status)


def _plain(body: bytes, status: int) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        headers={"Content-Type": _TEXT, "X-Content-Type-Options": "nosniff"},
    )


def _parse(body: bytes) -> JsonValue:
    try:
        return decode_first(body)
    except JsonSyntaxError as exc:
        raise errors.bad_request_body(str(exc)) from None


async def _drop_server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


class ApiServer:
    def __init__(
        self,
        collection: ProxyCollection,
        metrics: Metrics | None = None,
        *,
        version: str = VERSION,
        handler_timeout: float = HANDLER_TIMEOUT,
    ) -> None:
        self.collection = collection
        self.metrics = metrics
        self.version = version
        self.handler_timeout = handler_timeout
        self._ids = _RequestIds()
        self._background: set[asyncio.Task[web.StreamResponse]] = set()
        proxy = "(?P<proxy>[^/]+)"
        toxic = "(?P<toxic>[^/]+)"
        routes: list[tuple[str, dict[str, Handler]]] = [
            ("/reset", {"POST": self.reset}),
            ("/proxies", {"GET": self.proxy_index, "POST": self.proxy_create}),
            ("/populate", {"POST": self.populate}),
            (
                f"/proxies/{proxy}",
                {
                    "GET": self.proxy_show,
                    "POST": self.proxy_update,
                    "PATCH": self.proxy_update,
                    "DELETE": self.proxy_delete,
                },
            ),
            (
                f"/proxies/{proxy}/toxics",
                {"GET": self.toxic_index, "POST": self.toxic_create},
            ),
            (
                f"/proxies/{proxy}/toxics/{toxic}",
                {
                    "GET": self.toxic_show,
                    "POST": self.toxic_update,
                    "PATCH": self.toxic_update,
                    "DELETE": self.toxic_delete,
                },
            ),
            ("/version", {"GET": self.show_version}),
        ]
        self._routes = [(re.compile(pattern + r"\Z"), methods) for pattern, methods in routes]
        self._metrics_route = metrics is not None and metrics.enabled

    async def close(self) -> None:
        """Cancel handlers still running after their request timed out."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    def make_app(self) -> web.Application:
        # Toxiproxy reads request bodies of any size; 1 MiB is aiohttp's default, lift it.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_response_prepare.append(_drop_server_header)
        return app

    # --- routing -------------------------------------------------------------------------------

    def _match(self, path: str, method: str) -> tuple[Handler | None, Params, bool]:
        """(handler, params, path_matched) for a decoded path and method."""
        if self._metrics_route and path == "/metrics":
            return self.show_metrics, {}, True
        path_matched = False
        for pattern, methods in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            path_matched = True
            handler = methods.get(method)
            if handler is not None:
                return handler, match.groupdict(), True
        return None, {}, path_matched

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        path = unquote(raw_path, errors="replace")
        cleaned = clean_path(path)
        if cleaned != path:
            location = cleaned
            if request.query_string:
                location += "?" + request.query_string
            return web.Response(status=301, headers={"Location": location})
        handler, params, path_matched = self._match(path, request.method)
        if handler is None:
            if path_matched:
                return web.Response(status=405)
            return _plain(b"404 page not found\n", 404)
        request_id = self._ids.next()
        response = await self._run(handler, request, params)
        response.headers[_REQUEST_ID_HEADER] = request_id
        _log.debug(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "path": path,
                    "status": response.status,
                    "request_id": request_id,
                }
            },
        )
        return response

    async def _run(
        self, handler: Handler, request: web.Request, params: Params
    ) -> web.StreamResponse:
        if request.headers.get("User-Agent", "").startswith("Mozilla/"):
            return _plain(b"User agent not allowed\n", 403)
        task = asyncio.ensure_future(self._call(handler, request, params))
        done, _pending = await asyncio.wait({task}, timeout=self.handler_timeout)
        if task in done:
            return task.result()
        # Like Go's TimeoutHandler: answer 503 now and let the handler finish in the background.
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.Response(
            body=_TIMEOUT_BODY,
            status=503,
            headers={"Content-Type": "text/html; charset=utf-8"},
        )

    async def _call(
        self, handler: Handler, request: web.Request, params: Params
    ) -> web.StreamResponse:
        try:
            return await handler(request, params)
        except errors.ApiError as exc:
            return _error(exc)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception as exc:
            # The real server answers untyped errors as 500 with the error text; do the same.
            _log.exception("request failed", extra={"fields": {"path": request.path}})
            return _error(errors.server_error(str(exc)))

    # --- proxies -------------------------------------------------------------------------------

    async def proxy_index(self, _request: web.Request, _params: Params) -> web.StreamResponse:
        proxies = self.collection.proxies
        return _json({name: proxies[name].to_json() for name in sorted(proxies)})

    async def proxy_create(self, request: web.Request, _params: Params) -> web.StreamResponse:
        value = _parse(await request.read())
        decoder = StructDecoder()
        fields = decoder.decode(value, PROXY_STRUCT)
        if decoder.error is not None:
            raise errors.bad_request_body(decoder.error)
        name = str(fields.get("name", ""))
        upstream = str(fields.get("upstream", ""))
        if not name:
            raise errors.missing_field("name")
        if not upstream:
            raise errors.missing_field("upstream")
        proxy = self.collection.new_proxy(name, str(fields.get("listen", "")), upstream)
        await self.collection.add(proxy, bool(fields.get("enabled", True)))
        return _json(proxy.to_json(), 201)

    async def proxy_show(self, _request: web.Request, params: Params) -> web.StreamResponse:
        return _json(self.collection.get(params["proxy"]).to_json())

    async def proxy_update(self, request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        value = _parse(await request.read())
        decoder = StructDecoder()
        fields = decoder.decode(value, PROXY_STRUCT)
        if decoder.error is not None:
            raise errors.bad_request_body(decoder.error)
        await proxy.update(
            str(fields.get("listen", proxy.listen)),
            str(fields.get("upstream", proxy.upstream)),
            bool(fields.get("enabled", proxy.enabled)),
        )
        return _json(proxy.to_json())

    async def proxy_delete(self, _request: web.Request, params: Params) -> web.StreamResponse:
        await self.collection.remove(params["proxy"])
        return web.Response(status=204)

    async def populate(self, request: web.Request, _params: Params) -> web.StreamResponse:
        body = await request.read()
        try:
            proxies = await self.collection.populate_json(body)
        except PopulateError as exc:
            # /populate writes its own error: application/json, no newline, plus "proxies".
            payload = {
                **exc.error.to_json(),
                "proxies": [p.to_json() for p in exc.applied] or None,
            }
            return _json(payload, exc.error.status)
        return _json({"proxies": [p.to_json() for p in proxies] or None}, 201)

    async def reset(self, _request: web.Request, _params: Params) -> web.StreamResponse:
        await self.collection.reset()
        return web.Response(status=204)

    # --- toxics --------------------------------------------------------------------------------

    async def toxic_index(self, _request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        return _json([w.to_json() for w in proxy.toxics.toxics()])

    async def toxic_create(self, request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        wrapper = await proxy.toxics.add_json(await request.read())
        return _json(wrapper.to_json())

    async def toxic_show(self, _request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        return _json(proxy.toxics.get(params["toxic"]).to_json())

    async def toxic_update(self, request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        proxy.toxics.get(params["toxic"])
        wrapper = await proxy.toxics.update_json(params["toxic"], await request.read())
        return _json(wrapper.to_json())

    async def toxic_delete(self, _request: web.Request, params: Params) -> web.StreamResponse:
        proxy = self.collection.get(params["proxy"])
        await proxy.toxics.remove(params["toxic"])
        return web.Response(status=204)

    # --- misc ----------------------------------------------------------------------------------

    async def show_version(self, _request: web.Request, _params: Params) -> web.StreamResponse:
        # Built by hand in the real server: note the space after the colon and the newline.
        body = f'{{"version": "{self.version}"}}\n'.encode()
        return web.Response(body=body, headers={"Content-Type": "application/json;charset=utf-8"})

    async def show_metrics(self, _request: web.Request, _params: Params) -> web.StreamResponse:
        assert self.metrics is not None
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )
