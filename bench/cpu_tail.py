"""``python -m bench.cpu_tail``: what a write's CPU does to its p99 at a fixed rate.

At 1,000 writes a second the sidecar's p99 is longer than that of the asyncpg app doing the same
work in one round trip (`asyncpg --writes ledger-1rt`), although both send the same kind of
statement to the same PostgreSQL. This run asks whether the sidecar's extra CPU per write is
enough to explain that: the same-work app runs as it is and with ``--extra-cpu-us`` added to
each write (CPU spent on the request path, half before its statement is sent, half after the
answer), next to the sidecar, rounds interleaved, on the topology of ``make bench``: an embedded
PostgreSQL in memory, the measured sidecar in database mode and a replica-mode sidecar
listening. Every target gets a saturating burst first and the database quiesced before its
fixed-rate run, as in ``make bench``. The result keeps every round's latencies and the target's
CPU per write, and per target the median of its rounds.

Written here: it drives the project's own servers and baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.benchmark_steps import BenchTokens
from bench.cpu import cpu_snapshot, process_tree
from bench.dataset import seed
from bench.loadgen import fixed_rate_tallies, open_summary, saturate
from bench.quiesce import quiesce
from bench.reporting import logger, machine_line, opening, publish, result_path
from bench.servers import Server, baseline, embedded_postgres, sidecar
from bench.status import wait_replica
from bench.workload import Workload

if TYPE_CHECKING:
    from proxy.store.embedded import EmbeddedPostgres

_log = logger("cpu-tail")
WORKLOADS = ("register", "performance")
SIDECAR = "sidecar-database"
FIGURES = (
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "server_cpu_us_per_request",
    "postgres_cpu_us_per_request",
    "listening_cpu_us_per_request",
)


def _workload(name: str, tokens: BenchTokens, ids: list[str]) -> Workload:
    if name == "register":
        return Workload(
            "register",
            "POST",
            ["/v1/agents"],
            body="register",
            token=tokens.write_tenant,
            expect=(201, 202),
            id_prefix="cpu-tail",
        )
    return Workload(
        "performance",
        "POST",
        [f"/v1/agents/{a}/performance" for a in ids],
        body="performance",
        token=tokens.read_tenant,
        expect=(201, 202),
    )


def target_name(extra_us: float) -> str:
    return f"same-work-1rt+{extra_us:g}us"


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per target, the median over its rounds of each figure."""
    out: dict[str, dict[str, float]] = {}
    for target in dict.fromkeys(r["target"] for r in rounds):
        mine = [r for r in rounds if r["target"] == target]
        out[target] = {
            key: round(statistics.median(r[key] for r in mine), 3)
            for key in FIGURES
            if all(key in r for r in mine)
        }
    return out


def _cpu_s(pids: list[int]) -> float:
    return sum(cpu_snapshot(pids).values())


async def _measure(
    w: Workload,
    server: Server,
    pg: EmbeddedPostgres,
    listeners: list[Server],
    args: argparse.Namespace,
    unique: str,
) -> dict[str, Any]:
    """One round of one target; besides its latencies, the CPU per answer of the target, of
    PostgreSQL and of the sidecars that are not the target (each hears every write)."""
    await asyncio.to_thread(
        saturate,
        w,
        "127.0.0.1",
        server.port,
        connections=32,
        warmup_s=0,
        duration_s=args.saturate,
        processes=2,
        use_wrk=False,
        unique=unique + "s",
    )
    await quiesce(pg.dsn)
    pg_pid = pg.pid()
    groups = {
        "server": [server.pid],
        "postgres": process_tree(pg_pid) if pg_pid is not None else [],
        "listening": [s.pid for s in listeners],
    }
    before = {name: _cpu_s(pids) for name, pids in groups.items()}
    tallies = await asyncio.to_thread(
        fixed_rate_tallies,
        w,
        "127.0.0.1",
        server.port,
        rate=args.rate,
        connections=64,
        warmup_s=1.0,
        duration_s=args.duration,
        unique=unique + "o",
    )
    res = open_summary(tallies, w, rate=args.rate, connections=64)
    answered = max(res["answered_total"], 1)
    per_answer = {
        f"{name}_cpu_us_per_request": round((_cpu_s(pids) - before[name]) / answered * 1e6, 1)
        for name, pids in groups.items()
    }
    lat = res["latency_ms"]
    return {
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "statuses": res["statuses"],
        "errors": res["errors"],
        **per_answer,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = BenchTokens.new()
    doc: dict[str, Any] = opening("registry-proxy cpu tail", "bench.cpu_tail", quote=True)
    async with embedded_postgres("cpu-tail") as (workdir, pg, storage):
        doc["plan"] = {
            "workload": args.workload,
            "extra_cpu_us": args.extra_cpu_us,
            "rounds": args.rounds,
            "rate": args.rate,
            "duration_s": args.duration,
            "saturate_s": args.saturate,
            "postgres_storage": storage,
        }
        db = sidecar(SIDECAR, dsn=pg.dsn, tokens=tokens, workdir=workdir)
        rep = sidecar(
            "sidecar-replica", dsn=pg.dsn, tokens=tokens, workdir=workdir, read_mode="replica"
        )
        same_work = {
            target_name(x): baseline(
                f"same-work-1rt-{i}",
                "asyncpg",
                workdir=workdir,
                dsn=pg.dsn,
                writes="ledger-1rt",
                extra_cpu_us=x,
            )
            for i, x in enumerate(args.extra_cpu_us)
        }
        try:
            db.start()
            await db.wait_until("/readyz", 60)
            for s in (rep, *same_work.values()):
                s.start()
            await rep.wait_until("/readyz", 60)
            for s in same_work.values():
                await s.wait_until("/healthz", 30)
            ids = await seed(db.url, tokens.read_tenant, args.agents)
            for s in (db, rep):
                await wait_replica(s, tokens.read_tenant, args.agents, 60)
            w = _workload(args.workload, tokens, ids)
            targets = {**same_work, SIDECAR: db}
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                for i, (name, server) in enumerate(targets.items()):
                    _log(f"round {r + 1}/{args.rounds}: {name}")
                    others = [s for s in (db, rep) if s is not server]
                    got = await _measure(w, server, pg, others, args, f"r{r}t{i}")
                    rounds.append({"round": r, "target": name, **got})
        finally:
            for s in (db, rep, *same_work.values()):
                s.stop()
    doc["rounds"] = rounds
    doc["medians"] = medians(rounds)
    return doc


def report(doc: dict[str, Any]) -> str:
    p = doc["plan"]
    lines = [
        machine_line(doc["machine"], load=True),
        f"command: {doc['command']}",
        f"{p['workload']} at {p['rate']:g}/s, {p['rounds']} rounds of {p['duration_s']:g} s;"
        " median of the rounds:",
        f"  {'target':24s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s}"
        "   CPU us/write: server postgres listening",
    ]
    for name, m in doc["medians"].items():
        lines.append(
            f"  {name:24s} {m['p50_ms']:7.2f} {m['p90_ms']:7.2f} {m['p99_ms']:7.2f}"
            f" {m['server_cpu_us_per_request']:21.0f} {m['postgres_cpu_us_per_request']:8.0f}"
            f" {m['listening_cpu_us_per_request']:9.0f}"
        )
    lines.append(
        "p99 of each round: " + ", ".join(f"{r['target']} {r['p99_ms']:.2f}" for r in doc["rounds"])
    )
    return "\n".join(lines)


def _extras(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of microseconds, each >= 0")
    return list(dict.fromkeys(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_tail", description=__doc__)
    parser.add_argument("--workload", choices=WORKLOADS, default="register")
    parser.add_argument(
        "--extra-cpu-us",
        type=_extras,
        default=[0.0, 60.0, 120.0, 180.0],
        help="CPU added to each write of the same-work app, one target per value (0,60,...)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds at that rate")
    parser.add_argument("--saturate", type=float, default=3.0, help="seconds of burst first")
    parser.add_argument("--agents", type=int, default=200, help="agents seeded (performance)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rate <= 0 or args.duration <= 0 or args.saturate <= 0:
        parser.error("rounds, rate, duration and saturate must be positive")
    if args.agents < 1:
        parser.error("--agents must be positive")
    doc = asyncio.run(run(args))
    publish(args.out or result_path("cputail"), doc, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
