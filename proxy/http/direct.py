"""An answer written to the connection in one piece, for the front door's hot read.

A get-by-id answered from the replica costs less than aiohttp's preparation of the answer: the
header bookkeeping for chunking, compression, cookies and signals, a multidict per response, a
writer per request and three awaits between them. The answer needs none of it: a JSON body of
known length, a few headers the sidecar sets itself, HTTP/1.1 keep-alive. `DirectResponse` keeps
the contract aiohttp's request handler holds a response to (``prepare``, ``write_eof``,
``keep_alive``) and writes status line, headers and body with one call to the transport. Like
aiohttp's writer with an answer this small, it waits for the transport to drain only when the
client has stopped reading (the transport paused writing); aiohttp then stops reading a
connection whose requests pile up. The same bytes (`wire`) are what the server writes for a
request it answers from the parser's callback (`proxy.http.server`).

It is for HTTP/1.1 requests that keep the connection open, which is what `fits` checks; anything
else is answered by a plain `web.Response`. It uses aiohttp's public names only, but leans on how
aiohttp's request handler drives a response (``prepare``, then ``write_eof``), which is one
reason aiohttp is pinned to the minor version it was checked against; the front door's tests
compare its answers with the router's, headers included.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

_TAIL = f"\r\nServer: {SERVER_SOFTWARE}\r\nDate: "
# `headers` of every direct answer: read-only, so nothing can be added that would not be sent.
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Date:
    """The Date field's value, formatted once a second, as aiohttp does for its own answers."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._text = formatdate(second, usegmt=True)
            self._second = second
        return self._text


_DATE = _Date()


def fits(request: web.BaseRequest) -> bool:
    """Whether `DirectResponse` can answer: HTTP/1.1 and the connection stays open."""
    return request.version == HttpVersion11 and request.keep_alive


class DirectResponse(web.StreamResponse):
    """A complete answer: status, header fields and body.

    The fields are a plain dict written as given, not aiohttp's `headers` multidict (which
    stays empty, and read-only): names and values the sidecar wrote itself, never a caller's
    bytes unchecked. Content-Length, Date and Server are added as aiohttp adds them.

    `StreamResponse.__init__` is not called: the headers multidict and state it makes for every
    answer cost as much as the rest of this answer's writing. What aiohttp's request handler and
    `StreamResponse`'s properties read is set here; the rest are the class's defaults."""

    def __init__(self, *, status: int, fields: dict[str, str], body: bytes) -> None:
        self._set_status(status, None)  # aiohttp's own: its reason phrases, its checks
        self._headers = _NO_HEADERS  # type: ignore[assignment]
        self._state = {}
        self.fields = fields
        self._body_bytes = body
        self._sent = False
        self._protocol: BaseProtocol | None = None

    @property
    def keep_alive(self) -> bool:
        return True  # `fits` was checked before this response was made

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._sent:
            return None
        self._sent = True
        self._protocol = request.protocol
        transport = request.transport
        if transport is None or transport.is_closing():
            # aiohttp's own writer raises a ConnectionError here, which its handler expects.
            raise ConnectionResetError("the client closed the connection")
        transport.write(self.wire())
        return None

    def wire(self) -> bytes:
        """The answer as it goes out: status line, header fields, body."""
        body = self._body_bytes
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        for name, value in self.fields.items():
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}{_TAIL}{_DATE.now()}\r\n\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    async def write_eof(self, data: bytes = b"") -> None:
        # Everything went out in `prepare`. A client that does not read its answers gets no
        # more of them until it does: aiohttp then stops reading its requests.
        protocol = self._protocol
        if protocol is not None and protocol.writing_paused:
            await protocol._drain_helper()
