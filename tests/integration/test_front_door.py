"""The front door serves get-by-id and the capability query itself: whatever it answers must be
what aiohttp's router and the middlewares would have answered, for the paths it takes and for
those it must leave alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.app import SYNC, create_app
from proxy.http import keys
from proxy.http.front import FrontDoor
from tests.conftest import AppFactory, Tokens, agent_body, make_settings
from tests.wire import read_answer

AGENT = "agent-front"
# (path, taken by the front door)
PATHS = [
    (f"/v1/agents/{AGENT}", True),
    ("/v1/agents/missing-agent", True),
    (f"/v1/agents/{AGENT}?verbose=1", False),
    ("/v1/agents/%61gent-front", False),  # an escaped letter: the same agent, the long way
    (f"/v1/agents/{AGENT}%2Fx", False),
    (f"/v1/agents/{AGENT}/", False),
    ("/v1/agents/", False),
    ("/v1/agents/-starts-with-dash", False),
    ("/v1/agents/" + "a" * 129, False),
    (f"/v1/agents/{AGENT}%20", False),
    ("/v1/agents/a%00b", False),
    ("/v1/agents", True),
    ("/v1/agents?task_type=code&limit=5", True),
    ("/v1/agents?languages=python,go&specializations=&max_utilization=0.9", True),
    ("/v1/agents?limit=0", True),  # refused: the same problem either way
    ("/v1/agents?limit=1&limit=2", True),
    ("/v1/agents?languages=python,,go", True),
    ("/v1/agents?task_type=%63ode", True),  # a query string's escapes are the query's business
    ("/v1/agents/?task_type=code", False),
    ("/v1/%61gents?task_type=code", False),
    ("/v1/agents%3Ftask_type=code", False),
]
QUERY = "/v1/agents?task_type=code&languages=python"
COMPARED_HEADERS = ("Content-Type", "ETag", "X-Registry-Source", "WWW-Authenticate", "Allow")


async def _answer(client: TestClient[Any, Any], path: str, headers: dict[str, str]) -> Any:
    resp = await client.get(URL(path, encoded=True), headers=headers)
    raw = await resp.read()
    body = orjson.loads(raw) if raw else None
    if isinstance(body, dict):
        body.pop("instance", None)  # a problem's instance names the request id
    kept = {h: resp.headers.get(h) for h in COMPARED_HEADERS}
    return resp.status, kept, body, resp.headers.get("X-Request-ID")


@pytest.fixture
async def two_doors(
    make_api: AppFactory,
    migrated_dsn: str,
    tokens: Tokens,
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]]:
    """The sidecar as served, and the same app behind aiohttp's plain runner (no front door)."""
    api = await make_api(read_mode="replica")
    status, _, _ = await api.call("POST", "/v1/agents", json=agent_body(AGENT))
    assert status == 201
    app = create_app(make_settings(migrated_dsn, tokens, tmp_path / "plain", read_mode="replica"))
    plain = await aiohttp_client(TestServer(app))
    assert await app[keys.SERVICE].db.wait_ready(20)
    sync = app[SYNC]
    assert sync is not None
    async with asyncio.timeout(20):
        await sync.synced.wait()
    # Both replicas have the agent before anything is compared.
    for client in (api.client, plain):
        async with asyncio.timeout(20):
            while (await _answer(client, f"/v1/agents/{AGENT}", api.headers()))[0] != 200:
                await asyncio.sleep(0.02)
    assert isinstance(api.client.server.runner.server.request_handler, FrontDoor)  # type: ignore[union-attr]
    calls: list[str] = []
    sidecar_app = api.client.server.app
    assert sidecar_app is not None
    handle = sidecar_app._handle

    async def counted(request: web.Request) -> web.StreamResponse:
        calls.append(request.raw_path)
        return await handle(request)

    sidecar_app._handle = counted  # type: ignore[method-assign]
    return api.client, plain, calls


@pytest.mark.parametrize(("path", "fast"), PATHS)
@pytest.mark.parametrize("who", ["reader", "none", "unknown", "malformed"])
async def test_front_door_answers_as_the_router_does(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]],
    tokens: Tokens,
    path: str,
    fast: bool,
    who: str,
) -> None:
    front, plain, calls = two_doors
    headers = {
        "reader": {"Authorization": f"Bearer {tokens.reader}"},
        "none": {},
        "unknown": {"Authorization": "Bearer " + "z" * 40},
        "malformed": {"Authorization": "Basic abc"},
    }[who]
    via_front = await _answer(front, path, headers)
    via_router = await _answer(plain, path, headers)
    assert via_front[:3] == via_router[:3]
    assert via_front[3] and via_router[3]  # both give a request id
    assert (path not in calls) is fast


async def test_front_door_keeps_a_presented_request_id(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]], tokens: Tokens
) -> None:
    front, _, _ = two_doors
    headers = {"Authorization": f"Bearer {tokens.reader}", "X-Request-ID": "trace-123"}
    status, kept, body, request_id = await _answer(front, f"/v1/agents/{AGENT}", headers)
    assert (status, request_id, kept["X-Registry-Source"]) == (200, "trace-123", "replica")
    assert body["agent_id"] == AGENT


@pytest.mark.parametrize("path", [f"/v1/agents/{AGENT}", QUERY])
async def test_direct_answer_has_the_routers_headers(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]],
    tokens: Tokens,
    path: str,
) -> None:
    """The answer written straight to the transport carries every header aiohttp's response
    would, with the same values (but the clock's and the request's own)."""
    front, plain, calls = two_doors
    headers = {"Authorization": f"Bearer {tokens.reader}"}
    seen = []
    bodies = []
    for client in (front, plain):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200
        bodies.append(await resp.read())
        seen.append(
            {
                k.lower(): v
                for k, v in resp.headers.items()
                if k.lower() not in ("date", "x-request-id")
            }
            | {"has-date": str("Date" in resp.headers)}
        )
    assert seen[0] == seen[1]
    assert bodies[0] == bodies[1]
    assert not calls  # the front door answered


@contextlib.asynccontextmanager
async def _sent(client: TestClient[Any, Any], data: bytes) -> AsyncIterator[asyncio.StreamReader]:
    """A connection of its own to the server, ``data`` written to it; the reader, for 10 s."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            yield reader
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]], tokens: Tokens
) -> None:
    front, _, calls = two_doors
    auth = f"Authorization: Bearer {tokens.reader}\r\nHost: sidecar\r\n"
    data = (
        f"GET /v1/agents/{AGENT} HTTP/1.1\r\n{auth}X-Request-ID: first\r\n\r\n"
        f"GET /v1/agents/missing-agent HTTP/1.1\r\n{auth}X-Request-ID: second\r\n\r\n"
        f"GET /v1/agents/{AGENT} HTTP/1.1\r\n{auth}X-Request-ID: third\r\n\r\n"
    ).encode()
    async with _sent(front, data) as reader:
        answers = [await read_answer(reader) for _ in range(3)]
    assert [(a[0], a[1]["x-request-id"]) for a in answers] == [
        ("HTTP/1.1 200 OK", "first"),
        ("HTTP/1.1 404 Not Found", "second"),
        ("HTTP/1.1 200 OK", "third"),
    ]
    assert orjson.loads(answers[0][2])["agent_id"] == AGENT
    assert answers[0][2] == answers[2][2]
    assert not calls


@pytest.mark.parametrize(
    ("request_line", "extra", "status_line"),
    [
        ("HTTP/1.0", "", "HTTP/1.0 200 OK"),
        ("HTTP/1.1", "Connection: close\r\n", "HTTP/1.1 200 OK"),
    ],
)
async def test_connections_that_close_get_aiohttps_own_answer(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]],
    tokens: Tokens,
    request_line: str,
    extra: str,
    status_line: str,
) -> None:
    """The direct answer is for HTTP/1.1 keep-alive only; otherwise aiohttp writes the answer
    (its Connection header, its HTTP version) and closes the connection after it."""
    front, _, calls = two_doors
    data = (
        f"GET /v1/agents/{AGENT} {request_line}\r\nHost: sidecar\r\n"
        f"Authorization: Bearer {tokens.reader}\r\n{extra}\r\n"
    ).encode()
    async with _sent(front, data) as reader:
        status, fields, body = await read_answer(reader)
        assert await reader.read() == b""  # closed by the server
    assert status == status_line
    assert orjson.loads(body)["agent_id"] == AGENT
    assert fields["x-registry-source"] == "replica"
    assert not calls  # still the front door, with aiohttp's response


# ---- registration ------------------------------------------------------------------------------

# What varies between two registrations made the same way: the agent's own id and clock.
_OWN = ("agent_id", "name", "registered_at", "last_heartbeat_at", "updated_at", "version")


def _writer_headers(case: str, tokens: Tokens) -> dict[str, str]:
    """A writer's headers, changed as the cases every write shares ask."""
    headers = {"Authorization": f"Bearer {tokens.writer}", "Content-Type": "application/json"}
    if case == "reader":
        headers["Authorization"] = f"Bearer {tokens.reader}"
    elif case == "anonymous":
        del headers["Authorization"]
    elif case == "bad-key":
        headers["Idempotency-Key"] = "not a key"
    elif case == "expect":
        headers["Expect"] = "100-continue"
    return headers


def _registration(door: str, case: str, tokens: Tokens) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) of one registration case, for the agent of `door`."""
    agent_id = f"reg-{case}-{door}"
    headers = _writer_headers(case, tokens)
    body = orjson.dumps(agent_body(agent_id))
    path = "/v1/agents"
    if case == "duplicate":
        body = orjson.dumps(agent_body(AGENT))
    elif case == "not-json":
        body = b'{"agent_id": '
    elif case == "text":
        headers["Content-Type"] = "text/plain"
    elif case == "fields":
        body = orjson.dumps({"agent_id": agent_id, "max_concurrent_tasks": -1})
    elif case == "too-large":
        body = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    elif case == "empty":
        body = b""
    elif case == "query-string":
        path = "/v1/agents?debug=1"
    return path, headers, body


async def _posted(
    client: TestClient[Any, Any], path: str, headers: dict[str, str], body: bytes
) -> Any:
    resp = await client.post(URL(path, encoded=True), headers=headers, data=body)
    raw = await resp.read()
    doc = orjson.loads(raw) if raw else None
    if isinstance(doc, dict):
        doc.pop("instance", None)
        for key in _OWN:
            doc.pop(key, None)
    kept = {h: resp.headers.get(h) for h in (*COMPARED_HEADERS, "Location")}
    return resp.status, kept, doc, resp.headers.get("X-Request-ID")


@pytest.mark.parametrize(
    ("case", "fast", "status"),
    [
        ("new", True, 201),
        ("duplicate", True, 409),
        ("not-json", True, 400),
        ("text", True, 415),
        ("fields", True, 422),
        ("too-large", True, 413),
        ("empty", True, 400),
        ("reader", True, 403),
        ("anonymous", True, 401),
        ("bad-key", True, 422),
        ("expect", False, 201),
        ("query-string", False, 201),
    ],
)
async def test_front_door_registers_as_the_router_does(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]],
    tokens: Tokens,
    case: str,
    fast: bool,
    status: int,
) -> None:
    front, plain, calls = two_doors
    answers = []
    for door, client in (("front", front), ("plain", plain)):
        answers.append(await _posted(client, *_registration(door, case, tokens)))
    via_front, via_router = answers
    assert via_front[0] == status
    location = via_front[1].pop("Location")
    assert via_router[1].pop("Location") == (
        location.replace("-front", "-plain") if location else None
    )
    assert via_front[:3] == via_router[:3]
    assert via_front[3] and via_router[3]
    assert bool(calls) is not fast


async def test_a_registration_through_the_front_door_is_replayed_under_its_key(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]], tokens: Tokens
) -> None:
    front, _, calls = two_doors
    headers = {"Authorization": f"Bearer {tokens.writer}", "Idempotency-Key": "front-key-1"}
    answers = []
    for _ in range(2):
        resp = await front.post("/v1/agents", headers=headers, json=agent_body("reg-keyed"))
        answers.append((resp.status, resp.headers.get("Idempotent-Replayed"), await resp.read()))
    assert answers[0][:2] == (201, None)
    assert answers[1][:2] == (201, "true")
    assert answers[1][2] == answers[0][2]
    assert not calls


# ---- the writes an agent sends about itself ---------------------------------------------------

# What varies between the same write through the two doors: the clocks and the version.
_WRITE_OWN = (*_OWN, "event_id", "observed_at")


def _agent_write(
    door: str, kind: str, case: str, tokens: Tokens
) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body) of one case of a write of `kind` for the agent `AGENT`."""
    method, suffix, body = {
        "performance": (
            "POST",
            "/performance",
            {
                "event_id": f"ev-{case}-{door}",
                "success": True,
                "quality_score": 0.5,
                "latency_ms": 120.0,
                "task_type": "code",
            },
        ),
        "heartbeat": ("POST", "/heartbeat", {}),
        "load": (
            "PUT",
            "/load",
            {"active_tasks": 1, "queued_tasks": 0, "observed_at": "2026-01-01T00:00:00Z"},
        ),
    }[kind]
    headers = _writer_headers(case, tokens)
    path = f"/v1/agents/{AGENT}{suffix}"
    raw = orjson.dumps(body)
    if case == "missing-agent":
        path = f"/v1/agents/missing-agent{suffix}"
    elif case == "bad-id":
        path = f"/v1/agents/-bad{suffix}"
    elif case == "escaped-id":
        path = f"/v1/agents/%61gent-front{suffix}"
    elif case == "not-json":
        raw = b'{"success": '
    elif case == "fields":
        raw = orjson.dumps({"active_tasks": -1, "success": "maybe", "observed_at": "never"})
    elif case == "empty":
        raw = b""
    elif case == "query-string":
        path += "?debug=1"
    elif case == "trailing-slash":
        path += "/"
    elif case == "other-method":
        method = "PATCH" if method == "POST" else "POST"
    return method, path, headers, raw


async def _sent_write(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str], body: bytes
) -> Any:
    resp = await client.request(method, URL(path, encoded=True), headers=headers, data=body)
    raw = await resp.read()
    doc = orjson.loads(raw) if raw else None
    if isinstance(doc, dict):
        doc.pop("instance", None)
        for key in _WRITE_OWN:
            doc.pop(key, None)
        if isinstance(doc.get("performance"), dict):
            doc.pop("performance")  # the two doors' events add up on one agent
    kept = {h: resp.headers.get(h) for h in COMPARED_HEADERS if h != "ETag"}
    return resp.status, kept, doc, resp.headers.get("X-Request-ID")


@pytest.mark.parametrize("kind", ["performance", "heartbeat", "load"])
@pytest.mark.parametrize(
    ("case", "fast"),
    [
        ("ok", True),
        ("missing-agent", True),
        ("not-json", True),
        ("fields", True),
        ("empty", True),
        ("reader", True),
        ("anonymous", True),
        ("bad-key", True),
        ("bad-id", False),
        ("escaped-id", False),
        ("expect", False),
        ("query-string", False),
        ("trailing-slash", False),
        ("other-method", False),
    ],
)
async def test_front_door_takes_an_agents_writes_as_the_router_does(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]],
    tokens: Tokens,
    kind: str,
    case: str,
    fast: bool,
) -> None:
    front, plain, calls = two_doors
    answers = []
    for door, client in (("front", front), ("plain", plain)):
        answers.append(await _sent_write(client, *_agent_write(door, kind, case, tokens)))
    via_front, via_router = answers
    assert via_front[:3] == via_router[:3]
    assert via_front[3] and via_router[3]
    assert bool(calls) is not fast
    if case == "ok":
        assert via_front[0] in (200, 201)


async def test_a_task_outcome_through_the_front_door_counts_once_under_its_key(
    two_doors: tuple[TestClient[Any, Any], TestClient[Any, Any], list[str]], tokens: Tokens
) -> None:
    front, _, calls = two_doors
    headers = {"Authorization": f"Bearer {tokens.writer}", "Idempotency-Key": "front-perf-1"}
    body = {"success": True, "quality_score": 1.0, "latency_ms": 10.0, "task_type": "code"}
    answers = []
    for _ in range(2):
        resp = await front.post(f"/v1/agents/{AGENT}/performance", headers=headers, json=body)
        answers.append((resp.status, resp.headers.get("Idempotent-Replayed"), await resp.read()))
    assert answers[0][:2] == (201, None)
    assert answers[1][:2] == (201, "true")
    # The same document (the replay is read back from the ledger, its keys in jsonb's order).
    assert orjson.loads(answers[1][2]) == orjson.loads(answers[0][2])
    resp = await front.get(
        f"/v1/agents/{AGENT}", headers={"Authorization": f"Bearer {tokens.reader}"}
    )
    assert (await resp.json())["performance"]["task_count"] == 1
    assert not calls
