"""A loop exception handler that drops one report known to be harmless, and nothing else.

asyncpg opens a PostgreSQL connection in two steps when TLS is optional (``sslmode=prefer``,
its default): a TCP connection whose protocol asks the server for TLS and completes a future
with the answer, then the real connection. When the opening is cancelled while the socket is
being set up, asyncio closes the half-made transport, and the protocol, told the connection was
lost, sets ``ConnectionError('unexpected connection_lost() call')`` on that future. Nothing
awaits the future any more (its awaiter was the cancelled opening), so when it is collected
asyncio reports "Future exception was never retrieved" at ERROR level, with the request id of
whichever request happened to be running.

The sidecar cancels openings on purpose: `Database.connection` terminates a connection whose
call was interrupted (its protocol state is unknown), the pool opens a replacement at the next
acquire, and that acquire is bounded by its caller's deadline; the health probe bounds its own
connection attempts too. Nothing failed that anyone waits for, and the future belongs to
asyncpg, so the sidecar can neither retrieve its exception nor keep the openings from being
cancelled without giving up the deadlines. What it can do is recognise the report exactly:

- the message asyncio uses for an unretrieved future exception,
- an exception whose type is `ConnectionError` itself (not a subclass: a refused or reset
  connection is a subclass, and stays reported),
- with exactly asyncpg's text, and never raised (no traceback: it was only ever set).

Every other report goes on to the handler that was there before, or the loop's default.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MESSAGE = "Future exception was never retrieved"
_TEXT = "unexpected connection_lost() call"


def is_abandoned_tls_probe(context: dict[str, Any]) -> bool:
    exc = context.get("exception")
    return (
        context.get("message") == _MESSAGE
        and type(exc) is ConnectionError
        and exc.args == (_TEXT,)
        and exc.__traceback__ is None
    )


class _Handler:
    """Marks the loops it is installed on, so installing twice wraps nothing twice."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.dropped = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_abandoned_tls_probe(context):
            self.dropped += 1
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def quiet_abandoned_connects(loop: asyncio.AbstractEventLoop) -> None:
    """Install the handler on `loop` (idempotent); it stays for the loop's life."""
    current = loop.get_exception_handler()
    if not isinstance(current, _Handler):
        loop.set_exception_handler(_Handler(current))
