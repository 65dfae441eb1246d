"""``python -m bench``: the sidecar against its baselines, measured in one run on this machine.

Starts an embedded PostgreSQL, two sidecars (``read_mode=database`` and ``read_mode=replica``)
and the baselines (``bench.baselines``: bare aiohttp, direct asyncpg, and for writes direct
asyncpg leaving the sidecar's rows too), each in its own process, seeds 1,000 agents (and 10,000
more in a second tenant, for capability queries), then drives every target on loopback with the
load generator (``bench.loadgen``, or wrk for saturation when it is installed):

- ``get``: get by id, cycling over the seeded agents; the replica-mode sidecar and the bare app
  also server-bound (each alone on one core, one generator on the other);
- ``query``: capability queries over the 1,000 agents (five query shapes, cycled), and in replica
  mode over the 10,000 agents against asyncpg on that tenant;
- ``register``: a new agent per request;
- ``performance``: one task outcome per request, cycling over the seeded agents;
- ``down``: get by id on both sidecars after PostgreSQL was stopped and the breaker opened,
  held to the replica-mode sidecar's healthy reads measured right before (``down-before``).

For each (workload, target): throughput at saturation (closed loop), server CPU per request, and
latency percentiles at a fixed open-loop rate (1,000 req/s; capability queries also at 200
req/s). The machine is shared and has two cores, so the figures that matter are the ratios
against the baselines measured in the same run. The result is one JSON file under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchmark_profile import profile_sidecar
from bench.benchmark_steps import (
    ALL_WORKLOADS,
    SAME_WORK,
    SAME_WORK_1RT,
    Bench,
    BenchTokens,
    Plan,
    core_split,
)
from bench.benchmark_verdict import acceptance, ratios, report, write_summary
from bench.client import http
from bench.dataset import LARGE_TENANT, QUERIES, READ_TENANT, seed, seed_with_copy
from bench.loadgen_wrk import find_wrk
from bench.outages import recover, trip_breakers
from bench.replica_memory import replica_memory_in_child
from bench.reporting import logger, opening, publish, result_path
from bench.servers import Server, baseline, postgres_root, sidecar
from bench.status import breaker_summary, status_of, wait_replica
from bench.stopping import run_until_terminated

_log = logger("bench")


async def run(plan: Plan) -> dict[str, Any]:
    from proxy.store.embedded import EmbeddedPostgres

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-bench-"))
    pg_root, pg_storage = postgres_root(workdir, in_memory=plan.postgres_in_memory)
    pg = EmbeddedPostgres(root=pg_root)
    tokens = BenchTokens.new()
    servers: list[Server] = []
    writes = bool({"register", "performance"} & set(plan.workloads))
    large = plan.large_agents if "query" in plan.workloads else 0
    doc: dict[str, Any] = {
        **opening("registry-proxy benchmark", "bench", quote=True),
        "plan": {
            "duration_s": plan.duration_s,
            "warmup_s": plan.warmup_s,
            "rate": plan.rate,
            "query_rate": plan.query_rate,
            "connections": plan.connections,
            "open_connections": plan.open_connections,
            "generator_processes": plan.processes,
            "rounds": plan.rounds,
            "open_rounds_of_writes": plan.open_rounds,
            "agents": plan.agents,
            "large_agents": large,
            "server_bound_connections": plan.pinned_connections,
            "postgres_storage": pg_storage,
            "saturation_tool": "wrk" if plan.use_wrk and find_wrk() else "python",
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
        # Direct asyncpg writing the sidecar's rows, as a transaction and in one statement.
        same_work = [
            baseline(name, "asyncpg", workdir=workdir, dsn=pg.dsn, writes=kind)
            for name, kind in ((SAME_WORK, "ledger"), (SAME_WORK_1RT, "ledger-1rt"))
            if writes
        ]
        # Direct asyncpg reading the large tenant, for its capability queries.
        apg_large = baseline(
            "asyncpg-large", "asyncpg", workdir=workdir, dsn=pg.dsn, tenant=LARGE_TENANT
        )
        baselines = [bare, apg, *same_work, *([apg_large] if large else [])]
        servers = [db, rep, *baselines]
        db.start()
        await db.wait_until("/readyz", 60)  # the schema is migrated once it is ready
        for s in (rep, *baselines):
            s.start()
        await rep.wait_until("/readyz", 60)
        for s in baselines:
            await s.wait_until("/healthz", 30)
        _log(f"seeding {plan.agents} agents")
        ids = await seed(db.url, tokens.read_tenant, plan.agents)
        for s in (db, rep):
            await wait_replica(s, tokens.read_tenant, plan.agents, 60)
        doc["data"] = {
            "tenant": READ_TENANT,
            "agents": len(ids),
            "query_results_at_limit_100": await _matches(db, tokens.read_tenant),
        }
        if large:
            _log(f"seeding {large} agents in tenant {LARGE_TENANT} with COPY")
            seeded = time.monotonic()
            await seed_with_copy(pg.dsn, LARGE_TENANT, large)
            copied_s = time.monotonic() - seeded
            for s in (db, rep):
                await wait_replica(s, tokens.large_tenant, large, 120)
            doc["data"]["large"] = {
                "tenant": LARGE_TENANT,
                "agents": large,
                "copy_s": round(copied_s, 2),
                "in_both_replicas_s": round(time.monotonic() - seeded, 2),
                "query_results_at_limit_100": await _matches(db, tokens.large_tenant),
            }
        by_name = {"bare": bare, "asyncpg": apg, "sidecar-database": db, "sidecar-replica": rep}
        by_name.update({s.name: s for s in same_work})
        b = Bench(plan, tokens, by_name, ids, pg.pid(), pg.dsn)
        results: dict[str, Any] = {}
        all_targets = ["bare", "asyncpg", "sidecar-database", "sidecar-replica"]
        write_targets = ["bare", "asyncpg", SAME_WORK, SAME_WORK_1RT, "sidecar-database"]
        if "get" in plan.workloads:
            results["get"] = await b.measure("get", all_targets, [plan.rate], plan.rounds)
            cores = core_split()
            if cores is not None:
                results["get-server-bound"] = await b.measure(
                    "get", ["bare", "sidecar-replica"], [], plan.rounds, cores=cores
                )
        if "query" in plan.workloads:
            rates = [plan.rate] if plan.query_rate == plan.rate else [plan.query_rate, plan.rate]
            results["query"] = await b.measure("query", all_targets, rates, 1)
            if large:
                results["query-large"] = await b.measure(
                    "query-large",
                    ["asyncpg", "sidecar-replica"],
                    rates,
                    1,
                    servers={"asyncpg": apg_large},
                )
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
            if "query" in plan.workloads:
                doc["profile"]["sidecar-replica-query"] = await profile_sidecar(
                    b, rep, "sidecar-replica-query", plan.profile_dir, "query"
                )
        # The outage comes before the write workloads, so the replica holds the same 1,000
        # agents as in the healthy get step.
        if "down" in plan.workloads:
            # Healthy replica reads again, just before the outage, to hold its reads to: on a
            # shared machine two runs minutes apart also differ by what the machine did between.
            results["down-before"] = await b.measure("get", ["sidecar-replica"], [], plan.rounds)
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
            if writes:
                _log("PostgreSQL starting again")
                await asyncio.to_thread(pg.start)
                b.pg_pid = pg.pid()
                await recover([db, rep], apg, tokens.read_tenant, ids[0], 60)
                for s in same_work:
                    await recover([], s, tokens.read_tenant, ids[0], 60)
        for write in ("register", "performance"):
            if write not in plan.workloads:
                continue
            results[write] = await b.measure(
                write, write_targets, [plan.rate], plan.rounds, open_rounds=plan.open_rounds
            )
            if plan.profile_dir is not None:
                # Where a write's time goes in the sidecar itself (PostgreSQL is on the other
                # core with everything else).
                doc.setdefault("profile", {})[f"sidecar-database-{write}"] = await profile_sidecar(
                    b, db, f"sidecar-database-{write}", plan.profile_dir, write
                )
        doc["results"] = results
        doc["ratios"] = ratios(results, plan)
        doc["writes"] = write_summary(results, plan)
        doc["acceptance"] = acceptance(results, plan)
        _log("replica memory per 10,000 agents")
        doc["replica_memory"] = await asyncio.to_thread(replica_memory_in_child, 10_000)
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
            _log(f"work folder kept: {workdir} (PostgreSQL: {pg_root})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(pg_root, ignore_errors=True)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


async def _matches(server: Server, token: str) -> dict[str, int | None]:
    """How many agents each benchmark query matches (at limit 100): what the queries rank."""
    out = {}
    for q in QUERIES:
        _, body = await http(server.url + q.replace("limit=10", "limit=100"), token=token)
        out[q] = len(body["results"]) if isinstance(body, dict) else None
    return out


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
        "--rounds",
        type=int,
        default=2,
        help="saturation rounds of get (both ways), down and the writes, interleaved (best kept)",
    )
    parser.add_argument(
        "--open-rounds",
        type=int,
        default=3,
        help="open-loop windows per target of the write steps, interleaved, pooled into one run",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help=f"comma-separated subset of {','.join(ALL_WORKLOADS)}",
    )
    parser.add_argument("--agents", type=int, default=1000, help="agents seeded")
    parser.add_argument(
        "--large-agents",
        type=int,
        default=10_000,
        help="agents of the second tenant, for capability queries (0: none)",
    )
    parser.add_argument(
        "--server-bound-connections",
        type=int,
        default=16,
        help="connections of the server-bound get by id (one generator thread)",
    )
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
    parser.add_argument(
        "--postgres-on-disk",
        action="store_true",
        help="keep PostgreSQL's files on disk, not in /dev/shm",
    )
    args = parser.parse_args(argv)
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = set(workloads) - set(ALL_WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or args.query_rate <= 0:
        parser.error("durations and rates must be positive")
    out = args.out or result_path("bench")
    plan = Plan(
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        query_rate=args.query_rate,
        connections=args.connections,
        open_connections=args.open_connections,
        processes=args.processes,
        rounds=max(1, args.rounds),
        open_rounds=max(1, args.open_rounds),
        workloads=workloads,
        agents=args.agents,
        use_wrk=not args.no_wrk,
        profile_dir=args.profile,
        profile_s=args.profile_seconds,
        settle_s=args.settle,
        keep=args.keep,
        large_agents=max(0, args.large_agents),
        pinned_connections=max(1, args.server_bound_connections),
        postgres_in_memory=not args.postgres_on_disk,
    )
    doc = run_until_terminated(run(plan))
    publish(out, doc, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
