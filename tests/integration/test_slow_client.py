"""A client that trickles its body gets 408 and holds nothing open for long."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import AppFactory, Tokens


async def test_body_not_sent_in_time_is_408(make_api: AppFactory, tokens: Tokens) -> None:
    api = await make_api(request={"read_timeout_s": 0.3})
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        head = (
            "POST /v1/agents HTTP/1.1\r\n"
            f"Host: {server.host}\r\n"
            f"Authorization: Bearer {tokens.writer}\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
            '{"agent_id": '
        )
        started = time.monotonic()
        writer.write(head.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        assert status_line.split()[1] == b"408", status_line
        assert time.monotonic() - started < 3
    finally:
        writer.close()
