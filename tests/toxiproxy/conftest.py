"""Fixtures: the server in the test's event loop, an API client, an echo server, TCP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from chaos.toxiproxy.server import ToxiproxyServer
from chaos.toxiproxy.testing import serve

from .support import Api, Client, EchoServer


@pytest.fixture
async def toxi() -> AsyncIterator[ToxiproxyServer]:
    async with serve("127.0.0.1", 0, seed=20240611, proxy_metrics=True) as server:
        yield server


@pytest.fixture
async def api(toxi: ToxiproxyServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, toxi.url)


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients to close at the end of a test."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()
