"""Where the sidecar's CPU time goes under ``python -m bench --profile``: py-spy samples by layer.

Ratios against the baselines say how much the sidecar costs; the profile says what to look at
first. Samples are summed by function and by layer of the stack (driver, logging, metrics, HTTP
server, the sidecar's own packages).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.benchmark_steps import Bench
from bench.cpu import pin, process_tree
from bench.reporting import logger
from bench.servers import Server

_log = logger("bench")


def _py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


# Layers of the sidecar, to sum each sample's leaf-most known frame into: "what costs the most".
LAYERS: tuple[tuple[str, str], ...] = (
    ("asyncpg/", "asyncpg driver (query, pool, reset)"),
    ("structlog/", "structlog access log line"),
    ("prometheus_client/", "prometheus metrics"),
    ("asyncio/timeouts.py", "asyncio.timeout"),
    ("random.py", "random.Random() seeded per call"),
    ("uuid.py", "uuid4"),
    ("hashlib", "hashing"),
    ("proxy/resilience/", "resilience: breaker, retry, deadline"),
    ("proxy/store/db.py", "pool wrapper (Database.connection)"),
    ("proxy/store/replica.py", "replica lookup"),
    ("proxy/store/", "store: repository, journal, snapshot"),
    ("proxy/registry/", "domain: to_public, matching"),
    ("proxy/service/", "service: RegistryService"),
    ("proxy/http/direct.py", "direct answer: headers and socket write"),
    ("proxy/http/", "http: front door, middleware, auth, routes"),
    ("aiohttp/", "aiohttp server: parse, dispatch, respond, socket write"),
    ("yarl/", "aiohttp server: parse, dispatch, respond, socket write"),
    ("multidict/", "aiohttp server: parse, dispatch, respond, socket write"),
    ("asyncio/", "event loop and asyncio"),
    ("uvloop/", "event loop and asyncio"),
)


def _layer(frames: list[str]) -> str:
    for f in reversed(frames):
        for marker, name in LAYERS:
            if marker in f:
                return name
    return "other"


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive share of samples by function and by layer, from collapsed stacks."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        raw_frames = stack.split(";")
        layers[_layer(raw_frames)] += count
        frames = [_frame(f) for f in raw_frames]
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}

    def share(c: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(v / total, 4)} for f, v in c.most_common(n)]

    return {
        "samples": total,
        "by_layer": {k: round(v / total, 4) for k, v in layers.most_common()},
        "self": share(self_counts, top),
        "inclusive": share(incl, top),
    }


def _frame(f: str) -> str:
    """'fn (path/to/module.py:123)' -> 'fn (module.py)', so lines of one function add up."""
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/proxy/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/proxy/":
                path = "proxy/" + path
            break
    return f"{name} ({path})"


async def profile_sidecar(
    b: Bench, server: Server, name: str, out_dir: Path, workload: str = "get"
) -> dict[str, Any]:
    """Profile `server` under closed-loop `workload` (a workload of `bench.workload`)."""
    spy = _py_spy()
    if spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"profile-{name}.txt"
    seconds = max(2, round(b.plan.profile_s))
    cmd = [
        spy,
        "record",
        "--pid",
        str(server.pid),
        "--duration",
        str(seconds),
        "--rate",
        "200",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(raw_path),
    ]
    _log(f"profile: {name} with py-spy for {seconds}s under closed-loop {workload}")
    # Wall-clock sampling counts the time a thread waits for a CPU as time spent where it was
    # preempted (typically in the socket write that woke the load generator). The sidecar gets
    # core 1 to itself, and everything else (this process, so the generator and py-spy it starts,
    # and PostgreSQL) shares core 0, so the samples are the sidecar's own CPU time.
    all_cpus = os.sched_getaffinity(0)
    pinned = len(all_cpus) >= 2
    others = [os.getpid(), *(process_tree(b.pg_pid) if b.pg_pid else [])]
    if pinned:
        first, second = sorted(all_cpus)[:2]
        pin(server.pid, {second})
        for pid in others:
            pin(pid, {first})
    try:
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await asyncio.sleep(0.5)
        summary = await _profile_run(b, server, name, workload, spy_proc, raw_path, seconds, pinned)
        summary["workload"] = workload
        return summary
    finally:
        if pinned:
            for pid in [server.pid, *others]:
                pin(pid, all_cpus)


async def _profile_run(
    b: Bench,
    server: Server,
    name: str,
    workload: str,
    spy_proc: subprocess.Popen[bytes],
    raw_path: Path,
    seconds: int,
    pinned: bool,
) -> dict[str, Any]:
    w = b.workload(workload, name)
    load = await asyncio.to_thread(
        loadgen.saturate,
        w,
        "127.0.0.1",
        server.port,
        connections=b.plan.connections,
        warmup_s=0.0,
        duration_s=float(seconds),
        processes=b.plan.processes,
        use_wrk=None if b.plan.use_wrk else False,
        unique="prof",
    )
    try:
        _, err = await asyncio.to_thread(spy_proc.communicate, None, seconds + 30)
    except subprocess.TimeoutExpired:
        spy_proc.kill()
        return {"skipped": "py-spy did not finish"}
    if spy_proc.returncode != 0 or not raw_path.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    summary = summarize_profile(raw_path.read_text())
    summary["raw"] = str(raw_path)
    summary["pinned"] = "sidecar alone on one core, the rest on the other" if pinned else "no"
    summary["throughput_under_profiler_rps"] = load["throughput_rps"]
    return summary
