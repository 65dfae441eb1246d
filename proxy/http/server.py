"""The HTTP server around the app: the front door, problem documents even for requests aiohttp
cannot parse, a bound on the time a client takes to send its request head, and a cap on open
connections.

A request that arrives alone on an idle connection is offered to the front door in the protocol's
`data_received`, before aiohttp's request loop is woken (`FrontDoor.at_once`); a replica read is
answered there, its answer written with the others of the same loop pass (`Outbox`). While the
client is not reading its answers (the transport paused writing) every request goes aiohttp's
way, where the answer waits for the transport to drain and aiohttp stops reading a connection
whose requests pile up.

aiohttp answers a request its parser refuses (a header line over the limit, a NUL or a bare CR in
a header, a malformed request line) from its protocol handler, before any middleware runs, and
in text/plain. The sidecar promises an RFC 9457 problem for every error, so its runner installs
a protocol handler whose error answer is one.

aiohttp 3 has no timeout for the request line and headers: a client that trickles them holds its
connection (and a descriptor) until the keep-alive timeout, an hour by default, and enough such
clients exhaust the descriptor limit. The handler here arms one timer when a connection opens, and
one when the first bytes of a later request arrive in pieces; the timer is cancelled as soon as
the parser has the whole head, and when it fires first the client gets 408 and is disconnected.
A request whose head arrives in one piece, the usual case, costs no timer at all. The body has its
own bound (`request.read_timeout_s`, in `proxy.http.body`).

The number of open connections is capped too: at the cap, a new connection closes the oldest idle
one (waiting for its next request, or still sending its head) and is served; when every
connection is busy with a request it is answered 503 and closed at once, so it holds nothing.

This reaches into aiohttp's server classes (`AppRunner._make_server`, the request handler's
connection state), which is why aiohttp is pinned to the minor version they were checked
against; tests send such requests and hold such connections to keep it honest. Should a release
stop calling `_make_server`, none of this is installed, and the runner says so at start-up.
"""

from __future__ import annotations

import asyncio
import resource
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any, cast

import orjson
import structlog
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web import BaseRequest, RequestHandler
from aiohttp.web_protocol import _ErrInfo

from proxy.http import keys
from proxy.http.front import FrontDoor, refusal
from proxy.http.problems import GENERIC, PROBLEM_TYPE
from proxy.registry.errors import PROBLEM_BASE

log = structlog.get_logger(__name__)

# Descriptors kept for everything but client connections: the database pool, the replica's
# listener, the journal, snapshots, the probe, logs.
_RESERVED_DESCRIPTORS = 128
# At the cap, how many of the oldest connections are looked at for an idle one.
_EVICTION_SCAN = 64


def _raw_problem(status: int, slug: str, title: str, detail: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 answer with a problem document, for a connection that has no request
    object to answer through; it closes the connection."""
    body = orjson.dumps(
        {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    )
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {PROBLEM_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {uuid.uuid4().hex}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def connection_cap(configured: int) -> int:
    """The configured cap, lowered to what the process's descriptor limit leaves for clients."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - _RESERVED_DESCRIPTORS))


class _Handover:
    """The request handler for one request whose answer the front door already has: aiohttp
    sends it (its request object, its writer), and the door takes the next request again."""

    __slots__ = ("_answer", "_door", "_protocol")

    def __init__(
        self,
        protocol: _ProblemRequestHandler,
        answer: Awaitable[web.StreamResponse],
        door: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> None:
        self._protocol = protocol
        self._answer = answer
        self._door = door

    def __call__(self, request: BaseRequest) -> Awaitable[web.StreamResponse]:
        self._protocol._request_handler = self._door
        return self._answer

    def discard(self) -> None:
        """The connection went before aiohttp took the request: nothing will await it."""
        answer = self._answer
        if isinstance(answer, Coroutine):
            answer.close()


class _ProblemRequestHandler(RequestHandler):
    __slots__ = ("_at_once", "_head_timer", "_refused")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # Armed while the client owes us a request head; None otherwise.
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        door = manager.request_handler
        self._at_once = (
            door.at_once if isinstance(door, FrontDoor) and door.answers_at_once else None
        )

    # ---- the connection's life ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = cast(_ProblemServer, self._manager)
        if len(server._connections) >= server.max_connections and not server.evict_idle():
            # Every connection is busy with a request: this one gets an answer and nothing
            # else, not even a handler task, and its descriptor is released at once.
            self._refused = True
            server.refused += 1
            write = cast(asyncio.WriteTransport, transport)
            write.write(_TOO_MANY)
            write.close()
            return
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(server.header_timeout, self._head_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return  # never registered with the server, nothing started
        self._cancel_head_timer()
        handover = self._request_handler
        if isinstance(handover, _Handover):
            handover.discard()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiter = self._waiter
        # Waiting for a request (idle between requests, or before the first one).
        idle = waiter is not None and not waiter.done()
        count = self._request_count
        if (
            idle
            and self._at_once is not None
            and not self._messages
            and self._payload_parser is None
            and not self._upgraded
        ):
            # start() is held back (no waiter to wake) until it is known whether the request
            # is left for it to run.
            self._waiter = None
            try:
                super().data_received(data)
            finally:
                self._waiter = waiter
            if self._messages and not self._answered_at_once():
                assert waiter is not None
                waiter.set_result(None)
        else:
            super().data_received(data)
        if self._request_count != count:
            # A whole head arrived (or one the parser refused). Checked here, not only in the
            # call: every request comes through this line, and the timer is rarely set.
            if self._head_timer is not None:
                self._cancel_head_timer()
        elif idle and data and self._head_timer is None and not self._force_close:
            # The first piece of a request head that did not arrive whole.
            server = cast(_ProblemServer, self._manager)
            self._head_timer = self._loop.call_later(server.header_timeout, self._head_late)

    def _answered_at_once(self, /) -> bool:
        """Answer the one queued request in this callback when the front door can: a replica
        read then costs no request object, no task and no trip through the event loop.

        True when it was answered and is gone from the queue. Otherwise it stays queued for
        start(), which runs it as usual; when the door already has its answer (a problem, a
        read that needs PostgreSQL) aiohttp is handed that instead of asking the door again."""
        messages = self._messages
        # Writing paused: the client is not reading its answers; start() waits for it to.
        if len(messages) != 1 or self._buffer_paused or self._paused:
            return False
        message, payload = messages[0]
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if (
            payload is not EMPTY_PAYLOAD
            or isinstance(message, _ErrInfo)
            or transport is None
            or transport.is_closing()
        ):
            return False
        assert self._at_once is not None
        answer = self._at_once(message)
        if answer is None:
            return False
        if not isinstance(answer, bytes):
            door = self._request_handler
            assert door is not None
            self._request_handler = _Handover(self, answer, door)
            return False
        # What start() does around a request it answered and keeps the connection open for.
        messages.popleft()
        assert self._parser is not None
        self._parser.message_consumed()
        assert self._manager is not None
        self._manager.requests_count += 1
        server = cast(_ProblemServer, self._manager)
        server.outbox.send(transport, answer)
        self._keepalive = True
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        return True

    # ---- the head timeout and eviction ---------------------------------------------------

    def _cancel_head_timer(self) -> None:
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    @property
    def idle(self) -> bool:
        """Waiting for a request: nothing is being answered on this connection."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._force_close

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or not self.idle:
            return  # closed meanwhile, or a request is being answered
        transport.write(_HEAD_LATE)
        self.force_close()

    def evict(self) -> None:
        """Close an idle connection to make room for a new one."""
        self._cancel_head_timer()
        self.force_close()

    # ---- answers to requests the parser refused ------------------------------------------

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


_TOO_MANY = _raw_problem(
    503,
    "too-many-connections",
    "Too many connections",
    "every connection the sidecar keeps open is busy with a request; retry shortly",
    "Retry-After: 1\r\n",
)
_HEAD_LATE = _raw_problem(
    408,
    *GENERIC[408],
    "the request line and headers did not arrive in time",
)


class Outbox:
    """Answers made in the protocol's callbacks, written together once the loop has read what
    the last poll found.

    Written at once, each answer would wake its client's process on its own, and on a busy
    server those wake-ups cost more than the answer saved; aiohttp's own answers go out a loop
    pass after their request was read, all together, and these go out the same way."""

    __slots__ = ("_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[asyncio.WriteTransport, bytes]] = []

    def send(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        pending = self._pending
        if not pending:
            self._loop.call_soon(self._flush)
        pending.append((transport, data))

    def _flush(self) -> None:
        pending = self._pending
        self._pending = []
        for transport, data in pending:
            if not transport.is_closing():  # a client that left is owed nothing
                transport.write(data)


class _ProblemServer(web.Server):
    # Set by SidecarRunner once the server is made (the class is swapped in, not constructed).
    outbox: Outbox
    header_timeout: float = 10.0
    max_connections: int = 4096
    refused: int = 0
    evicted: int = 0

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)

    def evict_idle(self) -> bool:
        """Close the oldest idle connection among the oldest few; False when none is idle."""
        for scanned, handler in enumerate(self._connections):
            if scanned >= _EVICTION_SCAN:
                break
            if isinstance(handler, _ProblemRequestHandler) and handler.idle:
                handler.evict()
                # Its entry goes when its task ends; the new connection must not wait for that.
                self._connections.pop(handler, None)
                self.evicted += 1
                return True
        return False


class SidecarRunner(web.AppRunner):
    """An AppRunner whose requests enter through `FrontDoor` and whose connections answer
    unparseable requests with problem documents, bound the time to send a request head and are
    capped in number."""

    _made = False

    async def setup(self) -> None:
        await super().setup()
        if not self._made:
            log.warning(
                "aiohttp did not build its server through AppRunner._make_server: no front "
                "door, no problem documents for unparseable requests, no head timeout, no "
                "connection cap"
            )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its service exists
        self._made = True
        server.__class__ = _ProblemServer
        problem_server = cast(_ProblemServer, server)
        limits = self.app[keys.SETTINGS].request
        problem_server.header_timeout = limits.header_timeout_s
        problem_server.outbox = Outbox(asyncio.get_running_loop())
        problem_server.max_connections = connection_cap(limits.max_connections)
        if problem_server.max_connections < limits.max_connections:
            log.info(
                "connection cap lowered to fit the descriptor limit",
                max_connections=problem_server.max_connections,
            )
        reason = refusal(self.app, server)
        if reason is None:
            server.request_handler = FrontDoor(self.app)
        else:
            log.warning("front door off: every request takes aiohttp's own dispatch", reason=reason)
        return server
