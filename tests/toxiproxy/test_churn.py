"""Data integrity while toxics are added and removed under live traffic, in both directions."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from .support import Api, Client, EchoServer, port_of

pytestmark = pytest.mark.timeout(60)

TOXICS: list[dict[str, Any]] = [
    {"type": "noop"},
    {"type": "latency", "attributes": {"latency": 2, "jitter": 1}},
    {"type": "slicer", "attributes": {"average_size": 700, "size_variation": 200}},
    {"type": "bandwidth", "attributes": {"rate": 50_000}},
    {"type": "limit_data", "attributes": {"bytes": 1 << 40}},
    {"type": "slow_close", "attributes": {"delay": 1}},
]


async def test_stream_survives_toxic_churn(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    rng = random.Random(11)
    churned = asyncio.Event()
    sent = bytearray()

    async def send() -> None:
        # Keep data flowing until the churn is over, so every change hits a busy stream.
        while not churned.is_set():
            block = rng.randbytes(4096)
            sent.extend(block)
            client.send(block)
            await client.writer.drain()
            await asyncio.sleep(0)

    async def churn(operations: int) -> None:
        live: list[str] = []
        for counter in range(operations):
            if live and (len(live) > 3 or rng.random() < 0.4):
                await api.remove_toxic("p", live.pop(rng.randrange(len(live))))
            else:
                name = f"t{counter}"
                stream = rng.choice(["upstream", "downstream"])
                await api.add_toxic("p", name=name, stream=stream, **rng.choice(TOXICS))
                live.append(name)
        for name in live:
            await api.remove_toxic("p", name)
        churned.set()

    received = bytearray()

    async def receive() -> None:
        # Read all along: a peer that stops reading back-pressures the whole chain, and then
        # chain edits wait for it (as with the real server).
        while not churned.is_set() or len(received) < len(sent):
            received.extend(await client.reader.read(65536))

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    await churn(120)
    await sender
    async with asyncio.timeout(30):
        await receiver
    assert received == sent
    await client.roundtrip(b"still direct")
