"""SIGHUP reloads REGISTRY_PROXY_TOKENS_FILE in a running sidecar without dropping a request.

A real `registry-proxy serve` process serves a steady load of reads and writes from tokens that
stay; meanwhile the file is rewritten (a token added, one removed, one demoted) and SIGHUP sent.
The new token works, the removed one gets 401, the demoted one 403 on writes, and no request of
the load fails (no connection error, no 5xx, no 401). A file that does not parse is not loaded:
the tokens in force stay. A `token_sha256` entry works like a plain one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Tokens, agent_body, eventually
from tests.security import sha256
from tests.sidecar import SidecarProcess, request


def write_atomically(path: Path, entries: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(entries if isinstance(entries, bytes) else orjson.dumps(entries))
    tmp.chmod(0o600)
    os.replace(tmp, path)


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.kill()


async def test_sighup_swaps_tokens_while_requests_are_in_flight(
    tokens: Tokens, pg_dsn: str, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    t = tokens.tenant
    old, new, flip, hashed = (f"{k}-{uuid.uuid4().hex}" for k in ("old", "new", "flip", "hashed"))
    stay = [
        {"token": tokens.reader, "tenant": t, "role": "reader", "id": "reader"},
        {"token": tokens.writer, "tenant": t, "role": "writer", "id": "writer"},
        {"token_sha256": sha256(hashed), "tenant": t, "role": "writer", "id": "hashed"},
    ]
    first = [
        *stay,
        {"token": old, "tenant": t, "role": "writer", "id": "old"},
        {"token": flip, "tenant": t, "role": "writer", "id": "flip"},
    ]
    second = [
        *stay,
        {"token": new, "tenant": t, "role": "writer", "id": "new"},
        {"token": flip, "tenant": t, "role": "reader", "id": "flip"},
    ]
    tokens_file = tmp_path / "tokens.json"
    write_atomically(tokens_file, first)
    sidecar = SidecarProcess(
        dsn=pg_dsn,
        tokens_json="",
        journal_dir=tmp_path / "journal",
        log_path=tmp_path / "sidecar.log",
        env={"REGISTRY_PROXY_TOKENS_FILE": str(tokens_file)},
    )
    del sidecar.env["REGISTRY_PROXY_TOKENS"]  # the variable would win over the file
    sidecars.append(sidecar)
    sidecar.start()
    await sidecar.wait_ready()
    url = sidecar.url

    async with aiohttp.ClientSession() as s:

        async def status_of(token: str, method: str = "GET", path: str = "/v1/stats") -> int:
            body = agent_body("r-" + uuid.uuid4().hex[:8]) if method == "POST" else None
            st, _, _ = await request(s, method, url + path, token, body)
            return st

        status, body, _ = await request(s, "POST", f"{url}/v1/agents", hashed, agent_body("hup"))
        assert status == 201, body
        assert await status_of(old) == 200
        assert await status_of(flip, "POST", "/v1/agents") == 201
        assert await status_of(new) == 401

        outcomes: list[Any] = []
        stop = asyncio.Event()

        async def load(token: str, method: str, path: str, body: Any) -> None:
            while not stop.is_set():
                try:
                    st, _, _ = await request(s, method, url + path, token, body)
                    outcomes.append(st)
                except (aiohttp.ClientError, OSError) as exc:
                    outcomes.append(exc)

        workers = [
            asyncio.create_task(load(tokens.reader, "GET", "/v1/agents/hup", None)),
            asyncio.create_task(load(tokens.reader, "GET", "/v1/agents?task_type=code", None)),
            asyncio.create_task(load(tokens.writer, "POST", "/v1/agents/hup/heartbeat", {})),
            asyncio.create_task(load(hashed, "GET", "/v1/stats", None)),
        ]
        try:
            await eventually(lambda: len(outcomes) >= 40, message="load running")
            write_atomically(tokens_file, second)
            sidecar.signal(signal.SIGHUP)

            async def new_works() -> bool:
                return await status_of(new) == 200

            await eventually(new_works, timeout=10, message="new token accepted")
            assert await status_of(old) == 401
            assert await status_of(flip) == 200
            assert await status_of(flip, "POST", "/v1/agents") == 403
            assert await status_of(hashed, "POST", "/v1/agents") == 201

            # More SIGHUPs under load, then one with a file that does not parse.
            for _ in range(3):
                sidecar.signal(signal.SIGHUP)
            write_atomically(tokens_file, b'[{"token": "' + old.encode() + b'", broken')
            sidecar.signal(signal.SIGHUP)
            await eventually(
                lambda: "tokens file not reloaded" in sidecar.log_path.read_text(),
                timeout=10,
                message="broken file refused",
            )
            count = len(outcomes)
            await eventually(lambda: len(outcomes) >= count + 40, message="load still served")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        assert await status_of(new) == 200
        assert await status_of(old) == 401
        failures = [o for o in outcomes if o != 200]
        assert not failures, failures[:10]
        assert len(outcomes) >= 80

    log = sidecar.log_path.read_text()
    assert log.count("SIGHUP: tokens reloaded") >= 1  # signals sent at once may coalesce
    for secret in (tokens.reader, tokens.writer, old, new, flip, hashed):
        assert secret not in log
    with contextlib.suppress(Exception):
        sidecar.stop()
