"""The edges of the HTTP server: slow request heads are cut, open connections are capped, two
Authorization headers are refused, HEAD answers wherever GET does, and `/v1/status` shows a
non-admin token only its own tenant."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.http import keys
from proxy.http.routes import ROUTES
from tests.conftest import Api, AppFactory, Tokens, agent_body, app_of, eventually
from tests.security import assert_problem, send_raw

# ---- raw connections -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connection(api: Api) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[int, bytes]:
    """The status and the body of the answer, read until the server closes the connection."""
    async with asyncio.timeout(timeout):
        data = await reader.read()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What arrived before the server closed the connection (fails if it stays open)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


def request_head(api: Api, method: str, path: str, token: str, **extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {api.client.host}"]
    lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- slow request heads ----------------------------------------------------------------------


async def test_a_half_sent_request_line_is_cut_while_others_are_served(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api(request={"header_timeout_s": 0.5})
    started = time.monotonic()
    async with connection(api) as (reader, writer):
        writer.write(b"GET /v1/sta")
        await writer.drain()
        # Another connection is served meanwhile.
        status, body, _ = await api.call("GET", "/v1/stats")
        assert status == 200, body
        data = await closed_within(reader, 5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 4, elapsed
    head, _, raw = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data
    assert b"Connection: close" in head
    problem = orjson.loads(raw)
    assert problem["status"] == 408
    assert problem["type"].endswith("/request-timeout")


async def test_a_connection_that_sends_nothing_is_cut(make_api: AppFactory) -> None:
    api = await make_api(request={"header_timeout_s": 0.3})
    async with connection(api) as (reader, _):
        data = await closed_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 408 "), data


async def test_headers_trickled_after_a_kept_alive_answer_are_cut(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api(request={"header_timeout_s": 0.5})
    async with connection(api) as (reader, writer):
        writer.write(request_head(api, "GET", "/v1/stats", tokens.reader))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 200 "), status_line
        # Idle between requests is the keep-alive timeout's business, not this bound's ...
        await asyncio.sleep(0.8)
        # ... but a head that starts arriving must be complete in time.
        for piece in (b"GET /v1/st", b"ats HTTP/1.1\r\n", b"Host: x\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.25)
        data = await closed_within(reader, 5)
    assert b"HTTP/1.1 408 " in data, data


async def test_a_head_sent_in_pieces_within_the_bound_is_served(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api(request={"header_timeout_s": 2})
    head = request_head(api, "GET", "/v1/stats", tokens.reader, Connection="close")
    async with connection(api) as (reader, writer):
        for i in range(0, len(head), 16):
            writer.write(head[i : i + 16])
            await writer.drain()
            await asyncio.sleep(0.02)
        status, body = await read_answer(reader)
    assert status == 200, body


async def test_a_slow_handler_is_not_cut_by_the_head_bound(
    make_api: AppFactory, tokens: Tokens
) -> None:
    """Once the head is in, the body has its own bound (read_timeout_s), not this one."""
    api = await make_api(request={"header_timeout_s": 0.2, "read_timeout_s": 1.0})
    head = request_head(
        api, "POST", "/v1/agents", tokens.writer, Content_Type="application/json",
        Content_Length="100",
    )  # fmt: skip
    started = time.monotonic()
    async with connection(api) as (reader, writer):
        writer.write(head + b'{"agent_id": ')
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 408 "), status_line
    assert time.monotonic() - started > 0.9  # the body's bound, not the head's


# ---- the connection cap ----------------------------------------------------------------------


async def test_at_the_cap_an_idle_connection_makes_room(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api(request={"max_connections": 16, "header_timeout_s": 30})
    async with contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(connection(api)) for _ in range(16)]
        await asyncio.sleep(0.1)  # every one of them accepted
        status, body, _ = await api.call("GET", "/v1/stats")
        assert status == 200, body
        oldest_reader = idle[0][0]
        assert await closed_within(oldest_reader, 5) == b""  # evicted without an answer
    server = api.client.server.runner.server
    assert server is not None
    assert getattr(server, "evicted", 0) >= 1


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(
    make_api: AppFactory, tokens: Tokens
) -> None:
    api = await make_api(
        request={"max_connections": 16, "header_timeout_s": 30, "read_timeout_s": 30}
    )
    head = request_head(
        api, "POST", "/v1/agents", tokens.writer, Content_Type="application/json",
        Content_Length="100",
    )  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(16):
            _, writer = await stack.enter_async_context(connection(api))
            writer.write(head + b"{")  # the handler now waits for the rest of the body
            await writer.drain()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        async with connection(api) as (reader, _):
            status, body = await read_answer(reader, timeout=5)
        assert time.monotonic() - started < 2
    assert status == 503
    problem = orjson.loads(body)
    assert problem["type"].endswith("/too-many-connections")

    async def serves_again() -> bool:
        # The busy ones are closed; their handlers end as their bodies never come.
        return (await api.call("GET", "/v1/stats"))[0] == 200

    await eventually(serves_again, message="the sidecar serves again")


# ---- two Authorization headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/agents/dup-auth"), ("GET", "/v1/stats"), ("DELETE", "/v1/agents/dup-auth")],
    ids=["front-door", "router", "write"],
)
async def test_two_authorization_headers_are_400(
    api: Api, tokens: Tokens, method: str, path: str
) -> None:
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("dup-auth"))
    assert status == 201, body
    for second in (tokens.writer, tokens.reader, "nope-nope-nope-nope"):
        answer = await send_raw(
            api,
            method.encode(),
            path.encode(),
            [
                (b"Authorization", f"Bearer {tokens.writer}".encode()),
                (b"Authorization", f"Bearer {second}".encode()),
            ],
        )
        problem = assert_problem(answer.status, answer.body, answer.headers)
        assert answer.status == 400, answer
        assert "Authorization" in problem["detail"]
    status, body, _ = await api.call("GET", "/v1/agents/dup-auth")
    assert status == 200, body  # the DELETE above did nothing


async def test_two_request_timeouts_are_400(api: Api, tokens: Tokens) -> None:
    answer = await send_raw(
        api,
        b"GET",
        b"/v1/stats",
        [
            (b"Authorization", f"Bearer {tokens.reader}".encode()),
            (b"X-Request-Timeout", b"500"),
            (b"X-Request-Timeout", b"5"),
        ],
    )
    assert answer.status == 400, answer
    assert_problem(answer.status, answer.body, answer.headers)


@pytest.mark.parametrize("value", ["1_000", "+5", "\u0661\u0662", "5 5", "1e3", "0x10", "-1"])
async def test_request_timeout_is_plain_digits(api: Api, value: str) -> None:
    status, body, headers = await api.call("GET", "/v1/stats", headers={"X-Request-Timeout": value})
    assert status == 400, (value, body)


# ---- HEAD ------------------------------------------------------------------------------------

GET_ROUTES = [r for r in ROUTES if r.method == "GET"]
# Headers whose values differ from one answer to the next.
_VARYING = {"Date", "X-Request-Id", "Age", "Content-Length"}


@pytest.mark.parametrize("route", GET_ROUTES, ids=lambda r: r.name)
async def test_head_answers_wherever_get_does(api: Api, tokens: Tokens, route: Any) -> None:
    status, body, _ = await api.call("POST", "/v1/agents", agent_body("headed"))
    assert status == 201, body
    op = "headed-op"
    status, body, _ = await api.call(
        "POST", "/v1/agents", agent_body("headed-2"), headers={"Idempotency-Key": op}
    )
    assert status == 201, body
    path = route.path.replace("{agent_id}", "headed").replace("{op_id}", op)
    auth = {"Authorization": f"Bearer {tokens.admin}"}
    got = await api.client.get(path, headers=auth)
    got_body = await got.read()
    head = await api.client.head(path, headers=auth)
    head_body = await head.read()
    assert got.status == 200, (route.name, got_body[:200])
    assert head.status == got.status, route.name
    assert head_body == b""
    assert {h.title() for h in head.headers} - _VARYING == {
        h.title() for h in got.headers
    } - _VARYING, route.name
    for name in ("Content-Type", "ETag", "X-Registry-Source"):
        assert head.headers.get(name) == got.headers.get(name), (route.name, name)
    if route.name not in ("metrics", "status"):  # their bodies change between two calls
        assert head.headers["Content-Length"] == str(len(got_body)), route.name


@pytest.mark.parametrize(
    "route", [r for r in GET_ROUTES if r.role is not None], ids=lambda r: r.name
)
async def test_head_needs_the_same_token(api: Api, tokens: Tokens, route: Any) -> None:
    path = route.path.replace("{agent_id}", "nobody").replace("{op_id}", "nothing")
    resp = await api.client.head(path)
    assert resp.status == 401, route.name
    assert "WWW-Authenticate" in resp.headers
    assert await resp.read() == b""
    if route.role.name == "ADMIN":
        resp = await api.client.head(path, headers={"Authorization": f"Bearer {tokens.reader}"})
        assert resp.status == 403, route.name


# ---- /v1/status: each token its own tenant ---------------------------------------------------


async def _status(api: Api, token: str) -> tuple[dict[str, Any], str]:
    status, body, _ = await api.as_token(token).call("GET", "/v1/status")
    assert status == 200, body
    return body, orjson.dumps(body).decode()


async def test_status_shows_a_non_admin_only_its_own_tenant(
    api: Api, tokens: Tokens, tmp_path: Any
) -> None:
    mine, theirs = api, api.as_token(tokens.other_writer)
    admin = api.as_token(tokens.admin)
    for i in range(2):
        assert (await mine.call("POST", "/v1/agents", agent_body(f"mine-{i}")))[0] == 201
    for i in range(3):
        assert (await theirs.call("POST", "/v1/agents", agent_body(f"theirs-{i}")))[0] == 201

    async def replica_has_all() -> bool:
        body, _ = await _status(api, tokens.admin)
        return bool(body["replica"]["agents"] == 5)

    await eventually(replica_has_all, message="the replica holds both tenants")
    # The admin's command is journaled in its tenant, three writes of the other one too.
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    for method, path, data in (
        ("POST", "/v1/agents", agent_body("theirs-late")),
        ("POST", "/v1/agents/theirs-0/heartbeat", None),
        ("POST", "/v1/agents/theirs-1/heartbeat", None),
    ):
        status, body, _ = await theirs.call(method, path, data)
        assert status == 202, body
    try:
        journal_dir = str(app_of(api)[keys.SETTINGS].journal.dir)
        for token, agents, depth, pending in (
            (tokens.reader, 2, 1, 0),
            (tokens.writer, 2, 1, 0),
            (tokens.other_writer, 4, 3, 3),  # three registered, one journaled
        ):
            body, text = await _status(api, token)
            assert body["replica"]["agents"] == agents, (token, body["replica"])
            assert body["journal"]["depth"] == depth, (token, body["journal"])
            assert body["replica"]["pending_writes"] == pending, (token, body["replica"])
            assert "path" not in body["journal"]
            assert journal_dir not in text and str(tmp_path) not in text
            assert "replay" not in body
            assert body["breaker"]["state"] == "forced_open"  # the sidecar's health is shared
            own = tokens.other_tenant if token == tokens.other_writer else tokens.tenant
            other = tokens.tenant if own == tokens.other_tenant else tokens.other_tenant
            assert body["scope"] == {"tenant": own}
            assert other not in text
        body, text = await _status(api, tokens.admin)
        assert body["journal"]["path"].startswith(journal_dir)
        assert body["journal"]["depth"] == 4
        assert body["replica"]["agents"] == 5
        assert "replay" in body
        assert "scope" not in body
    finally:
        assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200
