"""Load generator: open-loop at a fixed rate, or closed-loop saturation with N connections.

It runs in processes of its own (``python -m bench.loadgen``), never on the event loop of a
server under test. The machine has two cores shared by the server, PostgreSQL and this generator,
so the generator is kept as cheap as it can be:

- a minimal HTTP/1.1 keep-alive client on an ``asyncio.Protocol`` (no aiohttp client: its
  per-request cost is several times that of parsing a status line and a Content-Length);
- request bytes are prebuilt where the request does not change (GET paths, performance posts);
- uvloop when it is installed;
- for saturation, several generator processes can share the connections, and ``wrk`` (C, from the
  Debian package) is used instead when it is on PATH or beside the interpreter.

Open-loop: request ``i`` is *intended* at ``t0 + i / rate`` whether or not earlier requests have
finished, and its latency runs from that intended time to the last byte of the answer. A slow
answer therefore shows up in the latency of every request that had to wait behind it (no
coordinated omission). Requests wait in a FIFO for a free connection; the pool is large enough
that at the target rate the wait is only ever caused by the server.

Closed-loop: every connection sends its next request as soon as the previous answer is in; the
throughput counted is the answers completed inside the measurement window.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench.collector import collector_paused
from bench.loadgen_loops import closed_loop, open_loop
from bench.loadgen_wrk import find_wrk, on_cpus, run_wrk
from bench.tally import Tally, summarize
from bench.workload import Workload, request_builder

# The docstring above is the command line's help. This module starts the generator processes and
# gathers their tallies; what runs inside one is in loadgen_loops (on loadgen_http's client), and
# wrk in loadgen_wrk.

# ---- processes -------------------------------------------------------------------------------


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def _worker_main(args: argparse.Namespace) -> int:
    spec = orjson.loads(Path(args.spec).read_bytes())
    w = Workload.from_json(spec["workload"])
    host, port = spec["host"], int(spec["port"])
    base_build = request_builder(w, f"{host}:{port}", spec["unique"])
    # Processes start their walk over the paths at their own share of them (see loadgen_wrk).
    offset = int(spec.get("offset", 0))

    def build(i: int) -> bytes:
        return base_build(i + offset)

    run = _event_loop_runner()
    common: dict[str, Any] = {
        "connections": spec["connections"],
        "warmup_s": spec["warmup_s"],
        "duration_s": spec["duration_s"],
        "start_at": spec.get("start_at"),
    }
    if spec["mode"] == "closed":
        loop = closed_loop(host, port, build, **common)
    else:
        loop = open_loop(host, port, build, rate=spec["rate"], **common)
    with collector_paused():
        tally = run(loop)
    Path(args.out).write_bytes(orjson.dumps(asdict(tally)))
    return 0


def _run_workers(
    specs: list[dict[str, Any]], timeout_s: float, cpus: set[int] | None = None
) -> list[Tally]:
    """One generator process per spec, all at once (on `cpus` if given); their tallies."""
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        for n, spec in enumerate(specs):
            spec_path = Path(tmp) / f"spec-{n}.json"
            out_path = Path(tmp) / f"out-{n}.json"
            spec_path.write_bytes(orjson.dumps(spec))
            cmd = on_cpus(
                [sys.executable, "-m", "bench.loadgen", "worker", str(spec_path), str(out_path)],
                cpus,
            )
            procs.append((subprocess.Popen(cmd), out_path))
        tallies: list[Tally] = []
        deadline = time.monotonic() + timeout_s
        for proc, out_path in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.returncode != 0 or not out_path.exists():
                raise RuntimeError(f"load generator process failed (exit {proc.returncode})")
            tallies.append(Tally(**orjson.loads(out_path.read_bytes())))
        return tallies


def saturate(
    w: Workload,
    host: str,
    port: int,
    *,
    connections: int,
    warmup_s: float,
    duration_s: float,
    processes: int = 1,
    use_wrk: bool | None = None,
    unique: str = "u",
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """Closed-loop throughput with `connections` in total: wrk when found, else Python; the
    generator confined to `cpus` when given."""
    wrk = find_wrk() if use_wrk is not False else None
    if wrk is not None and duration_s >= 1:
        return run_wrk(
            wrk, w, host, port, connections, warmup_s, duration_s, processes, unique, cpus
        )
    processes = max(1, min(processes, connections))
    start_at = time.time() + 0.4 + 0.15 * processes
    specs = []
    for n in range(processes):
        share = connections // processes + (1 if n < connections % processes else 0)
        specs.append(
            {
                "mode": "closed",
                "workload": w.to_json(),
                "host": host,
                "port": port,
                "unique": f"{unique}p{n}",
                "offset": n * (len(w.paths) // processes),
                "connections": share,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "start_at": start_at if processes > 1 else None,
            }
        )
    tallies = _run_workers(specs, timeout_s=warmup_s + duration_s + 60, cpus=cpus)
    out = summarize(tallies, w.expect, "closed")
    out["connections"] = connections
    out["processes"] = processes
    return out


def open_summary(
    tallies: list[Tally], w: Workload, *, rate: float, connections: int
) -> dict[str, Any]:
    """Open-loop latency at `rate` requests per second: one `fixed_rate_tallies` window."""
    out = summarize(tallies, w.expect, "open")
    out["rate"] = rate
    out["connections"] = connections
    return out


def fixed_rate_tallies(
    w: Workload,
    host: str,
    port: int,
    *,
    rate: float,
    connections: int,
    warmup_s: float,
    duration_s: float,
    unique: str = "u",
) -> list[Tally]:
    """One open-loop window at `rate` requests per second, from one generator process, as its
    tallies: `open_summary` summarizes it alone, `summarize_rounds` with other windows."""
    spec = {
        "mode": "open",
        "workload": w.to_json(),
        "host": host,
        "port": port,
        "unique": unique,
        "rate": rate,
        "connections": connections,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
    }
    return _run_workers([spec], timeout_s=warmup_s + duration_s + 60)


# ---- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    wp = sub.add_parser("worker", help="one generator process (used by the harness)")
    wp.add_argument("spec")
    wp.add_argument("out")
    rp = sub.add_parser("run", help="drive one URL by hand")
    rp.add_argument("url", help="e.g. http://127.0.0.1:3580/v1/agents/a1")
    rp.add_argument("--token")
    rp.add_argument("--mode", choices=("open", "closed"), default="closed")
    rp.add_argument("--rate", type=float, default=1000.0)
    rp.add_argument("--connections", type=int, default=32)
    rp.add_argument("--processes", type=int, default=1)
    rp.add_argument("--duration", type=float, default=5.0)
    rp.add_argument("--warmup", type=float, default=1.0)
    rp.add_argument("--no-wrk", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "worker":
        return _worker_main(args)
    m = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)?", args.url)
    if not m:
        parser.error("url must be http://HOST:PORT/PATH")
    host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"
    w = Workload(name="adhoc", method="GET", paths=[path], token=args.token)
    if args.mode == "closed":
        result = saturate(
            w,
            host,
            port,
            connections=args.connections,
            warmup_s=args.warmup,
            duration_s=args.duration,
            processes=args.processes,
            use_wrk=False if args.no_wrk else None,
        )
    else:
        tallies = fixed_rate_tallies(
            w,
            host,
            port,
            rate=args.rate,
            connections=args.connections,
            warmup_s=args.warmup,
            duration_s=args.duration,
        )
        result = open_summary(tallies, w, rate=args.rate, connections=args.connections)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
