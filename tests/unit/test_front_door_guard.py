"""The front door serves get-by-id without aiohttp's middleware chain, doing the middlewares' work
itself. A middleware added to the app that the door does not reproduce would be skipped on the
hottest route: this test fails first, and at start-up the door stays out of the way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from pydantic import SecretStr

from proxy.app import create_app
from proxy.http import front, keys
from proxy.http.front import REPRODUCED, FrontDoor, refusal
from proxy.http.server import SidecarRunner
from proxy.settings import Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        tokens=SecretStr("[]"),
        journal={"dir": tmp_path / "journal"},
    )


def test_the_app_has_exactly_the_middlewares_the_front_door_runs(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    assert tuple(app.middlewares) == REPRODUCED


async def test_the_front_door_stands_in_front_of_the_app(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    server = web.Server(app._handle)
    assert refusal(app, server) is None


async def test_an_extra_middleware_keeps_the_front_door_out(tmp_path: Path) -> None:
    @web.middleware
    async def extra(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        return response

    # The app as the factory would build it with one more middleware, without its resources.
    app = web.Application(middlewares=[*REPRODUCED, extra])
    app[keys.SETTINGS] = _settings(tmp_path)
    server = web.Server(app._handle)
    reason = refusal(app, server)
    assert reason is not None and "extra" in reason
    runner = SidecarRunner(app)
    with structlog.testing.capture_logs() as logs:
        await runner.setup()
    try:
        assert runner.server is not None
        assert not isinstance(runner.server.request_handler, FrontDoor)
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warnings] == [
            "front door off: every request takes aiohttp's own dispatch"
        ]
    finally:
        await runner.cleanup()


async def test_missing_aiohttp_internals_keep_the_front_door_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(_settings(tmp_path))
    server = web.Server(app._handle)
    monkeypatch.setattr(front, "_DISPATCH", "_no_such_dispatch")
    assert refusal(app, server) == "this aiohttp has no Application._no_such_dispatch"
