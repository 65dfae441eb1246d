"""Performance harness of the sidecar: ``python -m bench`` (benchmark), ``python -m bench.soak``.

This module holds what both share: the servers under test as child processes (the sidecar via
``python -m proxy serve``, the baselines via ``python -m bench.baselines``), the data set, and
small HTTP helpers. It imports only the standard library and orjson at module level, because
every load generator process (``python -m bench.loadgen``) imports this package first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
READ_TENANT = "bench"
WRITE_TENANT = "bench-w"
BASELINE_WRITE_TENANT = "bench-base"

TASK_TYPES = ("code", "review", "test", "docs", "data")
LANGUAGES = ("python", "go", "rust", "typescript", "java", "sql")
SPECIALIZATIONS = ("backend", "frontend", "ml", "security", "devops")

# The capability queries of the benchmark, cycled; each is a realistic "find me an agent" call.
QUERIES = (
    "/v1/agents?task_type=code&languages=python&limit=10",
    "/v1/agents?task_type=review&languages=go&max_utilization=0.8&limit=10",
    "/v1/agents?task_type=test&limit=10",
    "/v1/agents?task_type=data&languages=sql&specializations=ml&limit=5",
    "/v1/agents?task_type=docs&max_utilization=0.5&limit=10",
)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---- tokens ----------------------------------------------------------------------------------


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
        return orjson.dumps(
            [
                {"token": self.read_tenant, "tenant": READ_TENANT, "role": "writer", "id": "bench"},
                {
                    "token": self.write_tenant,
                    "tenant": WRITE_TENANT,
                    "role": "writer",
                    "id": "bench-w",
                },
            ]
        ).decode()


# ---- servers as child processes --------------------------------------------------------------


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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
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
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                status, _ = await http(self.url + path, token=token, timeout_s=2.0)
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not answering {path} in {timeout_s}s:\n{self.log_tail()}")

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


def baseline(name: str, kind: str, *, workdir: Path, dsn: str | None = None) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.baselines", kind, "--port", str(port)]
    if dsn is not None:
        cmd += ["--dsn", dsn, "--tenant", READ_TENANT, "--write-tenant", BASELINE_WRITE_TENANT]
    return Server(name, cmd, port, workdir / f"{name}.log", dict(os.environ))


# ---- HTTP helpers (aiohttp, imported lazily: load generators never need it) ------------------


async def http(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    session: Any = None,
) -> tuple[int, Any]:
    """One request; (status, decoded JSON body or text or None). Raises OSError on no answer."""
    import aiohttp

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.request(
            method,
            url,
            data=orjson.dumps(body) if body is not None else None,
            headers={**h, "Content-Type": "application/json"} if body is not None else h,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            if raw and "json" in ctype:
                return r.status, orjson.loads(raw)
            return r.status, raw.decode(errors="replace") if raw else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OSError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            await s.close()


async def bounded_gather(
    jobs: list[Callable[[], Awaitable[Any]]], concurrency: int, timeout_s: float
) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    async with asyncio.timeout(timeout_s):
        return await asyncio.gather(*(one(j) for j in jobs))


def agent_body(agent_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "name": f"Agent {agent_id}",
        "model_family": rng.choice(("gpt", "claude", "llama", "mistral")),
        "capabilities": {
            "task_types": rng.sample(TASK_TYPES, rng.randint(1, 3)),
            "languages": rng.sample(LANGUAGES, rng.randint(1, 3)),
            "specializations": rng.sample(SPECIALIZATIONS, rng.randint(0, 2)),
        },
        "max_concurrent_tasks": rng.choice((4, 8, 10, 16)),
    }


def agent_ids(n: int) -> list[str]:
    return [f"agent-{i:05d}" for i in range(n)]


async def seed(url: str, token: str, n: int, *, seed_value: int = 42) -> list[str]:
    """Register `n` agents with varied capabilities, load and a performance record."""
    import aiohttp

    rng = random.Random(seed_value)
    ids = agent_ids(n)
    bodies = [agent_body(a, rng) for a in ids]
    loads = [
        {
            "active_tasks": rng.randint(0, b["max_concurrent_tasks"]),
            "queued_tasks": rng.randint(0, 3),
            "observed_at": datetime.now(UTC).isoformat(),
        }
        for b in bodies
    ]
    outcomes = [
        {
            "event_id": f"seed-{a}",
            "success": rng.random() < 0.85,
            "quality_score": round(rng.uniform(0.5, 1.0), 3),
            "latency_ms": round(rng.uniform(200, 5000), 1),
        }
        for a in ids
    ]
    async with aiohttp.ClientSession() as s:

        def call(method: str, path: str, body: Any, ok: tuple[int, ...]) -> Any:
            async def job() -> None:
                status, answer = await http(
                    url + path, method=method, token=token, body=body, session=s, timeout_s=30
                )
                if status not in ok:
                    raise RuntimeError(f"seeding {method} {path}: {status} {answer}")

            return job

        await bounded_gather([call("POST", "/v1/agents", b, (201, 409)) for b in bodies], 16, 300)
        await bounded_gather(
            [
                call("PUT", f"/v1/agents/{a}/load", ld, (200,))
                for a, ld in zip(ids, loads, strict=True)
            ],
            16,
            300,
        )
        await bounded_gather(
            [
                call("POST", f"/v1/agents/{a}/performance", o, (200, 201))
                for a, o in zip(ids, outcomes, strict=True)
            ],
            16,
            300,
        )
    return ids


async def status_of(server: Server, token: str) -> dict[str, Any]:
    status, body = await http(server.url + "/v1/status", token=token)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"{server.name} /v1/status: {status} {body}")
    return body


_SAMPLE = re.compile(r"^registry_proxy_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def request_counts(server: Server, route: str) -> dict[str, float]:
    """The sidecar's own count of answers to `route`, by "status/source"."""
    status, text = await http(server.url + "/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    out: dict[str, float] = {}
    for labels, value in _SAMPLE.findall(text):
        lab = dict(_LABEL.findall(labels))
        if lab.get("route") == route:
            key = f"{lab.get('status')}/{lab.get('source')}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def diff_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    keys = sorted(set(before) | set(after))
    return {
        k: int(after.get(k, 0) - before.get(k, 0))
        for k in keys
        if after.get(k, 0) != before.get(k, 0)
    }


# ---- CPU time and affinity -------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (PostgreSQL: the postmaster and its backends)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds of each process."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts whole)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` (affinity is per thread on Linux)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


# ---- the machine -----------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    """A read-only git query about the checkout being measured (never touches the index)."""
    git = shutil.which("git")
    if git is None:
        return None
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            [git, "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (
            (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"
        )
    try:
        import uvloop

        uv: str | None = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        uv = None
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "uncommitted_product_changes": bool(_git("status", "--porcelain", "--", "proxy")),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk_version,
        "uvloop": uv,
    }
