"""``python -m bench.stalls``: where a fixed-rate run's slow answers come from.

A p99 says how slow the slowest answers were, not why. This run keeps what a percentile throws
away: one sidecar (``read_mode=database``) on an embedded PostgreSQL, a saturating burst of the
workload first (as in ``make bench``, so the replica and the tables have grown), then the
workload at a fixed rate. Every answer is kept with its send time; beside it PostgreSQL's wait
events and autovacuum workers are sampled every 20 ms and each process's CPU every 50 ms. Slow
answers (over ``--slow-ms``) are grouped into windows (answers less than 50 ms apart), and each
window is reported with what was seen at the time: the waits, autovacuum, and who used the CPU.

Written here rather than taken from a load tool: wrk and the like report percentiles, not each
answer next to the database's state at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.collector import collector_paused
from bench.dataset import seed
from bench.loadgen import saturate
from bench.loadgen_loops import open_loop
from bench.reporting import logger, machine_line, opening, publish, result_path
from bench.servers import Server, Tokens, embedded_postgres, sidecar
from bench.status import wait_replica
from bench.tally import summarize
from bench.workload import Workload, request_builder

if TYPE_CHECKING:
    from proxy.store.embedded import EmbeddedPostgres

_log = logger("stalls")
WINDOW_GAP_S = 0.05
WORKLOADS = ("register", "performance")
PG_SAMPLE = """
select
  (select string_agg(distinct coalesce(wait_event_type || ':' || wait_event, ''), ',')
     from pg_stat_activity
    where state = 'active' and backend_type = 'client backend' and wait_event is not null
      and pid <> pg_backend_pid()) as waits,
  (select string_agg(query, '|') from pg_stat_activity
    where backend_type = 'autovacuum worker') as autovacuum
"""


@dataclass
class Answer:
    due: float  # when it was due to be sent, seconds from the fixed-rate run's start
    latency_s: float
    status: int


@dataclass
class Window:
    start_s: float
    end_s: float
    answers: int = 0
    worst_ms: float = 0.0
    waits: Counter[str] = field(default_factory=Counter)
    autovacuum: set[str] = field(default_factory=set)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "start_s": round(self.start_s, 3),
            "span_ms": round((self.end_s - self.start_s) * 1000, 1),
            "slow_answers": self.answers,
            "worst_ms": round(self.worst_ms, 1),
            "postgres_waits": dict(self.waits.most_common()),
            "autovacuum": sorted(self.autovacuum),
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
        }


def slow_windows(answers: list[Answer], slow_s: float, gap_s: float = WINDOW_GAP_S) -> list[Window]:
    """The slow answers grouped by when they were due: a window ends at a gap over ``gap_s``."""
    windows: list[Window] = []
    for a in sorted((a for a in answers if a.latency_s > slow_s), key=lambda a: a.due):
        if not windows or a.due - windows[-1].end_s > gap_s:
            windows.append(Window(a.due, a.due))
        w = windows[-1]
        w.end_s = a.due
        w.answers += 1
        w.worst_ms = max(w.worst_ms, a.latency_s * 1000)
    return windows


def _cpu_ticks(pids: list[int]) -> dict[int, int]:
    """CPU ticks of each process still there."""
    ticks = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone, or not Linux
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def _ticks_used(before: dict[int, int], now: dict[int, int]) -> int:
    """Ticks used between two readings by the processes in both: one that exited in between
    (a PostgreSQL backend, say) takes its whole count with it, which is not a negative use."""
    return sum(ticks - before[pid] for pid, ticks in now.items() if pid in before)


def _children(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


@dataclass
class Samples:
    postgres: list[tuple[float, str, str]] = field(default_factory=list)  # (t, waits, autovacuum)
    cpu: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (t, seconds each)


async def _sample_postgres(dsn: str, out: Samples, stop: asyncio.Event) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            row = await conn.fetchrow(PG_SAMPLE)
            out.postgres.append((time.perf_counter(), row["waits"] or "", row["autovacuum"] or ""))
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _sample_cpu(groups: dict[str, list[int]], out: Samples, stop: asyncio.Event) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    before = {name: _cpu_ticks(pids) for name, pids in groups.items()}
    while not stop.is_set():
        await asyncio.sleep(0.05)
        now = {name: _cpu_ticks(pids) for name, pids in groups.items()}
        used = {name: _ticks_used(before[name], now[name]) / tick for name in groups}
        out.cpu.append((time.perf_counter(), used))
        before = now


def annotate(windows: list[Window], samples: Samples) -> None:
    """What was seen around each window: 100 ms before it to 50 ms after."""
    for w in windows:
        lo, hi = w.start_s - 0.1, w.end_s + w.worst_ms / 1000 + 0.05
        for t, waits, autovacuum in samples.postgres:
            if lo <= t <= hi:
                w.waits.update(x for x in waits.split(",") if x)
                w.autovacuum.update(x for x in autovacuum.split("|") if x)
        for t, used in samples.cpu:
            if lo <= t <= hi:
                for name, seconds in used.items():
                    w.cpu_s[name] = w.cpu_s.get(name, 0.0) + seconds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = Tokens.new()
    doc: dict[str, Any] = opening("registry-proxy stalls", "bench.stalls", quote=True)
    in_memory = not args.postgres_on_disk
    async with embedded_postgres("stalls", in_memory=in_memory) as (workdir, pg, storage):
        doc["plan"] = {
            "workload": args.workload,
            "rate": args.rate,
            "duration_s": args.duration,
            "saturate_s": args.saturate,
            "slow_ms": args.slow_ms,
            "postgres_storage": storage,
        }
        server = sidecar("sidecar-database", dsn=pg.dsn, tokens=tokens, workdir=workdir)
        try:
            await _observe(args, doc, tokens, server, pg)
        finally:
            server.stop()
    return doc


async def _observe(
    args: argparse.Namespace,
    doc: dict[str, Any],
    tokens: Tokens,
    server: Server,
    pg: EmbeddedPostgres,
) -> None:
    """The burst, then the fixed-rate run with its samplers; what they saw goes into `doc`."""
    server.start()
    await server.wait_until("/readyz", 60)
    if args.workload == "performance":
        ids = await seed(server.url, tokens.read_tenant, args.agents)
        await wait_replica(server, tokens.read_tenant, args.agents, 60)
        w = Workload(
            "performance",
            "POST",
            [f"/v1/agents/{a}/performance" for a in ids],
            body="performance",
            token=tokens.read_tenant,
            expect=(201, 202),
        )
    else:
        w = Workload(
            "register",
            "POST",
            ["/v1/agents"],
            body="register",
            token=tokens.read_tenant,
            expect=(201, 202),
        )
    if args.saturate > 0:
        _log(f"saturating for {args.saturate:g} s")
        await asyncio.to_thread(
            saturate, w, "127.0.0.1", server.port, connections=32, warmup_s=0,
            duration_s=args.saturate, processes=2, use_wrk=False, unique="sat",
        )  # fmt: skip
        await asyncio.sleep(1.0)
    _log(f"{args.workload} at {args.rate:g}/s for {args.duration:g} s")
    samples = Samples()
    stop = asyncio.Event()
    pg_pid = pg.pid()
    groups: dict[str, list[int]] = {"sidecar": [server.pid], "generator": [os.getpid()]}
    if pg_pid is not None:
        groups["postgres"] = [pg_pid, *_children(pg_pid)]
    samplers = [
        asyncio.create_task(_sample_postgres(pg.dsn, samples, stop)),
        asyncio.create_task(_sample_cpu(groups, samples, stop)),
    ]
    answers: list[Answer] = []

    def keep(due: float, latency_s: float, status: int) -> None:
        answers.append(Answer(due, latency_s, status))

    build = request_builder(w, f"127.0.0.1:{server.port}", "fixed")
    with collector_paused():
        tally = await open_loop(
            "127.0.0.1", server.port, build, rate=args.rate, connections=args.connections,
            warmup_s=0.0, duration_s=args.duration, on_answer=keep,
        )  # fmt: skip
    stop.set()
    await asyncio.gather(*samplers)
    # Every time from the first answer's due time on.
    origin = min((a.due for a in answers), default=0.0)
    for a in answers:
        a.due -= origin
    samples.postgres = [(t - origin, x, y) for t, x, y in samples.postgres]
    samples.cpu = [(t - origin, used) for t, used in samples.cpu]
    windows = slow_windows(answers, args.slow_ms / 1000)
    annotate(windows, samples)
    total_cpu: dict[str, float] = {}
    for _, used in samples.cpu:
        for name, seconds in used.items():
            total_cpu[name] = total_cpu.get(name, 0.0) + seconds
    span = samples.cpu[-1][0] - samples.cpu[0][0] if len(samples.cpu) > 1 else 0.0
    # The same summary as `make bench`'s fixed-rate steps, and the answers kept here.
    doc["answers"] = {"count": len(answers), **summarize([tally], w.expect, "open")}
    doc["cores_used"] = {k: round(v / span, 3) for k, v in total_cpu.items()} if span else {}
    doc["windows"] = [w.to_json() for w in windows]


def report(doc: dict[str, Any]) -> str:
    lines = [machine_line(doc["machine"], load=True), f"command: {doc['command']}"]
    a = doc["answers"]
    lines.append(
        f"answers: {a['count']} {a['statuses']}, errors {a['errors']}, unfinished"
        f" {a['unfinished']}, latency ms {a['latency_ms']}"
    )
    lines.append(f"cores used: {doc['cores_used']}")
    lines.append(f"slow windows (answers over {doc['plan']['slow_ms']} ms): {len(doc['windows'])}")
    for w in sorted(doc["windows"], key=lambda w: -w["worst_ms"])[:15]:
        lines.append(
            f"  at {w['start_s']:7.3f} s  {w['slow_answers']:4d} slow over {w['span_ms']:6.1f} ms,"
            f" worst {w['worst_ms']:6.1f} ms  cpu {w['cpu_s']}  waits {w['postgres_waits']}"
            + (f"  autovacuum {w['autovacuum']}" if w["autovacuum"] else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__)
    parser.add_argument("--workload", choices=WORKLOADS, default="register")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at that rate")
    parser.add_argument("--saturate", type=float, default=8.0, help="seconds of burst first")
    parser.add_argument("--slow-ms", type=float, default=8.0, help="an answer slower is slow")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--agents", type=int, default=100, help="agents seeded (performance)")
    parser.add_argument("--postgres-on-disk", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.saturate < 0 or args.slow_ms <= 0:
        parser.error("rate, duration and slow-ms must be positive, saturate not negative")
    doc = asyncio.run(run(args))
    publish(args.out or result_path("stalls"), doc, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
