"""A get-by-id that arrives alone on an idle connection is answered in the protocol's callback
(`FrontDoor.at_once`, `proxy.http.server`): no request object, no task. These tests hold that
way to the same answers as aiohttp's, across the ways a connection can carry requests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.http.front import FrontDoor
from tests.conftest import AppFactory, Tokens, agent_body
from tests.wire import read_answer

AGENT = "agent-at-once"


@contextlib.asynccontextmanager
async def _connection(
    client: TestClient[Any, Any],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        async with asyncio.timeout(10):
            yield reader, writer
    finally:
        writer.close()


def _get(agent: str, token: str, request_id: str) -> bytes:
    return (
        f"GET /v1/agents/{agent} HTTP/1.1\r\nHost: sidecar\r\n"
        f"Authorization: Bearer {token}\r\nX-Request-ID: {request_id}\r\n\r\n"
    ).encode()


def _long_way(client: TestClient[Any, Any]) -> list[str]:
    """The agent ids the front door answered the long way (aiohttp's request and task)."""
    door = client.server.runner.server.request_handler  # type: ignore[union-attr]
    assert isinstance(door, FrontDoor)
    taken: list[str] = []
    long_way = door._get_agent

    def counted(request: web.BaseRequest, agent_id: str) -> Any:
        taken.append(agent_id)
        return long_way(request, agent_id)

    door._get_agent = counted  # type: ignore[method-assign]
    return taken


async def _three_reads_from_postgresql(
    client: TestClient[Any, Any], token: str, prefix: str
) -> None:
    async with _connection(client) as (reader, writer):
        for n in range(3):
            writer.write(_get(AGENT, token, f"{prefix}-{n}"))
            status_line, fields, body = await read_answer(reader)
            assert (status_line, fields["x-request-id"]) == ("HTTP/1.1 200 OK", f"{prefix}-{n}")
            assert fields["x-registry-source"] == "database"
            assert orjson.loads(body)["agent_id"] == AGENT


@pytest.fixture
async def replica_api(make_api: AppFactory) -> TestClient[Any, Any]:
    api = await make_api(read_mode="replica")
    status, _, _ = await api.call("POST", "/v1/agents", json=agent_body(AGENT))
    assert status == 201
    async with asyncio.timeout(20):
        while (await api.call("GET", f"/v1/agents/{AGENT}"))[0] != 200:
            await asyncio.sleep(0.02)
    return api.client


async def test_reads_one_after_another_on_a_kept_connection(
    replica_api: TestClient[Any, Any], tokens: Tokens
) -> None:
    taken = _long_way(replica_api)
    answers = []
    async with _connection(replica_api) as (reader, writer):
        for n in range(5):
            writer.write(_get(AGENT, tokens.reader, f"read-{n}"))
            answers.append(await read_answer(reader))
    assert [(a[0], a[1]["x-request-id"]) for a in answers] == [
        ("HTTP/1.1 200 OK", f"read-{n}") for n in range(5)
    ]
    assert {a[1]["x-registry-source"] for a in answers} == {"replica"}
    assert len({a[2] for a in answers}) == 1
    assert orjson.loads(answers[0][2])["agent_id"] == AGENT
    assert not taken  # every one in the callback


async def test_problems_are_sent_by_aiohttp_in_order(
    replica_api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """A problem made in the callback is handed to aiohttp as that request's answer; the
    connection goes on, and the door is not asked twice."""
    taken = _long_way(replica_api)
    async with _connection(replica_api) as (reader, writer):
        writer.write(_get("missing-agent", tokens.reader, "missing"))
        missing = await read_answer(reader)
        writer.write(_get(AGENT, "z" * 40, "unknown-token"))
        refused = await read_answer(reader)
        writer.write(_get(AGENT, tokens.reader, "after"))
        after = await read_answer(reader)
    assert (missing[0], missing[1]["x-request-id"]) == ("HTTP/1.1 404 Not Found", "missing")
    assert missing[1]["content-type"] == "application/problem+json"
    assert refused[0] == "HTTP/1.1 401 Unauthorized"
    assert refused[1]["x-request-id"] == "unknown-token"
    assert refused[1]["www-authenticate"].startswith("Bearer")
    assert (after[0], after[1]["x-request-id"]) == ("HTTP/1.1 200 OK", "after")
    assert not taken


async def test_requests_written_without_waiting_are_answered_in_order(
    replica_api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """However the requests fall into reads (alone, or several at once, which take the long
    way), every answer comes back in the order asked."""
    ids = [f"burst-{n}" for n in range(40)]
    async with _connection(replica_api) as (reader, writer):
        for n, request_id in enumerate(ids):
            agent = AGENT if n % 3 else "missing-agent"
            writer.write(_get(agent, tokens.reader, request_id))
            await writer.drain()
        answers = [await read_answer(reader) for _ in ids]
    assert [a[1]["x-request-id"] for a in answers] == ids
    assert [a[0].split(" ")[1] for a in answers] == [
        "200" if n % 3 else "404" for n in range(len(ids))
    ]


async def test_a_head_in_two_pieces_is_answered(
    replica_api: TestClient[Any, Any], tokens: Tokens
) -> None:
    data = _get(AGENT, tokens.reader, "pieces")
    async with _connection(replica_api) as (reader, writer):
        writer.write(data[:20])
        await writer.drain()
        writer.write(data[20:])
        status, fields, body = await read_answer(reader)
    assert (status, fields["x-request-id"]) == ("HTTP/1.1 200 OK", "pieces")
    assert orjson.loads(body)["agent_id"] == AGENT


async def test_a_read_that_needs_postgresql_goes_aiohttps_way(
    make_api: AppFactory, tokens: Tokens
) -> None:
    """Known before anything is done (`RegistryService.may_answer_at_once`): the request is left
    to aiohttp's task, as if the callback had not looked at it."""
    api = await make_api(read_mode="database")
    status, _, _ = await api.call("POST", "/v1/agents", json=agent_body(AGENT))
    assert status == 201
    taken = _long_way(api.client)
    await _three_reads_from_postgresql(api.client, tokens.reader, "db")
    assert taken == [AGENT] * 3


async def test_a_read_the_replica_cannot_answer_is_handed_to_aiohttp(
    make_api: AppFactory, tokens: Tokens
) -> None:
    """Replica mode with a replica never fresh enough: each read is begun in the callback, found
    to need PostgreSQL there, and finished in aiohttp's task, admitted once."""
    api = await make_api(read_mode="replica", replica={"max_staleness_ms": 0})
    status, _, _ = await api.call("POST", "/v1/agents", json=agent_body(AGENT))
    assert status == 201
    taken = _long_way(api.client)
    await _three_reads_from_postgresql(api.client, tokens.reader, "late")
    assert not taken
    metrics = await (await api.client.get("/metrics")).text()
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("registry_proxy_requests_total")
        and 'route="get_agent"' in line
        and 'source="database"' in line
    ]
    assert served and float(served[0].rsplit(" ", 1)[1]) == 3.0, served


async def test_a_client_that_does_not_read_is_not_answered_without_bound(
    replica_api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """Once the connection's transport holds more than its high-water mark, reads go the long
    way, where the answer waits for the client to read: the server holds a bounded amount.

    Each request is sent alone (the next once the server's parser has the last), the way the
    callback would answer it."""
    server = replica_api.server
    # A small receive buffer set before connecting (the window is agreed on then), so that
    # answers not read show within a few requests.
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, (server.host, server.port))
    reader, writer = await asyncio.open_connection(sock=client)
    handlers = server.runner.server._connections  # type: ignore[union-attr]
    ours = writer.get_extra_info("sockname")

    def mine() -> list[Any]:
        return [h for h in handlers if h.transport.get_extra_info("peername") == ours]

    try:
        async with asyncio.timeout(20):
            while not mine():
                await asyncio.sleep(0.01)
            (handler,) = mine()
            server_side = handler.transport
            server_side.set_write_buffer_limits(high=8192)
            server_side.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            one = _get(AGENT, tokens.reader, "flood")
            sent = 0
            # Until aiohttp stops reading (its queue full), or far past where it should have.
            while not handler._buffer_paused and sent < 2000:
                count = handler._request_count
                writer.write(one)
                await writer.drain()
                sent += 1
                while handler._request_count == count:
                    await asyncio.sleep(0)
        held = server_side.get_write_buffer_size()
        assert handler._buffer_paused, f"still reading after {sent} requests, {held} bytes held"
        assert handler.writing_paused
        assert held < 8192 + 2048  # the mark and at most one answer past it
    finally:
        writer.close()
