"""``python -m bench.soak``: a bounded run of mixed traffic with periodic PostgreSQL outages.

One sidecar process in front of an embedded PostgreSQL that is stopped and started again every
``--outage-every`` seconds (clean ``pg_ctl stop -m fast``: the embedded server runs with
``synchronous_commit=off``, so a crash-style stop could lose commits PostgreSQL itself had
acknowledged, which is not what this run is about). Meanwhile a fixed-rate mix of reads and writes
runs, every write with its own ``Idempotency-Key``, and every few seconds the sidecar's RSS, open
file descriptors, journal and replica figures are sampled (psutil and ``/v1/status``).

At the end PostgreSQL is up, the journal has drained, and the run fails (exit 1) when:

- RSS after the run grew more than ``--max-rss-growth`` (10%) over RSS at the end of warm-up
  (by default the warm-up lasts until the sidecar's memory of counted event ids, kept 15
  minutes, is full: 16 minutes when the run is 20 minutes or longer);
- RSS trends upward after warm-up by ``--max-rss-slope`` (1%) of it per hour or more (least
  squares over every sample; judged when at least an hour follows the warm-up);
- any acknowledged write (2xx: 200, 201, 202, 204) is missing from PostgreSQL: its op id absent
  from the operations ledger, or its effect absent (agent row, unregister, performance event);
- a performance event was counted twice (an agent's task_count differs from its event rows);
- the journal did not drain.

``--replica-memory N`` instead prints, as JSON, the memory the replica takes for N agents.

    SOAK_MINUTES=2 make soak
    python -m bench.soak --minutes 2 --rate 200 --outage-every 40 --outage-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.dataset import seed
from bench.outages import stop_start
from bench.replica_memory import replica_memory, replica_memory_lines
from bench.reporting import acceptance_lines, logger, machine_line, opening, publish, result_path
from bench.servers import AdminTokens, Server, sidecar
from bench.soak_samples import sample, sampler, slope_per_hour
from bench.soak_traffic import Traffic
from bench.soak_verify import verify
from bench.status import wait_drained
from bench.stopping import run_until_terminated
from proxy.store import counted_events

_log = logger("soak")


@dataclass(frozen=True)
class SoakPlan:
    minutes: float
    rate: float
    sample_every_s: float
    outage_every_s: float
    outage_s: float
    warmup_s: float
    agents: int
    read_mode: str
    max_rss_growth: float
    max_rss_slope: float
    out: Path
    keep: bool = False


async def soak(plan: SoakPlan) -> dict[str, Any]:
    import psutil

    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-soak-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens = AdminTokens.new()
    server: Server | None = None
    total_s = plan.minutes * 60
    doc: dict[str, Any] = {
        **opening("registry-proxy soak", "bench.soak"),
        "plan": {
            "minutes": plan.minutes,
            "rate": plan.rate,
            "sample_every_s": plan.sample_every_s,
            "outage_every_s": plan.outage_every_s,
            "outage_s": plan.outage_s,
            "warmup_s": plan.warmup_s,
            "agents": plan.agents,
            "read_mode": plan.read_mode,
            "max_rss_growth": plan.max_rss_growth,
            "max_rss_slope_per_hour": plan.max_rss_slope,
        },
    }
    try:
        doc["replica_memory"] = await asyncio.to_thread(replica_memory, 10_000)
        await asyncio.to_thread(pg.start)
        server = sidecar(
            "sidecar", dsn=pg.dsn, tokens=tokens, workdir=workdir, read_mode=plan.read_mode
        )
        server.start()
        await server.wait_until("/readyz", 60)
        _log(f"seeding {plan.agents} agents")
        ids = await seed(server.url, tokens.read_tenant, plan.agents)
        journal_dir = workdir / "sidecar-journal"
        proc = psutil.Process(server.pid)
        proc.cpu_percent(None)
        start = time.monotonic()
        until = start + total_s
        traffic = Traffic(server.url, tokens, ids)
        _log(f"running {plan.minutes:g} min at {plan.rate:g} req/s")
        results = await asyncio.gather(
            traffic.run(plan.rate, until),
            stop_start(
                pg,
                start=start,
                first_s=min(30.0, plan.warmup_s / 3),
                every_s=plan.outage_every_s,
                down_s=plan.outage_s,
                until=until - 20,
                log=_log,
            ),
            sampler(
                server,
                tokens.read_tenant,
                proc,
                start,
                plan.sample_every_s,
                until,
                journal_dir,
                tokens.admin,
            ),
        )
        outage_events, samples = results[1], results[2]
        if not pg.running():
            await asyncio.to_thread(pg.start)
        _log("draining the journal")
        drained, _ = await wait_drained(server, tokens.read_tenant, 120, every_s=0.5)
        await asyncio.sleep(2.0)
        final = []
        for _ in range(3):
            final.append(
                await sample(server, tokens.read_tenant, proc, start, journal_dir, tokens.admin)
            )
            await asyncio.sleep(1.0)
        checks = await verify(pg.dsn, traffic.acks)
        doc["sidecar_errors"] = server.error_lines()
        if plan.keep:
            doc["workdir"] = str(workdir)
        if not server.alive():
            raise RuntimeError(f"the sidecar died:\n{server.log_tail()}")
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop, "immediate")
        if not plan.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    after_warmup = [s for s in samples if s["t_s"] >= plan.warmup_s]
    window = [s["rss_mib"] for s in after_warmup[:3]] or [samples[-1]["rss_mib"]]
    rss_base = statistics.median(window)
    rss_final = statistics.median(s["rss_mib"] for s in final)
    growth = rss_final / rss_base - 1 if rss_base else 0.0
    peak = max((s["rss_mib"] for s in after_warmup), default=rss_final)
    fds_base = statistics.median(s["fds"] for s in after_warmup[:3]) if after_warmup else None
    doc.update(
        outages=outage_events,
        samples=samples,
        final_samples=final,
        traffic={
            "answers": dict(sorted(traffic.answers.items())),
            "client_failures": dict(sorted(traffic.failures.items())),
            "problems": dict(sorted(traffic.problems.items())),
        },
        writes=checks,
        memory={
            "rss_mib_at_warmup_end": rss_base,
            "rss_mib_final": rss_final,
            "rss_mib_peak_after_warmup": peak,
            "rss_growth": round(growth, 4),
            "fds_at_warmup_end": fds_base,
            "fds_peak_after_warmup": max((s["fds"] for s in after_warmup), default=None),
            "fds_final_idle": final[-1]["fds"],
            "journal_bytes_final": final[-1].get("journal_disk_bytes"),
            "journal_bytes_peak": max(
                (s.get("journal_disk_bytes") or 0 for s in samples), default=None
            ),
            # Trends over the run after the warm-up, per hour (least squares over every sample).
            "rss_mib_slope_per_hour": slope_per_hour(after_warmup, "rss_mib"),
            "fds_slope_per_hour": slope_per_hour(after_warmup, "fds"),
            "threads_slope_per_hour": slope_per_hour(after_warmup, "threads"),
            "journal_bytes_slope_per_hour": slope_per_hour(after_warmup, "journal_disk_bytes"),
            # Where RSS goes: C memory in use, what glibc keeps free, Python's live blocks.
            "c_in_use_mib_slope_per_hour": slope_per_hour(after_warmup, "c_in_use_mib"),
            "c_free_mib_slope_per_hour": slope_per_hour(after_warmup, "c_free_mib"),
            "python_blocks_slope_per_hour": slope_per_hour(after_warmup, "python_blocks"),
            "replica_agents_final": final[-1].get("replica_agents"),
        },
    )
    slope = doc["memory"]["rss_mib_slope_per_hour"]
    judged_s = (after_warmup[-1]["t_s"] - after_warmup[0]["t_s"]) if after_warmup else 0.0
    slope_share = slope / rss_base if slope is not None and rss_base else None
    doc["acceptance"] = {
        # A trend needs time to show above the allocator's noise: judged from an hour on.
        "rss_slope_per_hour_after_warmup": {
            "value": round(slope_share, 4) if slope_share is not None else None,
            "target": f"< {plan.max_rss_slope:g} (judged when at least 1 h follows the warm-up)",
            "pass": judged_s < 3600
            or (slope_share is not None and slope_share < plan.max_rss_slope),
        },
        "rss_growth_after_warmup": {
            "value": round(growth, 4),
            "target": f"< {plan.max_rss_growth:g}",
            "pass": growth < plan.max_rss_growth,
        },
        "acknowledged_writes_missing": {
            "value": checks["missing"],
            "target": "== 0",
            "pass": checks["missing"] == 0,
        },
        "counted_twice": {
            "value": checks["counted_twice_agents"],
            "target": "== 0",
            "pass": checks["counted_twice_agents"] == 0,
        },
        "journal_drained": {"value": drained, "target": "true", "pass": drained},
    }
    doc["passed"] = all(v["pass"] for v in doc["acceptance"].values())
    return doc


def report(doc: dict[str, Any]) -> str:
    mem, w = doc["memory"], doc["writes"]
    lines = [
        machine_line(doc["machine"]),
        f"command: {doc['command']}",
        f"outages: {len(doc['outages'])}, samples: {len(doc['samples'])}",
        f"RSS: {mem['rss_mib_at_warmup_end']} MiB after warm-up -> {mem['rss_mib_final']} MiB "
        f"at the end ({mem['rss_growth']:+.1%}), peak {mem['rss_mib_peak_after_warmup']} MiB",
        f"trend after warm-up, per hour: RSS {mem.get('rss_mib_slope_per_hour')} MiB, "
        f"fds {mem.get('fds_slope_per_hour')}, threads {mem.get('threads_slope_per_hour')}, "
        f"journal {mem.get('journal_bytes_slope_per_hour')} bytes, "
        f"C heap in use {mem.get('c_in_use_mib_slope_per_hour')} MiB, "
        f"kept free {mem.get('c_free_mib_slope_per_hour')} MiB, "
        f"Python blocks {mem.get('python_blocks_slope_per_hour')}",
        f"fds: {mem['fds_at_warmup_end']} after warm-up, peak {mem['fds_peak_after_warmup']}, "
        f"{mem['fds_final_idle']} idle at the end; journal "
        f"{mem['journal_bytes_final']} bytes; replica {mem['replica_agents_final']} agents",
        f"writes acknowledged: {w['acknowledged']} ({w['journaled_202']} journaled), "
        f"missing {w['missing']}, rejected {w['rejected']}, "
        f"counted twice {w['counted_twice_agents']}",
    ]
    errs = doc.get("sidecar_errors", {})
    lines.append(f"sidecar log lines at level error: {errs.get('count', 0)}")
    lines.append(f"answers: {doc['traffic']['answers']}")
    if doc["traffic"].get("problems"):
        lines.append(f"refusals and errors by problem type: {doc['traffic']['problems']}")
    lines += replica_memory_lines(doc.get("replica_memory", {}))
    lines += acceptance_lines(doc["acceptance"])
    return "\n".join(lines)


# How long the sidecar remembers performance event ids it has seen counted: its memory grows for
# that long by design, then stays level.
EVENT_MEMORY_S = counted_events.TTL_S


def default_warmup(total_s: float) -> float:
    """The warm-up covers the first outage and the first periodic replica resync (60 s by
    default), which both raise the allocator's high-water mark once, and, when the run leaves at
    least four minutes after it, the time the sidecar's event-id memory takes to fill: without
    it, a 20-minute run judged 15 minutes of designed growth as a leak."""
    warmup = max(75.0, 0.2 * total_s)
    filled = EVENT_MEMORY_S + 60.0
    return filled if warmup < filled <= total_s - 240.0 else warmup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES", "20")),
        help="length of the run (default: $SOAK_MINUTES or 20)",
    )
    parser.add_argument(
        "--hours", type=float, help="length of the run in hours (instead of --minutes)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--outage-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds; default 16 min when 4 are left after it, else max(75 s, 20%% of the run)",
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--read-mode", choices=("database", "replica"), default="database")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=0.01,
        help="RSS trend after warm-up, per hour, as a share of RSS at its end (default 1%%)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--replica-memory", type=int, metavar="N", help="only print the replica's memory for N"
    )
    args = parser.parse_args(argv)
    if args.replica_memory is not None:
        sys.stdout.write(orjson.dumps(replica_memory(args.replica_memory)).decode() + "\n")
        return 0
    if args.hours is not None:
        args.minutes = args.hours * 60
    if args.minutes <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error("minutes, rate and sample-every must be positive")
    total = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else default_warmup(total)
    if warmup >= total:
        parser.error("the warm-up must be shorter than the run")
    plan = SoakPlan(
        minutes=args.minutes,
        rate=args.rate,
        sample_every_s=args.sample_every,
        outage_every_s=args.outage_every,
        outage_s=args.outage_seconds,
        warmup_s=warmup,
        agents=args.agents,
        read_mode=args.read_mode,
        max_rss_growth=args.max_rss_growth,
        max_rss_slope=args.max_rss_slope,
        out=args.out or result_path("soak"),
        keep=args.keep,
    )
    doc = run_until_terminated(soak(plan))
    publish(plan.out, doc, report)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
