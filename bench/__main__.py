"""``python -m bench``: the sidecar against two baselines, measured in one run on this machine.

Starts an embedded PostgreSQL, two sidecars (``read_mode=database`` and ``read_mode=replica``)
and the two baselines (``bench.baselines``: bare aiohttp, direct asyncpg), each in its own
process, seeds 1,000 agents, then drives every target on loopback with the load generator
(``bench.loadgen``, or wrk for saturation when it is installed):

- ``get``: get by id, cycling over the seeded agents;
- ``query``: capability queries over the 1,000 agents (five query shapes, cycled);
- ``register``: a new agent per request;
- ``performance``: one task outcome per request, cycling over the seeded agents;
- ``down``: get by id on both sidecars after PostgreSQL was stopped and the breaker opened.

For each (workload, target): throughput at saturation (closed loop) and latency percentiles at a
fixed open-loop rate (1,000 req/s; capability queries also at 200 req/s). The machine is shared
and has two cores, so the figures that matter are the ratios against the baselines measured in the
same run. The result is one JSON file under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import loadgen
from bench.client import http
from bench.cpu import cpu_delta, cpu_snapshot, pin, process_tree
from bench.dataset import QUERIES, READ_TENANT, seed
from bench.metrics import diff_counts, request_counts
from bench.provenance import machine
from bench.servers import Server, Tokens, baseline, sidecar
from bench.status import status_of
from bench.workload import Workload

RESULTS = Path(__file__).resolve().parent / "results"
ALL_WORKLOADS = ("get", "query", "register", "performance", "down")
# The sidecar's route name of each workload, to read its own request counters.
ROUTE = {
    "get": "get_agent",
    "query": "query_agents",
    "register": "register",
    "performance": "post_performance",
    "down": "get_agent",
}


@dataclass(frozen=True)
class Plan:
    duration_s: float
    warmup_s: float
    rate: float
    query_rate: float
    connections: int
    open_connections: int
    processes: int
    rounds: int
    workloads: tuple[str, ...]
    agents: int
    use_wrk: bool
    out: Path
    profile_dir: Path | None
    profile_s: float
    settle_s: float
    keep: bool = False


@dataclass
class Targets:
    bare: Server
    asyncpg: Server
    db: Server
    replica: Server

    def by_name(self) -> dict[str, Server]:
        return {
            "bare": self.bare,
            "asyncpg": self.asyncpg,
            "sidecar-database": self.db,
            "sidecar-replica": self.replica,
        }


def _log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(
        self, plan: Plan, tokens: Tokens, targets: Targets, ids: list[str], pg_pid: int | None
    ) -> None:
        self.plan = plan
        self.tokens = tokens
        self.t = targets
        self.ids = ids
        self.pg_pid = pg_pid
        self.run_tag = datetime.now(UTC).strftime("%H%M%S")

    def workload(self, name: str, target: str) -> Workload:
        token = self.tokens.read_tenant
        if name in ("get", "down"):
            return Workload(name, "GET", [f"/v1/agents/{a}" for a in self.ids], token=token)
        if name == "query":
            return Workload(name, "GET", list(QUERIES), token=token)
        if name == "register":
            return Workload(
                name,
                "POST",
                ["/v1/agents"],
                body="register",
                token=self.tokens.write_tenant,
                expect=(201, 202),
                id_prefix=f"r{self.run_tag}{target[:3]}{target[-3:]}",
            )
        if name == "performance":
            return Workload(
                name,
                "POST",
                [f"/v1/agents/{a}/performance" for a in self.ids],
                body="performance",
                token=token,
                expect=(201, 202),
            )
        raise ValueError(name)

    async def _saturate(self, w: Workload, server: Server, unique: str) -> dict[str, Any]:
        p = self.plan
        return await asyncio.to_thread(
            loadgen.saturate,
            w,
            "127.0.0.1",
            server.port,
            connections=p.connections,
            warmup_s=p.warmup_s,
            duration_s=p.duration_s,
            processes=p.processes,
            use_wrk=None if p.use_wrk else False,
            unique=unique,
        )

    async def _open(self, w: Workload, server: Server, rate: float, unique: str) -> dict[str, Any]:
        p = self.plan
        return await asyncio.to_thread(
            loadgen.fixed_rate,
            w,
            "127.0.0.1",
            server.port,
            rate=rate,
            connections=p.open_connections,
            warmup_s=min(p.warmup_s, 1.0),
            duration_s=p.duration_s,
            unique=unique,
        )

    async def _counts(self, server: Server, route: str) -> dict[str, float]:
        if not server.name.startswith("sidecar"):
            return {}
        try:
            return await request_counts(server, route)
        except OSError:
            return {}

    async def measure(
        self, name: str, targets: list[str], rates: list[float], rounds: int
    ) -> dict[str, Any]:
        """Saturation (best of `rounds`, targets interleaved), then one open-loop run per rate."""
        servers = self.t.by_name()
        out: dict[str, Any] = {t: {"saturation_rounds": [], "open": {}} for t in targets}
        step_start = time.time()
        for r in range(rounds):
            for t in targets:
                server = servers[t]
                before = await self._counts(server, ROUTE[name])
                _log(f"{name}: saturation {t} (round {r + 1}/{rounds})")
                pg_pids = process_tree(self.pg_pid) if self.pg_pid else []
                cpu0, pg0, wall0 = cpu_snapshot([server.pid]), cpu_snapshot(pg_pids), time.time()
                res = await self._saturate(self.workload(name, t), server, f"s{r}")
                wall = time.time() - wall0
                cpu = cpu_delta(cpu0, cpu_snapshot([server.pid]))
                pg_cpu = cpu_delta(
                    pg0, cpu_snapshot(process_tree(self.pg_pid) if self.pg_pid else [])
                )
                n = res.get("answered_total") or 0
                res["server_cpu_us_per_request"] = round(cpu / n * 1e6, 1) if n else None
                res["postgres_cpu_us_per_request"] = round(pg_cpu / n * 1e6, 1) if n else None
                res["server_cpu_share_of_one_core"] = round(cpu / wall, 3) if wall else None
                after = await self._counts(server, ROUTE[name])
                if before or after:
                    res["sidecar_answers"] = answers = diff_counts(before, after)
                    # A healthy database at saturation is overload, not an outage: writes
                    # are committed (201) or refused (503 overloaded), never journaled (202).
                    res["journaled"] = sum(n for k, n in answers.items() if k.startswith("202/"))
                    res["overloaded"] = sum(n for k, n in answers.items() if k.startswith("503/"))
                out[t]["saturation_rounds"].append(res)
                await asyncio.sleep(self.plan.settle_s)
        for t in targets:
            rounds_done = out[t]["saturation_rounds"]
            out[t]["saturation"] = max(rounds_done, key=lambda x: x["throughput_rps"])
        for rate in rates:
            for t in targets:
                server = servers[t]
                before = await self._counts(server, ROUTE[name])
                _log(f"{name}: open loop {rate:g} req/s {t}")
                res = await self._open(self.workload(name, t), server, rate, f"o{rate:g}")
                after = await self._counts(server, ROUTE[name])
                if before or after:
                    res["sidecar_answers"] = diff_counts(before, after)
                out[t]["open"][f"{rate:g}"] = res
                await asyncio.sleep(self.plan.settle_s)
        if name != "down":
            # A breaker that opens on a healthy database (overload seen as slow calls) explains
            # answers from the replica or the journal in a healthy step.
            for t in targets:
                if t.startswith("sidecar"):
                    doc = await status_of(servers[t], self.tokens.read_tenant)
                    out[t]["breaker_transitions"] = transitions_since(doc, step_start)
        return out


# ---- PostgreSQL down -------------------------------------------------------------------------


async def trip_breakers(servers: list[Server], token: str, agent: str, timeout_s: float) -> None:
    """Send reads until each sidecar's breaker is open (PostgreSQL is already stopped)."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        for server in servers:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                doc = await status_of(server, token)
                if doc["breaker"]["state"] == "open":
                    break
                for _ in range(10):
                    with contextlib.suppress(OSError):
                        await http(
                            f"{server.url}/v1/agents/{agent}", token=token, session=s, timeout_s=5
                        )
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{server.name}: breaker did not open within {timeout_s}s")


async def recover(
    sidecars: list[Server], direct: Server, token: str, agent: str, timeout_s: float
) -> None:
    """After PostgreSQL is back: until each breaker is closed and each replica listens again,
    and the direct asyncpg baseline answers again."""
    end = time.monotonic() + timeout_s
    for server in sidecars:
        while True:
            doc = await status_of(server, token)
            # With read_mode=replica, reads never reach PostgreSQL while the replica is fresh, so
            # no trial call closes a half-open breaker: half_open counts as recovered.
            state = doc["breaker"]["state"]
            if state in ("closed", "half_open") and doc["replica"].get("connected", True):
                break
            if time.monotonic() > end:
                raise RuntimeError(
                    f"{server.name} did not recover within {timeout_s}s: breaker {state}, "
                    f"replica connected {doc['replica'].get('connected')}"
                )
            with contextlib.suppress(OSError):
                await http(f"{server.url}/v1/agents/{agent}", token=token, timeout_s=5)
            await asyncio.sleep(0.2)
    ok = 0
    while ok < 10:
        if time.monotonic() > end:
            raise RuntimeError(f"{direct.name} did not recover within {timeout_s}s")
        try:
            status, _ = await http(f"{direct.url}/v1/agents/{agent}", timeout_s=5)
        except OSError:
            status = 0
        ok = ok + 1 if status == 200 else 0
        await asyncio.sleep(0.05)


def transitions_since(doc: dict[str, Any], since: float) -> list[str]:
    """Breaker transitions at or after wall time `since` (the status keeps a bounded history)."""
    return [
        f"{t['from']}->{t['to']} ({t.get('cause', '')})"
        for t in doc["breaker"].get("transitions", [])
        if t["at"] >= since
    ]


def breaker_summary(doc: dict[str, Any], since: float) -> dict[str, Any]:
    return {
        "state": doc["breaker"]["state"],
        "transitions_during_step": transitions_since(doc, since),
        "replica_agents": doc["replica"]["agents"],
        "replica_age_seconds": doc["replica"]["age_seconds"],
    }


# ---- profiling -------------------------------------------------------------------------------


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
    ("tenacity/", "tenacity retry loop"),
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


async def profile_sidecar(b: Bench, server: Server, name: str, out_dir: Path) -> dict[str, Any]:
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
    _log(f"profile: {name} with py-spy for {seconds}s under closed-loop get by id")
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
        return await _profile_run(b, server, name, spy_proc, raw_path, seconds, pinned)
    finally:
        if pinned:
            for pid in [server.pid, *others]:
                pin(pid, all_cpus)


async def _profile_run(
    b: Bench,
    server: Server,
    name: str,
    spy_proc: subprocess.Popen[bytes],
    raw_path: Path,
    seconds: int,
    pinned: bool,
) -> dict[str, Any]:
    w = b.workload("get", name)
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


# ---- replica memory --------------------------------------------------------------------------


def replica_memory(agents: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--replica-memory", str(agents)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace")[-1000:]}
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


# ---- ratios and acceptance -------------------------------------------------------------------


def _sat(w: dict[str, Any], target: str) -> float:
    """Throughput at saturation; 0 when not measured (ratios against it are then None)."""
    return float(w.get(target, {}).get("saturation", {}).get("throughput_rps", 0.0))


def _cpu(w: dict[str, Any], target: str) -> float:
    """Server CPU microseconds per request at saturation; 0 when not measured."""
    return float(w.get(target, {}).get("saturation", {}).get("server_cpu_us_per_request") or 0.0)


def _lat(w: dict[str, Any], target: str, rate: float, p: str) -> float | None:
    run = w.get(target, {}).get("open", {}).get(f"{rate:g}")
    if not run or not run.get("ok"):
        return None
    return float(run["latency_ms"][p])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, w in results.items():
        if name == "down":
            continue
        entry: dict[str, Any] = {}
        for t in ("sidecar-database", "sidecar-replica"):
            if t not in w:
                continue
            e: dict[str, Any] = {
                "throughput_vs_bare": _ratio(_sat(w, t), _sat(w, "bare")),
                "throughput_vs_asyncpg": _ratio(_sat(w, t), _sat(w, "asyncpg")),
                "server_cpu_per_request_vs_bare": _ratio(_cpu(w, t), _cpu(w, "bare")),
                "server_cpu_per_request_vs_asyncpg": _ratio(_cpu(w, t), _cpu(w, "asyncpg")),
            }
            for base in ("asyncpg", "bare"):
                added = {}
                for p in ("p50", "p90", "p99"):
                    mine, theirs = _lat(w, t, plan.rate, p), _lat(w, base, plan.rate, p)
                    if mine is not None and theirs is not None:
                        added[p] = round(mine - theirs, 3)
                e[f"added_latency_ms_vs_{base}_at_{plan.rate:g}"] = added
            entry[t] = e
        out[name] = entry
    if "down" in results and "get" in results:
        d, g = results["down"], results["get"]
        out["down"] = {
            t: {
                "throughput_vs_healthy_replica_reads": _ratio(
                    _sat(d, t), _sat(g, "sidecar-replica")
                ),
                "throughput_vs_healthy_same_sidecar": _ratio(_sat(d, t), _sat(g, t)),
            }
            for t in ("sidecar-database", "sidecar-replica")
            if t in d
        }
    return out


def _check(value: float | None, target: float, op: str) -> dict[str, Any]:
    ok = value is not None and (
        value >= target if op == ">=" else value <= target if op == "<=" else value < target
    )
    return {"value": value, "target": f"{op} {target:g}", "pass": bool(ok)}


def acceptance(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    g = results.get("get")
    if g:
        out["1_get_replica_throughput_vs_bare"] = _check(
            _ratio(_sat(g, "sidecar-replica"), _sat(g, "bare")), 0.8, ">="
        )
        out["2a_get_database_throughput_vs_asyncpg"] = _check(
            _ratio(_sat(g, "sidecar-database"), _sat(g, "asyncpg")), 0.7, ">="
        )
        for p, target in (("p50", 0.5), ("p99", 1.5)):
            mine, base = _lat(g, "sidecar-database", plan.rate, p), _lat(g, "asyncpg", plan.rate, p)
            added = round(mine - base, 3) if mine is not None and base is not None else None
            out[f"2b_get_database_added_{p}_ms_at_{plan.rate:g}"] = _check(added, target, "<=")
    q = results.get("query")
    if q:
        for t in ("sidecar-database", "sidecar-replica"):
            out[f"3_query_p95_ms_at_{plan.query_rate:g}_{t}"] = _check(
                _lat(q, t, plan.query_rate, "p95"), 10.0, "<="
            )
    d = results.get("down")
    if d and g:
        for t in ("sidecar-replica", "sidecar-database"):
            out[f"4a_down_{t}_throughput_vs_healthy_replica_reads"] = _check(
                _ratio(_sat(d, t), _sat(g, "sidecar-replica")), 0.9, ">="
            )
            out[f"4b_down_{t}_p99_ms_at_{plan.rate:g}"] = _check(
                _lat(d, t, plan.rate, "p99"), 5.0, "<"
            )
    return out


# ---- the run ---------------------------------------------------------------------------------


async def run(plan: Plan) -> dict[str, Any]:
    from proxy.store.embedded import EmbeddedPostgres

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-bench-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens = Tokens.new()
    servers: list[Server] = []
    doc: dict[str, Any] = {
        "kind": "registry-proxy benchmark",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": machine(),
        "plan": {
            "duration_s": plan.duration_s,
            "warmup_s": plan.warmup_s,
            "rate": plan.rate,
            "query_rate": plan.query_rate,
            "connections": plan.connections,
            "open_connections": plan.open_connections,
            "generator_processes": plan.processes,
            "rounds": plan.rounds,
            "agents": plan.agents,
            "saturation_tool": "wrk" if plan.use_wrk and shutil.which("wrk") else "python",
            "open_loop_tool": "python",
            "workloads": list(plan.workloads),
        },
    }
    try:
        _log(f"PostgreSQL starting in {workdir}")
        await asyncio.to_thread(pg.start)
        db = sidecar("sidecar-database", dsn=pg.dsn, tokens=tokens, workdir=workdir)
        rep = sidecar(
            "sidecar-replica", dsn=pg.dsn, tokens=tokens, workdir=workdir, read_mode="replica"
        )
        bare = baseline("bare", "bare", workdir=workdir)
        apg = baseline("asyncpg", "asyncpg", workdir=workdir, dsn=pg.dsn)
        servers = [db, rep, bare, apg]
        db.start()
        await db.wait_until("/readyz", 60)  # the schema is migrated once it is ready
        for s in (rep, bare, apg):
            s.start()
        await rep.wait_until("/readyz", 60)
        await bare.wait_until("/healthz", 30)
        await apg.wait_until("/healthz", 30)
        _log(f"seeding {plan.agents} agents")
        ids = await seed(db.url, tokens.read_tenant, plan.agents)
        for s in (db, rep):
            end = time.monotonic() + 60
            while (await status_of(s, tokens.read_tenant))["replica"]["agents"] < plan.agents:
                if time.monotonic() > end:
                    raise RuntimeError(f"{s.name}: replica did not load the seeded agents")
                await asyncio.sleep(0.2)
        matches = {}
        for q in QUERIES:
            _, body = await http(
                db.url + q.replace("limit=10", "limit=100"), token=tokens.read_tenant
            )
            matches[q] = len(body["results"]) if isinstance(body, dict) else None
        doc["data"] = {
            "tenant": READ_TENANT,
            "agents": len(ids),
            "query_results_at_limit_100": matches,
        }
        b = Bench(plan, tokens, Targets(bare, apg, db, rep), ids, pg.pid())
        results: dict[str, Any] = {}
        all_targets = ["bare", "asyncpg", "sidecar-database", "sidecar-replica"]
        write_targets = ["bare", "asyncpg", "sidecar-database"]
        if "get" in plan.workloads:
            results["get"] = await b.measure("get", all_targets, [plan.rate], plan.rounds)
        if "query" in plan.workloads:
            rates = [plan.rate] if plan.query_rate == plan.rate else [plan.query_rate, plan.rate]
            results["query"] = await b.measure("query", all_targets, rates, 1)
        if plan.profile_dir is not None:
            doc["profile"] = {
                "tool": "py-spy record --rate 200 --nonblocking (collapsed stacks)",
                "workload": "get by id, closed loop",
                "sidecar-database": await profile_sidecar(
                    b, db, "sidecar-database", plan.profile_dir
                ),
                "sidecar-replica": await profile_sidecar(
                    b, rep, "sidecar-replica", plan.profile_dir
                ),
            }
        # The outage comes before the write workloads, so the replica holds the same 1,000
        # agents as in the healthy get step.
        if "down" in plan.workloads:
            _log("down: stopping PostgreSQL")
            before = {s.name: await status_of(s, tokens.read_tenant) for s in (db, rep)}
            await asyncio.to_thread(pg.stop, "fast")
            await trip_breakers([db, rep], tokens.read_tenant, ids[0], 30)
            opened = {s.name: await status_of(s, tokens.read_tenant) for s in (db, rep)}
            step_start = time.time()
            results["down"] = await b.measure(
                "down", ["sidecar-database", "sidecar-replica"], [plan.rate], plan.rounds
            )
            for s in (db, rep):
                after = await status_of(s, tokens.read_tenant)
                results["down"][s.name]["breaker"] = {
                    "at_step_start": opened[s.name]["breaker"]["state"],
                    "state_before_outage": before[s.name]["breaker"]["state"],
                    **breaker_summary(after, step_start),
                }
            if plan.profile_dir is not None:
                doc.setdefault("profile", {})[
                    "sidecar-replica-postgres-down"
                ] = await profile_sidecar(b, rep, "sidecar-replica-postgres-down", plan.profile_dir)
            if {"register", "performance"} & set(plan.workloads):
                _log("PostgreSQL starting again")
                await asyncio.to_thread(pg.start)
                b.pg_pid = pg.pid()
                await recover([db, rep], apg, tokens.read_tenant, ids[0], 60)
        if "register" in plan.workloads:
            results["register"] = await b.measure("register", write_targets, [plan.rate], 1)
        if "performance" in plan.workloads:
            results["performance"] = await b.measure("performance", write_targets, [plan.rate], 1)
        doc["results"] = results
        doc["ratios"] = ratios(results, plan)
        doc["acceptance"] = acceptance(results, plan)
        _log("replica memory per 10,000 agents")
        doc["replica_memory"] = await asyncio.to_thread(replica_memory, 10_000)
        doc["sidecar_errors"] = {s.name: s.error_lines() for s in (db, rep)}
        for s in (db, rep):
            if not s.alive():
                raise RuntimeError(f"{s.name} died during the run:\n{s.log_tail()}")
    finally:
        for s in servers:
            s.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop, "immediate")
        if plan.keep:
            _log(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


def report(doc: dict[str, Any]) -> str:
    """A short text summary of one result document."""
    lines = []
    m = doc["machine"]
    lines.append(
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}; "
        f"commit {str(m.get('git_commit'))[:10]}"
    )
    lines.append(f"command: {doc['command']}   ({doc['elapsed_s']} s)")
    plan = doc["plan"]
    rate = f"{plan['rate']:g}"
    header = (
        f"{'workload':<12} {'target':<17} {'sat req/s':>10} {'cpu us/req':>10} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    )
    lines.append(header + f"   (latency open loop at {rate} req/s)")
    for name, w in doc.get("results", {}).items():
        for t, r in w.items():
            sat = r.get("saturation", {})
            cpu = sat.get("server_cpu_us_per_request") or 0.0
            o = r.get("open", {}).get(rate)
            lat = o["latency_ms"] if o else {}
            flag = " overloaded" if o and o.get("overloaded") else ""
            if "journaled" in sat:
                flag += f"  [saturation: {sat['journaled']} journaled, {sat['overloaded']} 503]"
            lines.append(
                f"{name:<12} {t:<17} {sat.get('throughput_rps', 0.0):>10.0f} {cpu:>10.1f} "
                f"{lat.get('p50', 0):>8.2f} {lat.get('p90', 0):>8.2f} {lat.get('p99', 0):>8.2f}"
                f"{flag}"
            )
    lines.append("acceptance:")
    for k, v in doc.get("acceptance", {}).items():
        lines.append(
            f"  {'PASS' if v['pass'] else 'FAIL'} {k}: {v['value']} (target {v['target']})"
        )
    for name, errs in doc.get("sidecar_errors", {}).items():
        lines.append(f"{name}: {errs['count']} log lines at level error")
    mem = doc.get("replica_memory", {})
    if "rss_mib_per_10k" in mem:
        lines.append(
            f"replica memory per 10,000 agents: {mem['tracemalloc_mib_per_10k']} MiB "
            f"(tracemalloc), {mem['rss_mib_per_10k']} MiB (RSS)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop rate, req/s")
    parser.add_argument(
        "--query-rate",
        type=float,
        default=200.0,
        help="extra open-loop rate of the capability query, req/s",
    )
    parser.add_argument("--connections", type=int, default=32, help="saturation connections")
    parser.add_argument(
        "--open-connections",
        type=int,
        default=64,
        help="connection pool of the open-loop generator",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="generator processes (or wrk threads) for saturation",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="saturation rounds of 'get' and 'down' (best kept)"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help=f"comma-separated subset of {','.join(ALL_WORKLOADS)}",
    )
    parser.add_argument("--agents", type=int, default=1000, help="agents seeded")
    parser.add_argument("--no-wrk", action="store_true", help="never use wrk")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/bench-*.json)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile both sidecars with py-spy; raw stacks go to DIR",
    )
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=1.0, help="pause between steps, s")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    args = parser.parse_args(argv)
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = set(workloads) - set(ALL_WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or args.query_rate <= 0:
        parser.error("durations and rates must be positive")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"bench-{stamp}.json"
    plan = Plan(
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        query_rate=args.query_rate,
        connections=args.connections,
        open_connections=args.open_connections,
        processes=args.processes,
        rounds=max(1, args.rounds),
        workloads=workloads,
        agents=args.agents,
        use_wrk=not args.no_wrk,
        out=out,
        profile_dir=args.profile,
        profile_s=args.profile_seconds,
        settle_s=args.settle,
        keep=args.keep,
    )
    doc = asyncio.run(run(plan))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(doc))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
