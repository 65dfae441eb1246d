"""Load generator: open-loop at a fixed rate, or closed-loop saturation with N connections.

It runs in processes of its own (``python -m bench.loadgen``), never on the event loop of a
server under test. The machine has two cores shared by the server, PostgreSQL and this generator,
so the generator is kept as cheap as it can be:

- a minimal HTTP/1.1 keep-alive client on an ``asyncio.Protocol`` (no aiohttp client: its
  per-request cost is several times that of parsing a status line and a Content-Length);
- request bytes are prebuilt where the request does not change (GET paths, performance posts);
- uvloop when it is installed;
- for saturation, several generator processes can share the connections, and ``wrk`` (C, from the
  Debian package) is used instead when it is on PATH.

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
import collections
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

# ---- what to send ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of request, sent to any target (the baselines serve the same paths).

    body: ``None`` (no body), ``"register"`` (a new agent id per request) or ``"performance"``
    (one task outcome; the server generates the event id).
    """

    name: str
    method: str
    paths: list[str]
    body: str | None = None
    token: str | None = None
    expect: tuple[int, ...] = (200,)
    id_prefix: str = "agent"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        data = dict(data)
        data["expect"] = tuple(data.get("expect", (200,)))
        return cls(**data)


_PERFORMANCE_BODY = orjson.dumps({"success": True, "quality_score": 0.87, "latency_ms": 1250.0})


def register_body(agent_id: str) -> bytes:
    return orjson.dumps(
        {
            "agent_id": agent_id,
            "name": f"Bench agent {agent_id}",
            "model_family": "gpt",
            "capabilities": {
                "task_types": ["code", "review"],
                "languages": ["python", "go"],
                "specializations": ["backend"],
            },
            "max_concurrent_tasks": 8,
        }
    )


def request_builder(w: Workload, host: str, unique: str) -> Callable[[int], bytes]:
    """A function of the request number giving the bytes of that request."""
    auth = f"Authorization: Bearer {w.token}\r\n" if w.token else ""
    head = f"Host: {host}\r\n{auth}"
    if w.body is None:
        fixed = [f"{w.method} {p} HTTP/1.1\r\n{head}\r\n".encode() for p in w.paths]
        n = len(fixed)
        return lambda i: fixed[i % n]
    if w.body == "performance":
        body = _PERFORMANCE_BODY
        pre = [
            f"{w.method} {p} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
            for p in w.paths
        ]
        n = len(pre)
        return lambda i: pre[i % n]
    if w.body == "register":
        path = w.paths[0]
        prefix = f"{w.method} {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"

        def build(i: int) -> bytes:
            body = register_body(f"{w.id_prefix}-{unique}-{i}")
            return f"{prefix}Content-Length: {len(body)}\r\n\r\n".encode() + body

        return build
    raise ValueError(f"unknown body kind {w.body!r}")


# ---- a minimal HTTP/1.1 client ----------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time; reads status and Content-Length only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                elif b"\r\ntransfer-encoding:" in head:
                    self._fail(ConnectionError("chunked answers are not supported"))
                    return
                else:
                    length = 0
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self.status)
            if not buf:
                return

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed by the server"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self.loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.waiter = fut
        self.transport.write(data)
        return fut

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Client:
    """A connection that reopens itself after the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn: _Conn | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Conn(loop), self.host, self.port)
        self.conn = proto

    async def request(self, data: bytes) -> int:
        if self.conn is None or self.conn.closed:
            await self.connect()
        assert self.conn is not None
        return await self.conn.send(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one generator process saw inside the measurement window."""

    latencies_us: list[int] = field(default_factory=list)
    # Open loop: how late after its intended time each request left (timer granularity, a busy
    # generator, or no free connection). Included in the latency, reported to be seen.
    send_lag_us: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    unfinished: int = 0
    scheduled: int = 0
    window_s: float = 0.0
    # Every answer, warm-up included: the denominator of the server's CPU time per request.
    answered_total: int = 0
    # Open loop: from the first measured intended time to the last measured answer.
    span_s: float = 0.0

    def status(self, code: int) -> None:
        key = str(code)
        self.statuses[key] = self.statuses.get(key, 0) + 1


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile of values already sorted; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(tallies: list[Tally], expect: tuple[int, ...], mode: str) -> dict[str, Any]:
    lat: list[int] = sorted(v for t in tallies for v in t.latencies_us)
    statuses: dict[str, int] = {}
    for t in tallies:
        for k, v in t.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    ok = sum(v for k, v in statuses.items() if int(k) in expect)
    answered = sum(statuses.values())
    errors = sum(t.errors for t in tallies)
    unfinished = sum(t.unfinished for t in tallies)
    window = max((t.window_s for t in tallies), default=0.0)
    out: dict[str, Any] = {
        "mode": mode,
        "tool": "python",
        "window_s": round(window, 3),
        "answered": answered,
        "answered_total": sum(t.answered_total for t in tallies),
        "ok": ok,
        "unexpected_status": answered - ok,
        "errors": errors,
        "unfinished": unfinished,
        "statuses": dict(sorted(statuses.items())),
        "throughput_rps": round(ok / window, 1) if window > 0 else 0.0,
        "latency_ms": {f"p{p:g}": round(percentile(lat, p) / 1000.0, 3) for p in PERCENTILES}
        | {
            "mean": round(sum(lat) / len(lat) / 1000.0, 3) if lat else 0.0,
            "max": round(lat[-1] / 1000.0, 3) if lat else 0.0,
        },
    }
    if mode == "open":
        lag = sorted(v for t in tallies for v in t.send_lag_us)
        out["send_lag_ms"] = {
            f"p{p:g}": round(percentile(lag, p) / 1000.0, 3) for p in (50.0, 99.0)
        }
        scheduled = sum(t.scheduled for t in tallies)
        span = max((t.span_s for t in tallies), default=0.0)
        out["scheduled"] = scheduled
        out["answer_span_s"] = round(span, 3)
        out["achieved_rps"] = round(answered / span, 1) if span > 0 else 0.0
        # The server did not keep up with the rate: half the requests waited for one of the
        # connections, or the answers came in well after the window, or some never came.
        out["overloaded"] = bool(
            unfinished
            or errors
            or answered < 0.98 * scheduled
            or out["send_lag_ms"]["p50"] > 10.0
            or span > window * 1.05 + 0.1
        )
    return out


# ---- the two modes (one process) -------------------------------------------------------------


async def _open_connections(host: str, port: int, n: int, deadline: float) -> list[Client]:
    clients = [Client(host, port) for _ in range(n)]
    for c in clients:
        if time.monotonic() > deadline:
            raise TimeoutError("could not open the connections in time")
        await c.connect()
    return clients


async def closed_loop(
    host: str,
    port: int,
    build: Callable[[int], bytes],
    *,
    connections: int,
    warmup_s: float,
    duration_s: float,
    start_at: float | None,
) -> Tally:
    clients = await _open_connections(host, port, connections, time.monotonic() + 30)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    tally = Tally()
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    end = measure_from + duration_s
    counter = iter(range(1 << 62))
    lat = tally.latencies_us

    async def worker(client: Client) -> None:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            try:
                status = await client.request(build(next(counter)))
            except (ConnectionError, OSError):
                if started >= measure_from:
                    tally.errors += 1
                await asyncio.sleep(0.01)
                continue
            done = time.perf_counter()
            tally.answered_total += 1
            if measure_from <= done < end:
                lat.append(int((done - started) * 1e6))
                tally.status(status)

    tasks = [asyncio.create_task(worker(c)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + 10.0)
    for t in pending:
        t.cancel()
    tally.unfinished = len(pending)
    tally.window_s = duration_s
    for c in clients:
        c.close()
    return tally


async def open_loop(
    host: str,
    port: int,
    build: Callable[[int], bytes],
    *,
    rate: float,
    connections: int,
    warmup_s: float,
    duration_s: float,
    drain_s: float = 5.0,
    start_at: float | None = None,
) -> Tally:
    clients = await _open_connections(host, port, connections, time.monotonic() + 30)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    tally = Tally()
    interval = 1.0 / rate
    total = int(rate * (warmup_s + duration_s))
    measured_first = int(rate * warmup_s)
    queue: collections.deque[tuple[int, float]] = collections.deque()
    wake: asyncio.Queue[None] = asyncio.Queue()
    lat = tally.latencies_us
    lag = tally.send_lag_us
    t0 = time.perf_counter() + 0.005
    finished = asyncio.Event()
    last_done = 0.0

    async def worker(client: Client) -> None:
        nonlocal last_done
        while True:
            if not queue:
                if finished.is_set():
                    return
                await wake.get()
                continue
            i, due = queue.popleft()
            sent = time.perf_counter()
            try:
                status = await client.request(build(i))
            except (ConnectionError, OSError):
                if i >= measured_first:
                    tally.errors += 1
                continue
            tally.answered_total += 1
            if i >= measured_first:
                done = time.perf_counter()
                lat.append(int((done - due) * 1e6))
                lag.append(int((sent - due) * 1e6))
                tally.status(status)
                last_done = max(last_done, done)

    tasks = [asyncio.create_task(worker(c)) for c in clients]
    i = 0
    while i < total:
        now = time.perf_counter()
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < total and t0 + i * interval <= now:
            queue.append((i, t0 + i * interval))
            wake.put_nowait(None)
            i += 1
    finished.set()
    for _ in tasks:
        wake.put_nowait(None)
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for t in pending:
        t.cancel()
    tally.unfinished = len(queue) + len(pending)
    tally.scheduled = total - measured_first
    tally.window_s = duration_s
    tally.span_s = max(0.0, last_done - (t0 + measured_first * interval))
    for c in clients:
        c.close()
    return tally


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
    build = request_builder(w, f"{host}:{port}", spec["unique"])
    run = _event_loop_runner()
    if spec["mode"] == "closed":
        tally = run(
            closed_loop(
                host,
                port,
                build,
                connections=spec["connections"],
                warmup_s=spec["warmup_s"],
                duration_s=spec["duration_s"],
                start_at=spec.get("start_at"),
            )
        )
    else:
        tally = run(
            open_loop(
                host,
                port,
                build,
                rate=spec["rate"],
                connections=spec["connections"],
                warmup_s=spec["warmup_s"],
                duration_s=spec["duration_s"],
                start_at=spec.get("start_at"),
            )
        )
    Path(args.out).write_bytes(orjson.dumps(asdict(tally)))
    return 0


def _run_workers(specs: list[dict[str, Any]], timeout_s: float) -> list[Tally]:
    """One generator process per spec, all at once; their tallies."""
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        for n, spec in enumerate(specs):
            spec_path = Path(tmp) / f"spec-{n}.json"
            out_path = Path(tmp) / f"out-{n}.json"
            spec_path.write_bytes(orjson.dumps(spec))
            cmd = [sys.executable, "-m", "bench.loadgen", "worker", str(spec_path), str(out_path)]
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
) -> dict[str, Any]:
    """Closed-loop throughput with `connections` in total: wrk when found, else Python."""
    wrk = shutil.which("wrk") if use_wrk is not False else None
    if wrk is not None and duration_s >= 1:
        return _wrk(wrk, w, host, port, connections, warmup_s, duration_s, processes, unique)
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
                "connections": share,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "start_at": start_at if processes > 1 else None,
            }
        )
    tallies = _run_workers(specs, timeout_s=warmup_s + duration_s + 60)
    out = summarize(tallies, w.expect, "closed")
    out["connections"] = connections
    out["processes"] = processes
    return out


def fixed_rate(
    w: Workload,
    host: str,
    port: int,
    *,
    rate: float,
    connections: int,
    warmup_s: float,
    duration_s: float,
    unique: str = "u",
) -> dict[str, Any]:
    """Open-loop latency at `rate` requests per second, from one generator process."""
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
    tallies = _run_workers([spec], timeout_s=warmup_s + duration_s + 60)
    out = summarize(tallies, w.expect, "open")
    out["rate"] = rate
    out["connections"] = connections
    return out


# ---- wrk -------------------------------------------------------------------------------------


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk_script(w: Workload, unique: str) -> str:
    paths = ", ".join(_lua_string(p) for p in w.paths)
    headers = []
    if w.token:
        headers.append(f'["Authorization"] = {_lua_string("Bearer " + w.token)}')
    if w.body is not None:
        headers.append('["Content-Type"] = "application/json"')
    lines = [
        f"local paths = {{{paths}}}",
        f"local headers = {{{', '.join(headers)}}}",
        f"local method = {_lua_string(w.method)}",
        "local n = 0",
        "local counter = 1",
        # `tid` is a global of each thread's own Lua state, set from the main state.
        "function setup(thread)",
        "  thread:set('tid', counter)",
        "  counter = counter + 1",
        "end",
    ]
    if w.body == "register":
        parts = register_body("AGENTID").decode().split("AGENTID")
        lines += [
            f"local parts = {{{', '.join(_lua_string(p) for p in parts)}}}",
            "function request()",
            "  n = n + 1",
            f"  local id = {_lua_string(w.id_prefix + '-' + unique + '-t')} .. tid .. '-' .. n",
            "  return wrk.format(method, paths[1], headers, table.concat(parts, id))",
            "end",
        ]
    else:
        body = "nil" if w.body is None else _lua_string(_PERFORMANCE_BODY.decode())
        lines += [
            f"local body = {body}",
            "function request()",
            "  n = n + 1",
            "  return wrk.format(method, paths[(n % #paths) + 1], headers, body)",
            "end",
        ]
    return "\n".join(lines) + "\n"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_wrk(text: str, window_s: float) -> dict[str, Any]:
    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text, re.MULTILINE)
        return m.group(1) if m else None

    total = int(grab(r"^\s*(\d+) requests in") or 0)
    non2xx = int(grab(r"Non-2xx or 3xx responses: (\d+)") or 0)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    lat: dict[str, float] = {}
    for p in ("50", "90", "99"):
        v = grab(rf"^\s*{p}(?:\.000)?%\s+(\S+)")
        if v is not None:
            lat[f"p{p}"] = round(_wrk_ms(v), 3)
    mean = grab(r"^\s*Latency\s+(\S+)")
    if mean is not None:
        lat["mean"] = round(_wrk_ms(mean), 3)
    ok = total - non2xx
    return {
        "mode": "closed",
        "tool": "wrk",
        "window_s": window_s,
        "answered": total,
        "ok": ok,
        "unexpected_status": non2xx,
        "errors": errors,
        "unfinished": 0,
        "statuses": {"2xx": ok, "other": non2xx},
        "throughput_rps": round(ok / window_s, 1) if window_s > 0 else 0.0,
        "latency_ms": lat,
    }


def _wrk(
    wrk: str,
    w: Workload,
    host: str,
    port: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
    threads: int,
    unique: str,
) -> dict[str, Any]:
    threads = max(1, min(threads, connections))
    url = f"http://{host}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "script.lua"
        script.write_text(_wrk_script(w, unique))

        def run(seconds: int, tag: str) -> str:
            # A fresh id prefix per run, so registrations never collide with earlier ones.
            script.write_text(_wrk_script(w, f"{unique}{tag}"))
            cmd = [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
            return done.stdout

        warm_total = 0
        if warmup_s >= 0.5:
            warm_total = _parse_wrk(run(max(1, round(warmup_s)), "w"), 1.0)["answered"]
        seconds = max(1, round(duration_s))
        text = run(seconds, "m")
    out = _parse_wrk(text, float(seconds))
    out["answered_total"] = out["answered"] + warm_total
    # wrk counts every answer that is not 2xx/3xx as an error; a 202 is fine for writes.
    out["connections"] = connections
    out["processes"] = threads
    out["expect"] = list(w.expect)
    return out


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
        result = fixed_rate(
            w,
            host,
            port,
            rate=args.rate,
            connections=args.connections,
            warmup_s=args.warmup,
            duration_s=args.duration,
        )
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
