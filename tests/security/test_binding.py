"""Listening on anything but loopback needs REGISTRY_PROXY_ALLOW_NON_LOOPBACK=true.

`config check` and `serve` refuse it with exit status 2 and one line naming the setting, before
anything listens; loopback addresses (and the opt-in) pass.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from proxy.store.embedded import free_port
from tests.conftest import Tokens
from tests.sidecar import SidecarProcess

EXIT_CONFIG = 2


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_PROXY_")}
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def base(tokens: Tokens, dsn: str = "postgresql://app@127.0.0.1:5432/registry") -> dict[str, str]:
    return {"REGISTRY_PROXY_DATABASE_URL": dsn, "REGISTRY_PROXY_TOKENS": tokens.spec()}


REFUSED = ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "", "127.1", "0"]
ALLOWED = ["127.0.0.1", "127.0.0.2", "::1", "localhost"]


def assert_one_line_refusal(rc: int, out: str, err: str, host: str) -> None:
    assert rc == EXIT_CONFIG, (host, rc, out, err)
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1, (host, out, err)
    assert "loopback" in lines[0] and "REGISTRY_PROXY_ALLOW_NON_LOOPBACK" in lines[0], lines


async def test_config_check_refuses_non_loopback_hosts(tokens: Tokens) -> None:
    refused = await asyncio.gather(
        *(run_cli("config", "check", env=clean_env(**base(tokens), REGISTRY_PROXY_HOST=h))
          for h in REFUSED)
    )  # fmt: skip
    for host, (rc, out, err) in zip(REFUSED, refused, strict=True):
        assert_one_line_refusal(rc, out, err, host)

    allowed = await asyncio.gather(
        *(run_cli("config", "check", env=clean_env(**base(tokens), REGISTRY_PROXY_HOST=h))
          for h in ALLOWED)
    )  # fmt: skip
    for host, (rc, out, err) in zip(ALLOWED, allowed, strict=True):
        assert rc == 0, (host, out, err)
        assert out.strip() == "configuration ok"


@pytest.mark.parametrize(
    ("allow", "expected"),
    [("true", 0), ("1", 0), ("false", EXIT_CONFIG), ("", EXIT_CONFIG), ("maybe", EXIT_CONFIG)],
)
async def test_the_opt_in_is_explicit(tokens: Tokens, allow: str, expected: int) -> None:
    env = clean_env(
        **base(tokens), REGISTRY_PROXY_HOST="0.0.0.0", REGISTRY_PROXY_ALLOW_NON_LOOPBACK=allow
    )
    rc, out, err = await run_cli("config", "check", env=env)
    assert rc == expected, (allow, out, err)
    if expected:
        assert len((out + err).strip().splitlines()) == 1, (out, err)


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


async def test_serve_refuses_non_loopback_before_listening(
    tokens: Tokens, pg_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        **base(tokens, pg_dsn),
        REGISTRY_PROXY_PORT=str(port),
        REGISTRY_PROXY_JOURNAL__DIR=str(tmp_path / "journal"),
    )
    results = await asyncio.gather(
        run_cli("serve", env={**env, "REGISTRY_PROXY_HOST": "0.0.0.0"}),
        run_cli("serve", env={**env, "REGISTRY_PROXY_HOST": "::"}),
        run_cli("serve", "--host", "0.0.0.0", env=env),
        run_cli("serve", "--host", "192.168.1.10", env=env),
    )
    for (rc, out, err), how in zip(results, ("env", "env v6", "--host", "--host ip"), strict=True):
        assert_one_line_refusal(rc, out, err, how)
    assert not _listening(port)
    assert not (tmp_path / "journal").exists(), "serve prepared a journal it was refused"


async def test_the_same_environment_on_loopback_serves(
    tokens: Tokens, pg_dsn: str, tmp_path: Path
) -> None:
    """The control for the refusals above: only the host made them fail."""
    sidecar = SidecarProcess(
        dsn=pg_dsn,
        tokens_json=tokens.spec(),
        journal_dir=tmp_path / "journal",
        log_path=tmp_path / "sidecar.log",
        env={"REGISTRY_PROXY_HOST": "127.0.0.1"},
    )
    sidecar.start()
    try:
        await sidecar.wait_healthy()
        assert _listening(sidecar.port)
    finally:
        sidecar.stop()
