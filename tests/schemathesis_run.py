"""Schemathesis against a live sidecar: `python -m tests.schemathesis_run [st run options]`.

Starts a throwaway PostgreSQL (or uses REGISTRY_PROXY_TEST_DATABASE_URL), serves the sidecar as
`registry-proxy serve` does, with an admin token of a tenant of its own, and runs `st run`
against its `/openapi.json` with every check (`tests/schemathesis.toml` says which answers are
not failures, and `tests/schemathesis_hooks.py` what is adjusted before a request is sent).
Options after the command go to `st run` and override the defaults below. The exit code is
schemathesis's, or 1 when the sidecar logged a traceback.

The admin role may call every route, so every operation of the document is exercised. The
breaker's admin route has a pass of its own, last: a generated `forced_open` in the middle would
turn the rest of the run into an outage test, which the chaos suite does on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from proxy.store.embedded import EmbeddedPostgres
from tests.sidecar import SidecarProcess

CONFIG = Path(__file__).with_name("schemathesis.toml")
REPO = Path(__file__).resolve().parent.parent
DEFAULTS = [
    "--checks",
    "all",
    "--max-examples",
    "200",
    "--workers",
    "2",
    "--request-timeout",
    "10",
    "--generation-database",
    "none",
    "--warnings",
    "off",
]
PASSES = (
    ["--exclude-operation-id", "admin_breaker"],
    ["--include-operation-id", "admin_breaker"],
)


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("REGISTRY_PROXY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn


@contextlib.contextmanager
def live_sidecar(dsn: str, token: str, workdir: Path) -> Iterator[SidecarProcess]:
    # A tenant of its own, so runs against a shared database never see each other's agents.
    tenant = f"st-{uuid.uuid4().hex[:12]}"
    spec = [{"token": token, "tenant": tenant, "role": "admin", "id": "schemathesis"}]
    sidecar = SidecarProcess(
        dsn=dsn,
        tokens_json=orjson.dumps(spec).decode(),
        journal_dir=workdir / "journal",
        log_path=workdir / "sidecar.log",
        env={"REGISTRY_PROXY_LOG__LEVEL": "warning"},
    )
    sidecar.start()
    try:
        asyncio.run(sidecar.wait_ready(60))
        yield sidecar
    finally:
        sidecar.stop()


def st_command(url: str, extra: list[str]) -> list[str]:
    st = Path(sys.executable).with_name("st")
    return [str(st), "--config-file", str(CONFIG), "run", f"{url}/openapi.json", *DEFAULTS, *extra]


def main(argv: list[str]) -> int:
    token = "st-" + secrets.token_urlsafe(24)
    env = {**os.environ, "SCHEMATHESIS_TOKEN": token}
    with tempfile.TemporaryDirectory(prefix="registry-proxy-st-") as tmp:
        workdir = Path(tmp)
        with database() as dsn, live_sidecar(dsn, token, workdir) as sidecar:
            print(f"sidecar at {sidecar.url}", flush=True)
            code = 0
            for selection in PASSES:
                command = st_command(sidecar.url, [*selection, *argv])
                result = subprocess.call(command, cwd=REPO, env=env)  # noqa: S603
                code = code or result
            log = sidecar.log_path.read_text(errors="replace")
            if "Traceback" in log:
                print("the sidecar logged a traceback:\n" + log[-20_000:], file=sys.stderr)
                code = code or 1
            return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
