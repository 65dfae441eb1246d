"""One step of ``python -m bench``: a workload against several targets, measured alike.

A step measures every target the same way in the same minutes (saturation rounds interleaved,
then the open-loop rates), so the ratios between the sidecar and the baselines do not depend on
how busy the shared machine was.

A step can also be server-bound: the target alone on one core and a single generator (wrk -t1,
or one Python process) on the other. Unpinned, the server, the generator and PostgreSQL share
both cores, so a server that needs less CPU per answer also leaves more of it to the generator;
pinned, each answer's cost is all that sets the throughput, and the ratio compares only that.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.cpu import cpu_delta, cpu_snapshot, pin, process_tree
from bench.dataset import LARGE_TENANT, QUERIES
from bench.metrics import diff_counts, loop_lag_counts, loop_lag_figures, request_counts, scrape
from bench.quiesce import quiesce
from bench.reporting import logger
from bench.servers import Server, Tokens
from bench.status import status_of, transitions_since
from bench.tally import Tally, summarize_rounds
from bench.workload import Workload

ALL_WORKLOADS = ("get", "query", "register", "performance", "down")
# The sidecar's route name of each workload, to read its own request counters.
ROUTE = {
    "get": "get_agent",
    "query": "query_agents",
    "query-large": "query_agents",
    "register": "register",
    "performance": "post_performance",
    "down": "get_agent",
}
# Write baselines: the effect alone (one statement), and the sidecar's rows as a plain app writes
# them (one transaction) or in one round trip (one statement of CTEs).
SAME_WORK = "asyncpg-ledger"
SAME_WORK_1RT = "asyncpg-ledger-1rt"
WRITE_WORKLOADS = ("register", "performance")


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
    profile_dir: Path | None
    profile_s: float
    settle_s: float
    keep: bool = False
    large_agents: int = 10_000
    # The server-bound configuration of get by id: its connections (one generator thread).
    pinned_connections: int = 16
    # PostgreSQL's files in memory (`bench.servers.postgres_root`) rather than on disk.
    postgres_in_memory: bool = True
    # Open-loop windows per target of each write step, pooled: one 8 s window holds 80 answers
    # above its p99, and a stall of the shared host in it moves that p99 for any target.
    open_rounds: int = 3


@dataclass(frozen=True)
class BenchTokens(Tokens):
    """The bench's writer tokens, and one for the large tenant of the capability queries."""

    large_tenant: str = ""

    @classmethod
    def new(cls) -> BenchTokens:
        base = Tokens.new()
        return cls(base.read_tenant, base.write_tenant, "bench-l-" + secrets.token_hex(16))

    def entries(self) -> list[dict[str, str]]:
        large = self.large_tenant
        return [
            *super().entries(),
            {"token": large, "tenant": LARGE_TENANT, "role": "writer", "id": "bench-l"},
        ]


def core_split() -> tuple[int, int] | None:
    """(generator's core, server's core) for a server-bound run; None with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


_log = logger("bench")


class Bench:
    def __init__(
        self,
        plan: Plan,
        tokens: BenchTokens,
        servers: dict[str, Server],
        ids: list[str],
        pg_pid: int | None,
        pg_dsn: str | None = None,
    ) -> None:
        self.plan = plan
        self.tokens = tokens
        self.servers = servers
        self.ids = ids
        self.pg_pid = pg_pid
        # Where a write step brings the database to one state before each target.
        self.pg_dsn = pg_dsn
        self.run_tag = datetime.now(UTC).strftime("%H%M%S")

    def workload(self, name: str, target: str) -> Workload:
        token = self.tokens.read_tenant
        if name in ("get", "down"):
            return Workload(name, "GET", [f"/v1/agents/{a}" for a in self.ids], token=token)
        if name == "query":
            return Workload(name, "GET", list(QUERIES), token=token)
        if name == "query-large":
            return Workload(name, "GET", list(QUERIES), token=self.tokens.large_tenant)
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

    async def _saturate(
        self, w: Workload, server: Server, unique: str, cores: tuple[int, int] | None
    ) -> dict[str, Any]:
        p = self.plan
        if cores is None:
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
        generator_core, server_core = cores
        everywhere = os.sched_getaffinity(0)
        pin(server.pid, {server_core})
        try:
            res = await asyncio.to_thread(
                loadgen.saturate,
                w,
                "127.0.0.1",
                server.port,
                connections=p.pinned_connections,
                warmup_s=p.warmup_s,
                duration_s=p.duration_s,
                processes=1,
                use_wrk=None if p.use_wrk else False,
                unique=unique,
                cpus={generator_core},
            )
        finally:
            pin(server.pid, everywhere)
        res["cores"] = {"generator": generator_core, "server": server_core}
        return res

    async def _open(self, w: Workload, server: Server, rate: float, unique: str) -> list[Tally]:
        p = self.plan
        return await asyncio.to_thread(
            loadgen.fixed_rate_tallies,
            w,
            "127.0.0.1",
            server.port,
            rate=rate,
            connections=p.open_connections,
            warmup_s=min(p.warmup_s, 1.0),
            duration_s=p.duration_s,
            unique=unique,
        )

    async def _scrape(self, server: Server) -> str:
        """A sidecar's metrics, read outside the CPU figures of a run; "" for a baseline."""
        return await scrape(server) if server.name.startswith("sidecar") else ""

    async def _quiesce(self, name: str) -> dict[str, Any] | None:
        """Before a target's run of a write workload, the database as every target finds it
        (`bench.quiesce`); None for reads, which leave nothing behind."""
        if name not in WRITE_WORKLOADS or self.pg_dsn is None:
            return None
        return await quiesce(self.pg_dsn)

    def _pg_pids(self) -> list[int]:
        return process_tree(self.pg_pid) if self.pg_pid else []

    def _cpu_before(
        self, server: Server, others: list[int]
    ) -> tuple[dict[int, float], dict[int, float], float, dict[int, float]]:
        """Before a run: the CPU of the target, of PostgreSQL and of the other sidecars, and
        the wall clock (`_cpu_figures` and `_listening_figure` take them after it)."""
        return (
            cpu_snapshot([server.pid]),
            cpu_snapshot(self._pg_pids()),
            time.time(),
            cpu_snapshot(others),
        )

    def _other_sidecars(self, server: Server) -> list[int]:
        """The sidecars up beside the target: each hears every write any target makes."""
        return [
            s.pid for n, s in self.servers.items() if n.startswith("sidecar") and s is not server
        ]

    async def measure(
        self,
        name: str,
        targets: list[str],
        rates: list[float],
        rounds: int,
        *,
        servers: dict[str, Server] | None = None,
        cores: tuple[int, int] | None = None,
        open_rounds: int = 1,
    ) -> dict[str, Any]:
        """Saturation (best of `rounds`, targets interleaved), then per rate `open_rounds`
        open-loop windows per target, targets interleaved, pooled into one run
        (`summarize_rounds`).

        `servers` stands in for some targets in this step (the large tenant's own asyncpg
        baseline); `cores` makes the saturation server-bound (generator core, server core)."""
        by_name = {**self.servers, **(servers or {})}
        out: dict[str, Any] = {t: {"saturation_rounds": [], "open": {}} for t in targets}
        step_start = time.time()
        label = f"{name} (server-bound)" if cores else name
        for r in range(rounds):
            for t in targets:
                server = by_name[t]
                quiesced = await self._quiesce(name)
                before = request_counts(await self._scrape(server), ROUTE[name])
                _log(f"{label}: saturation {t} (round {r + 1}/{rounds})")
                others = self._other_sidecars(server)
                cpu0, pg0, wall0, ears0 = self._cpu_before(server, others)
                res = await self._saturate(self.workload(name, t), server, f"s{r}", cores)
                _cpu_figures(res, server, cpu0, pg0, wall0, self._pg_pids())
                _listening_figure(res, ears0, others)
                after = request_counts(await self._scrape(server), ROUTE[name])
                if before or after:
                    res["sidecar_answers"] = answers = diff_counts(before, after)
                    # A healthy database at saturation is overload, not an outage: writes
                    # are committed (201) or refused (503 overloaded), never journaled (202).
                    res["journaled"] = sum(n for k, n in answers.items() if k.startswith("202/"))
                    res["overloaded"] = sum(n for k, n in answers.items() if k.startswith("503/"))
                if quiesced is not None:
                    res["quiesced"] = quiesced
                out[t]["saturation_rounds"].append(res)
                await asyncio.sleep(self.plan.settle_s)
        for t in targets:
            rounds_done = out[t]["saturation_rounds"]
            out[t]["saturation"] = max(rounds_done, key=lambda x: x["throughput_rps"])
        for rate in rates:
            windows: dict[str, list[list[Tally]]] = {t: [] for t in targets}
            figures: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for r in range(open_rounds):
                for t in targets:
                    server = by_name[t]
                    quiesced = await self._quiesce(name)
                    # One read of the sidecar's metrics on each side of the window gives its
                    # answers and its loop's lag, without counting in its CPU per answer.
                    text0 = await self._scrape(server)
                    before = request_counts(text0, ROUTE[name])
                    of = f" (round {r + 1}/{open_rounds})" if open_rounds > 1 else ""
                    _log(f"{name}: open loop {rate:g} req/s {t}{of}")
                    others = self._other_sidecars(server)
                    cpu0, pg0, wall0, ears0 = self._cpu_before(server, others)
                    w = self.workload(name, t)
                    tallies = await self._open(w, server, rate, f"o{rate:g}r{r}")
                    # How much of a core the target needed at this rate: near 1, it is saturated.
                    fig: dict[str, Any] = {"answered_total": sum(x.answered_total for x in tallies)}
                    _cpu_figures(fig, server, cpu0, pg0, wall0, self._pg_pids())
                    _listening_figure(fig, ears0, others)
                    text1 = await self._scrape(server)
                    after = request_counts(text1, ROUTE[name])
                    lag = loop_lag_figures(loop_lag_counts(text0), loop_lag_counts(text1))
                    if before or after:
                        fig["sidecar_answers"] = diff_counts(before, after)
                    if quiesced is not None:
                        fig["quiesced"] = quiesced
                    if lag is not None:
                        fig["loop_lag"] = lag
                    windows[t].append(tallies)
                    figures[t].append(fig)
                    await asyncio.sleep(self.plan.settle_s)
            for t in targets:
                res = summarize_rounds(windows[t], self.workload(name, t).expect)
                res["rate"] = rate
                res["connections"] = self.plan.open_connections
                res.update(_pooled_figures(figures[t]))
                out[t]["open"][f"{rate:g}"] = res
        if name != "down":
            # A breaker that opens on a healthy database (overload seen as slow calls) explains
            # answers from the replica or the journal in a healthy step.
            for t in targets:
                if t.startswith("sidecar"):
                    doc = await status_of(by_name[t], self.tokens.read_tenant)
                    out[t]["breaker_transitions"] = transitions_since(doc, step_start)
        return out


def _pooled_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a target's open-loop windows as one run: CPU per answer over all of
    them, the share of a core as their mean, the sidecar's answers summed, and the quiesce
    that left autovacuum busiest."""
    out: dict[str, Any] = {}
    answered = [f["answered_total"] for f in rounds]
    for key in (
        "server_cpu_us_per_request",
        "postgres_cpu_us_per_request",
        "listening_sidecars_cpu_us_per_request",
    ):
        pairs = [
            (f[key], n) for f, n in zip(rounds, answered, strict=True) if f.get(key) is not None
        ]
        if pairs:
            total = sum(n for _, n in pairs)
            out[key] = round(sum(v * n for v, n in pairs) / total, 1) if total else None
    shares = [
        f["server_cpu_share_of_one_core"]
        for f in rounds
        if f.get("server_cpu_share_of_one_core") is not None
    ]
    if shares:
        out["server_cpu_share_of_one_core"] = round(sum(shares) / len(shares), 3)
    answers: dict[str, float] = {}
    for f in rounds:
        for k, v in (f.get("sidecar_answers") or {}).items():
            answers[k] = answers.get(k, 0) + v
    if answers:
        out["sidecar_answers"] = answers
    lags = [f.get("loop_lag") for f in rounds]
    if any(lags):
        # Per window, so a slow window can be told from a stalled sidecar (or not).
        out["loop_lag_by_window"] = lags
    quiesced = [f["quiesced"] for f in rounds if "quiesced" in f]
    if quiesced:
        out["quiesced"] = max(quiesced, key=lambda q: q.get("autovacuum_still_busy") or 0)
    return out


def _listening_figure(res: dict[str, Any], cpu0: dict[int, float], pids: list[int]) -> None:
    """For a write, the CPU the other sidecars spent per answer of the target: hearing its
    change notifications and filing the rows in their replicas."""
    if not pids:
        return
    n = res.get("answered_total") or 0
    cpu = cpu_delta(cpu0, cpu_snapshot(pids))
    res["listening_sidecars_cpu_us_per_request"] = round(cpu / n * 1e6, 1) if n else None


def _cpu_figures(
    res: dict[str, Any],
    server: Server,
    cpu0: dict[int, float],
    pg0: dict[int, float],
    wall0: float,
    pg_pids: list[int],
) -> None:
    """CPU of the target and of PostgreSQL per answer (warm-up included), and the target's
    share of one core over the run, into `res`."""
    wall = time.time() - wall0
    cpu = cpu_delta(cpu0, cpu_snapshot([server.pid]))
    pg_cpu = cpu_delta(pg0, cpu_snapshot(pg_pids))
    n = res.get("answered_total") or 0
    res["server_cpu_us_per_request"] = round(cpu / n * 1e6, 1) if n else None
    res["postgres_cpu_us_per_request"] = round(pg_cpu / n * 1e6, 1) if n else None
    res["server_cpu_share_of_one_core"] = round(cpu / wall, 3) if wall else None
