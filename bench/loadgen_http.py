"""A minimal HTTP/1.1 keep-alive client on an ``asyncio.Protocol``, for the load generator.

The generator shares two cores with the server and PostgreSQL, so it reads only what it needs of
an answer (the status line and Content-Length): several times cheaper per request than the
aiohttp client.
"""

from __future__ import annotations

import asyncio
from typing import cast


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time; reads status and Content-Length only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                elif b"\r\ntransfer-encoding:" in head:
                    self._fail(ConnectionError("chunked answers are not supported"))
                    return
                else:
                    length = 0
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self.status)
            if not buf:
                return

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed by the server"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self.loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.waiter = fut
        self.transport.write(data)
        return fut

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Client:
    """A connection that reopens itself after the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn: _Conn | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Conn(loop), self.host, self.port)
        self.conn = proto

    async def request(self, data: bytes) -> int:
        if self.conn is None or self.conn.closed:
            await self.connect()
        assert self.conn is not None
        return await self.conn.send(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
