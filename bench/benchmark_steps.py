"""One step of ``python -m bench``: a workload against several targets, measured alike.

A step measures every target the same way in the same minutes (saturation rounds interleaved,
then the open-loop rates), so the ratios between the sidecar and the baselines do not depend on
how busy the shared machine was.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.cpu import cpu_delta, cpu_snapshot, process_tree
from bench.dataset import QUERIES
from bench.metrics import diff_counts, request_counts
from bench.reporting import logger
from bench.servers import Server, Tokens
from bench.status import status_of, transitions_since
from bench.workload import Workload

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


_log = logger("bench")


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
