"""Run the sidecar as a real process (`registry-proxy serve`), for restart and signal tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.store.embedded import free_port


class SidecarProcess:
    def __init__(
        self,
        *,
        dsn: str,
        tokens_json: str,
        journal_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "REGISTRY_PROXY_DATABASE_URL": dsn,
            "REGISTRY_PROXY_TOKENS": tokens_json,
            "REGISTRY_PROXY_PORT": str(self.port),
            "REGISTRY_PROXY_JOURNAL__DIR": str(journal_dir),
            "REGISTRY_PROXY_RATE_LIMIT__ENABLED": "false",
            "REGISTRY_PROXY_LOG__FORMAT": "json",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "proxy", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        async with aiohttp.ClientSession() as s:
            while loop.time() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"sidecar exited: {self.log()}")
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"sidecar not healthy in {timeout}s: {self.log()}")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        async with aiohttp.ClientSession() as s:
            while loop.time() < end:
                try:
                    async with s.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"sidecar not ready in {timeout}s: {self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with session.request(method, url, json=json, headers=h) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None), r.headers
