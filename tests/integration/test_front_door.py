"""The front door serves get-by-id itself: whatever it answers must be what aiohttp's router and
the middlewares would have answered, for the paths it takes and for those it must leave alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.app import create_app
from proxy.http import keys
from proxy.http.front import FrontDoor
from tests.conftest import AppFactory, Tokens, agent_body, make_settings

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
]
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
    sync = app[keys.SYNC]
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
