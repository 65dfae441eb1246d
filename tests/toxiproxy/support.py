"""Helpers for testing the bundled Toxiproxy-compatible server: an API client, an echo server
that records how its peers left, and a TCP client that tells EOF from RST.

Everything runs on 127.0.0.1 inside the test's event loop; nothing here needs PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

# Generous: the machine is shared and noisy.
SLACK = 0.6


class Api:
    """A small client for the HTTP API that keeps raw bodies and headers for exact checks."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.session.request(
            method,
            URL(self.base + path, encoded=True),
            data=data,
            headers=headers,
            allow_redirects=False,
        ) as resp:
            return resp.status, await resp.read(), resp.headers

    async def json(self, method: str, path: str, body: Any = None, *, expect: int = 200) -> Any:
        status, data, _ = await self.call(method, path, body)
        assert status == expect, (status, data)
        return json.loads(data) if data else None

    async def create_proxy(self, name: str, upstream: str, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, **extra}
        result: dict[str, Any] = await self.json("POST", "/proxies", body, expect=201)
        return result

    async def add_toxic(self, proxy: str, **toxic: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/proxies/{proxy}/toxics", toxic)
        return result

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await self.json("DELETE", f"/proxies/{proxy}/toxics/{name}", expect=204)

    async def set_enabled(self, proxy: str, enabled: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/proxies/{proxy}", {"enabled": enabled})
        return result


def port_of(proxy: dict[str, Any]) -> int:
    return int(str(proxy["listen"]).rsplit(":", 1)[1])


class EchoServer:
    """Echoes what it receives (optionally after ``delay`` s) and records how each peer left."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.outcomes: list[str] = []
        self.accepted = 0
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self._changed.set()
        outcome = "eof"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            outcome = "reset"
        finally:
            self.outcomes.append(outcome)
            self._changed.set()
            writer.close()
            self._writers.discard(writer)
            self._handlers.discard(task)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Client:
    """A TCP client of a proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readexactly(n)

    async def roundtrip(self, data: bytes, timeout: float = 5.0) -> float:
        """Send ``data``, wait for it to come back; return the elapsed seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.send(data)
        echoed = await self.read_exactly(len(data), timeout)
        assert echoed == data
        return loop.time() - start

    async def ending(self, timeout: float = 5.0) -> tuple[str, bytes]:
        """Read until the connection ends: ("eof" or "reset", the bytes received before)."""
        received = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return "reset", bytes(received)
                if not data:
                    return "eof", bytes(received)
                received += data

    async def nothing_for(self, seconds: float) -> bool:
        """True if no byte and no close arrive within ``seconds`` (a stall or a hang)."""
        try:
            async with asyncio.timeout(seconds):
                await self.reader.read(1)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.writer.close()
