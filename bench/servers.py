"""The servers under test, each in a process of its own: the sidecar and the baselines.

A server never shares an event loop (or a process) with the load generator or the harness, so
what is measured is the server's own cost; its output goes to a log file the harness reads back
for errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.client import http
from bench.dataset import BASELINE_WRITE_TENANT, READ_TENANT, WRITE_TENANT

if TYPE_CHECKING:
    from proxy.store.embedded import EmbeddedPostgres

HOST = "127.0.0.1"


# Ports handed out in this process: one not bound yet is free to the kernel, which may hand it
# out again, and two servers on one port answer for each other.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass(frozen=True)
class Tokens:
    """One writer token per tenant (a writer may also read)."""

    read_tenant: str
    write_tenant: str

    @classmethod
    def new(cls) -> Tokens:
        return cls("bench-" + secrets.token_hex(16), "bench-w-" + secrets.token_hex(16))

    def spec(self) -> str:
        """The value of REGISTRY_PROXY_TOKENS."""
        return orjson.dumps(self.entries()).decode()

    def entries(self) -> list[dict[str, str]]:
        """The token list; a subclass adds its own tokens to it."""
        return [
            {"token": self.read_tenant, "tenant": READ_TENANT, "role": "writer", "id": "bench"},
            {"token": self.write_tenant, "tenant": WRITE_TENANT, "role": "writer", "id": "bench-w"},
        ]


@dataclass(frozen=True)
class AdminTokens(Tokens):
    """The bench's writer tokens, and an admin token of the same tenant for `/v1/status`: only an
    admin sees the whole document (the replay counters among it)."""

    admin: str = ""

    @classmethod
    def new(cls) -> AdminTokens:
        base = Tokens.new()
        return cls(base.read_tenant, base.write_tenant, "bench-admin-" + secrets.token_hex(16))

    def entries(self) -> list[dict[str, str]]:
        admin = {"token": self.admin, "tenant": READ_TENANT, "role": "admin", "id": "ops"}
        return [*super().entries(), admin]


class Server:
    """One server under test in its own process; output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, env: dict[str, str]):
        self.name = name
        self.cmd = cmd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0
        self._rebinds = 3

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def error_lines(self, limit: int = 10) -> dict[str, Any]:
        """Log lines at level error (the sidecar logs JSON lines): how many, and the first few
        (time, route, event and the end of the traceback, where the cause is)."""
        count, first = 0, list[dict[str, Any]]()
        try:
            with self.log_path.open("rb") as f:
                for line in f:
                    if b'"level":"error"' not in line and b'"level": "error"' not in line:
                        continue
                    count += 1
                    if len(first) >= limit:
                        continue
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        first.append({"line": line.decode(errors="replace")[-800:]})
                        continue
                    first.append(
                        {
                            "timestamp": rec.get("timestamp"),
                            "route": rec.get("route"),
                            "event": rec.get("event"),
                            "exception_tail": str(rec.get("exception", ""))[-800:],
                        }
                    )
        except OSError:
            pass
        return {"count": count, "first": first}

    async def wait_until(self, path: str, timeout_s: float, token: str | None = None) -> None:
        """Until `path` answers 200 (bounded by `timeout_s`)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self.alive():
                if self._lost_its_port():
                    self._rebind()
                    continue
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                status, _ = await http(self.url + path, token=token, timeout_s=2.0)
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not answering {path} in {timeout_s}s:\n{self.log_tail()}")

    def _lost_its_port(self) -> bool:
        """Whether the process exited because something else bound its port first: `free_port`
        hands out a port that is free when asked, and a busy machine can take it before the
        server binds it."""
        if self._rebinds <= 0:
            return False
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_from)
                return b"address already in use" in f.read()
        except OSError:
            return False

    def _rebind(self) -> None:
        """Start again on another free port (the port is a whole argument or a *PORT variable)."""
        self._rebinds -= 1
        old, new = str(self.port), str(free_port())
        self.cmd = [new if arg == old else arg for arg in self.cmd]
        self.env = {k: new if v == old and k.endswith("PORT") else v for k, v in self.env.items()}
        self.port = int(new)
        self.url = f"http://{HOST}:{new}"
        self.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def sidecar(
    name: str,
    *,
    dsn: str,
    tokens: Tokens,
    workdir: Path,
    read_mode: str = "database",
    extra_env: dict[str, str] | None = None,
) -> Server:
    """The sidecar as in production (`registry-proxy serve`), with these bench settings:

    - the per-token rate limit stays in the request path but cannot refuse (1e6/s): one token
      sends the whole load;
    - max_agents is raised: the write workloads register tens of thousands of agents;
    - logs at the default level `info`, as JSON lines, to a file; with the default `log.access`
      off, only requests answered with an error get a line (set
      REGISTRY_PROXY_LOG__ACCESS=true in the environment to measure a line per request).
    """
    port = free_port()
    journal = workdir / f"{name}-journal"
    env = {
        **os.environ,
        "REGISTRY_PROXY_DATABASE_URL": dsn,
        "REGISTRY_PROXY_TOKENS": tokens.spec(),
        "REGISTRY_PROXY_HOST": HOST,
        "REGISTRY_PROXY_PORT": str(port),
        "REGISTRY_PROXY_JOURNAL__DIR": str(journal),
        "REGISTRY_PROXY_READ_MODE": read_mode,
        "REGISTRY_PROXY_RATE_LIMIT__RATE_PER_S": "1000000",
        "REGISTRY_PROXY_RATE_LIMIT__BURST": "1000000",
        "REGISTRY_PROXY_MAX_AGENTS": "1000000",
        "REGISTRY_PROXY_LOG__FORMAT": "json",
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "proxy", "serve"]
    return Server(name, cmd, port, workdir / f"{name}.log", env)


def baseline(
    name: str,
    kind: str,
    *,
    workdir: Path,
    dsn: str | None = None,
    writes: str = "one",
    tenant: str = READ_TENANT,
    extra_cpu_us: float = 0.0,
) -> Server:
    """A baseline of `bench.baselines`; for asyncpg, `writes` picks its write handlers (the
    effect alone, or the sidecar's rows too), `tenant` the tenant it reads and `extra_cpu_us`
    the CPU each write spends besides its own work."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.baselines", kind, "--port", str(port)]
    if dsn is not None:
        cmd += ["--dsn", dsn, "--tenant", tenant, "--write-tenant", BASELINE_WRITE_TENANT]
        cmd += ["--writes", writes]
        if extra_cpu_us:
            cmd += ["--extra-cpu-us", str(extra_cpu_us)]
    return Server(name, cmd, port, workdir / f"{name}.log", dict(os.environ))


MEMORY_FS = Path("/dev/shm")


def postgres_root(workdir: Path, *, in_memory: bool) -> tuple[Path, str]:
    """Where the benchmark's PostgreSQL keeps its files, and the word the result file records.

    In memory (tmpfs) when the machine has one: on a shared VM the disk's writeback throttles
    PostgreSQL's writes now and then (relation extension waits of 50 ms were measured), a stall
    that lands in the p99 of whichever target is measured at the time and says nothing about it.
    Every target shares that PostgreSQL, so the ratios compare the same database either way.
    """
    if in_memory and MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="registry-proxy-bench-pg-", dir=MEMORY_FS)), "memory"
    return workdir / "pg", "disk"


@contextlib.asynccontextmanager
async def embedded_postgres(
    kind: str, *, in_memory: bool = True
) -> AsyncIterator[tuple[Path, EmbeddedPostgres, str]]:
    """A work folder and a started PostgreSQL for a run of `kind`, and where its files are (the
    word of `postgres_root`); afterwards PostgreSQL is stopped and both folders are gone."""
    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix=f"registry-proxy-{kind}-"))
    pg_root, storage = postgres_root(workdir, in_memory=in_memory)
    pg = EmbeddedPostgres(root=pg_root)
    try:
        await asyncio.to_thread(pg.start)
        yield workdir, pg, storage
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)
