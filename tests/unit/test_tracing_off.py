"""Tracing is off unless the environment names an exporter, and off it costs nothing: no tracer
provider, no span, OpenTelemetry not even imported, on the front door's get by id and on the
router's path alike. The sidecar also runs where the packages are not installed, even when the
environment asks for tracing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from proxy.app import TRACING, create_app
from proxy.http.middleware import GATE
from proxy.observability.spans import exporters
from proxy.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "zipkin,console"}, ["console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_named(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert exporters(environ) == expected


def test_off_the_app_has_no_tracer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    app = create_app(
        Settings(
            database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
            tokens=SecretStr("[]"),
            journal={"dir": tmp_path / "journal"},
        )
    )
    assert app[TRACING] is None
    assert app[GATE].spans is None


# Serves a get by id through the front door, a write and a status through aiohttp's router, on an
# app whose database is unreachable, with every import of OpenTelemetry made to fail.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pydantic import SecretStr

    class NoOpenTelemetry:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "opentelemetry":
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())

    from aiohttp.test_utils import TestClient, TestServer
    from proxy.app import TRACING, create_app
    from proxy.http.front import FrontDoor
    from proxy.http.server import SidecarRunner
    from proxy.settings import Settings

    class Server(TestServer):
        async def _make_runner(self, **kwargs):
            return SidecarRunner(self.app, **kwargs)

    async def main():
        token = "writer-token-0123456789"
        tokens = [{"token": token, "tenant": "t", "role": "writer", "id": "w"}]
        settings = Settings(
            database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
            tokens=SecretStr(json.dumps(tokens)),
            journal={"dir": sys.argv[1]},
            rate_limit={"enabled": False},
            request={"default_timeout_ms": 300},
        )
        app = create_app(settings)
        headers = {
            "Authorization": f"Bearer {token}",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        }
        async with TestClient(Server(app)) as client:
            assert isinstance(client.server.runner.server.request_handler, FrontDoor)
            got = await client.get("/v1/agents/a-1", headers=headers)
            wrote = await client.post(
                "/v1/agents/a-1/heartbeat", json={}, headers=headers
            )
            status = await client.get("/v1/status", headers=headers)
            answers = [got.status, wrote.status, status.status]
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "opentelemetry")
        print(json.dumps({"answers": answers, "tracing": app[TRACING] is not None,
                          "loaded": loaded}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("asked", [False, True])
def test_the_sidecar_serves_without_opentelemetry(tmp_path: Path, asked: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if asked:  # tracing asked for, the packages missing: a warning, and no tracing
        env["OTEL_TRACES_EXPORTER"] = "otlp"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "journal")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    # No database: the read has no answer, the write is journaled, the status answers.
    assert outcome == {"answers": [503, 202, 200], "tracing": False, "loaded": []}
    assert ("OpenTelemetry is not installed" in result.stdout + result.stderr) is asked
