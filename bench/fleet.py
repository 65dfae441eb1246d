"""``python -m bench.fleet``: N sidecars sharing one PostgreSQL, what the fleet costs it.

One sidecar per pod makes the database's load a multiple of the pods: this run starts an embedded
PostgreSQL, optionally PgBouncer in transaction pooling in front of it, and N sidecar processes
(``registry-proxy serve``) with the same tenants and tokens, in replica read mode. Topologies:

- ``--through-pgbouncer`` (the default where the sidecar has ``database.pooler``): each sidecar's
  pool goes through PgBouncer, its direct DSN (the replica's LISTEN, the migrations) straight to
  PostgreSQL;
- ``--direct``: every sidecar's connections straight to PostgreSQL.

Phases, in order:

1. idle: after ``--settle`` seconds (the pools' burst connections close after
   ``database.idle_timeout_ms``, 30 s), a quiet ``--idle-seconds`` window: PostgreSQL's client
   backends by kind and state (``pg_stat_activity``), PgBouncer's server connections (``SHOW
   POOLS``), and the fleet's statements (``pg_stat_statements``, the harness's own left out) and
   transactions (``pg_stat_database``, the harness's own taken off) per second, per sidecar;
2. load, ``--duration`` seconds: ``--clients-per-sidecar`` paced clients on every sidecar (reads
   by id, capability queries, registrations, performance reports, heartbeats); meanwhile probe
   agents are renamed through one sidecar after another and every other sidecar is asked for them
   by id until it shows the new revision (propagation, from the write's answer);
3. outage: PostgreSQL stopped for ``--outage-seconds`` (PgBouncer stays up) while the clients go
   on, then started again: the time until every sidecar's breaker is closed and its journal empty
   (``/v1/status`` with an admin token), and the peak of backends while they recover.

At the end every acknowledged write is checked in PostgreSQL (``bench.soak_verify``): the run
fails (exit 1) when one is missing, a performance event was counted twice, a journal did not
drain, or a change never reached a sidecar.

    make fleet FLEET_ARGS="--sidecars 4"
    python -m bench.fleet --sidecars 2 --duration 10 --outage-seconds 5 --idle-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.dataset import seed
from bench.fleet_drain import DrainWatch
from bench.fleet_observe import POOL_ROLE, Observer, Sampler, prepare, rates
from bench.fleet_pgbouncer import Bouncer
from bench.fleet_report import acceptance, report
from bench.fleet_setup import (
    PROBES,
    make_sidecars,
    pooler_supported,
    register_probes,
    start_all,
    start_postgres,
)
from bench.fleet_traffic import FleetTraffic, Propagation
from bench.reporting import logger, opening, publish, result_path
from bench.servers import Server, Tokens
from bench.soak_verify import verify
from bench.status import wait_drained, wait_replica

_log = logger("fleet")


@dataclass(frozen=True)
class FleetPlan:
    sidecars: int
    clients_per_sidecar: int
    client_rate: float
    duration_s: float
    outage_s: float
    idle_s: float
    settle_s: float
    pool_size: int
    pgbouncer_pool: int
    pgbouncer_login_retry_s: int | None
    topology: str
    write_targets: str
    agents: int
    change_gap_s: float
    drain_timeout_s: float
    out: Path
    keep: bool = False
    max_connections: int = 100


async def _idle(plan: FleetPlan, observer: Observer, bouncer: Bouncer | None) -> dict[str, Any]:
    _log(f"idle: settling {plan.settle_s:g} s, then counting for {plan.idle_s:g} s")
    await asyncio.sleep(plan.settle_s)
    at_start = await observer.backends()
    pools_start = await bouncer.pools() if bouncer else None
    before = await observer.counters()
    await asyncio.sleep(plan.idle_s)
    after = await observer.counters()
    at_end = await observer.backends()
    return {
        "backends_at_start": at_start,
        "backends_at_end": at_end,
        "pgbouncer_at_start": pools_start,
        "pgbouncer_at_end": await bouncer.pools() if bouncer else None,
        "queries": rates(before, after, plan.sidecars),
    }


async def _outage(
    plan: FleetPlan, pg: Any, servers: list[Server], admin: str, marks: list[Any]
) -> dict[str, Any]:
    """Stop PostgreSQL for `outage_s`, start it again and wait for every journal to drain; the
    clients keep going. `marks` are what follows the phase (the traffic and the sampler)."""
    watch = DrainWatch(servers, admin)
    watching = asyncio.create_task(watch.run(plan.drain_timeout_s))
    _log(f"outage: stopping PostgreSQL for {plan.outage_s:g} s")
    t_stop = time.monotonic()
    await asyncio.to_thread(pg.stop, "fast")
    await asyncio.sleep(max(0.0, t_stop + plan.outage_s - time.monotonic()))
    await asyncio.to_thread(pg.start)
    for mark in marks:
        mark.phase = "recovery"
    watch.postgres_back()
    down_s = round(time.monotonic() - t_stop, 1)
    _log("outage: PostgreSQL started again; waiting for every journal to drain")
    figures = await watching
    return {"down_s": down_s, **figures}


async def fleet(plan: FleetPlan) -> dict[str, Any]:
    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-fleet-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens, admin = Tokens.new(), "fleet-admin-" + secrets.token_hex(16)
    servers: list[Server] = []
    bouncer: Bouncer | None = None
    observer = Observer(pg.host, pg.port, "postgres")
    through = plan.topology == "pgbouncer"
    # The clients, the sampler and the prober: cancelled if the run fails halfway.
    tasks: list[asyncio.Task[None]] = []
    doc: dict[str, Any] = {
        **opening("registry-proxy fleet", "bench.fleet"),
        "plan": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in plan.__dict__.items()
            if k not in ("out", "keep")
        },
    }
    try:
        await asyncio.to_thread(start_postgres, pg, plan.max_connections)
        postgres = await prepare(pg.dsn)
        if through:
            bouncer = Bouncer(
                workdir / "pgbouncer",
                upstream_port=pg.port,
                database="postgres",
                server_user=POOL_ROLE,
                client_user="postgres",
                pool_size=plan.pgbouncer_pool,
                # Room for every pool at its ceiling (requests, background work, the probe).
                max_client_conn=plan.sidecars * (plan.pool_size + 5 + 2) + 20,
                login_retry_s=plan.pgbouncer_login_retry_s,
            )
            await bouncer.start()
        doc["topology"] = {
            "mode": plan.topology,
            "pool_dsn": "PgBouncer (transaction pooling)" if through else "PostgreSQL",
            "direct_dsn": "PostgreSQL" if pooler_supported() else None,
            "pgbouncer": bouncer.settings() if bouncer else None,
            "postgres": postgres,
            "read_mode": "replica",
        }
        servers = make_sidecars(
            plan.sidecars,
            pg=pg,
            bouncer=bouncer,
            tokens=tokens,
            admin=admin,
            pool_size=plan.pool_size,
            workdir=workdir,
        )
        _log(f"starting {plan.sidecars} sidecars ({plan.topology})")
        await start_all(servers)
        _log(f"seeding {plan.agents} agents")
        ids = await seed(servers[0].url, tokens.read_tenant, plan.agents)
        probes = await register_probes(servers[0], tokens.read_tenant)
        await asyncio.gather(
            *(wait_replica(s, tokens.read_tenant, plan.agents + PROBES, 120) for s in servers)
        )
        doc["idle"] = await _idle(plan, observer, bouncer)

        started = time.monotonic()
        sampler = Sampler(observer, bouncer.pools if bouncer else None, 0.5, started)
        urls = [s.url for s in servers]
        traffic = FleetTraffic(
            urls, tokens, ids, plan.clients_per_sidecar, plan.client_rate, plan.write_targets
        )
        propagation = Propagation(urls, tokens.read_tenant, probes)
        stop_sampler, stop_traffic, stop_changes = (asyncio.Event() for _ in range(3))
        tasks += [
            asyncio.create_task(sampler.run(stop_sampler)),
            asyncio.create_task(traffic.run(stop_traffic)),
        ]
        _log(f"load: {plan.clients_per_sidecar} clients per sidecar for {plan.duration_s:g} s")
        before = await observer.counters()
        tasks.append(asyncio.create_task(propagation.run(stop_changes, plan.change_gap_s)))
        await asyncio.sleep(plan.duration_s)
        stop_changes.set()
        await tasks[2]
        after = await observer.counters()
        doc["load"] = {"queries": rates(before, after, plan.sidecars)}

        sampler.phase = traffic.phase = "outage"
        doc["outage"] = await _outage(plan, pg, servers, admin, [sampler, traffic])
        # From the end of the load to the last journal drained (the counts outlive a clean
        # stop): the replay's transactions, and the deadlocks and rollbacks of the recovery.
        doc["outage"]["queries"] = rates(after, await observer.counters(), plan.sidecars)
        # The clients go on a little after the last journal drained, then stop.
        await asyncio.sleep(min(5.0, plan.duration_s))
        stop_traffic.set()
        await tasks[1]
        sampler.phase = "after"
        stop_sampler.set()
        await tasks[0]
        drained = await asyncio.gather(
            *(wait_drained(s, admin, plan.drain_timeout_s, every_s=0.5) for s in servers)
        )
        _log(f"checking {len(traffic.acks)} acknowledged writes in PostgreSQL")
        doc["writes"] = await verify(pg.dsn, traffic.acks)
        doc["journals_drained_at_end"] = all(ok for ok, _ in drained)
        doc["traffic"] = traffic.figures()
        doc["propagation"] = propagation.figures()
        doc["peaks"] = {
            "load": sampler.peak(("load",)),
            "outage": sampler.peak(("outage",)),
            "recovery": sampler.peak(("recovery",)),
        }
        doc["samples"] = [
            {
                "t_s": s["t_s"],
                "phase": s["phase"],
                "backends": (s["backends"] or {}).get("total"),
                "pgbouncer_servers": (s.get("pgbouncer") or {}).get("servers"),
            }
            for s in sampler.samples
        ]
        doc["sidecar_errors"] = {s.name: s.error_lines(limit=3) for s in servers}
        dead = [s.name for s in servers if not s.alive()]
        if dead:
            raise RuntimeError(f"sidecars died: {dead}:\n{servers[0].log_tail()}")
        if plan.keep:
            doc["workdir"] = str(workdir)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await observer.close()
        for s in servers:
            s.stop()
        if bouncer is not None:
            bouncer.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop, "immediate")
        if not plan.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["acceptance"] = acceptance(doc)
    doc["passed"] = all(c["pass"] for c in doc["acceptance"].values())
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--sidecars", type=int, default=8, help="sidecar processes (default 8)")
    add("--clients-per-sidecar", type=int, default=4, help="paced clients each (default 4)")
    add("--client-rate", type=float, default=10.0, help="requests/s of one client (default 10)")
    add("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    add("--outage-seconds", type=float, default=30.0, help="PostgreSQL down (default 30)")
    add("--idle-seconds", type=float, default=60.0, help="the quiet window counted (default 60)")
    add("--settle", type=float, default=35.0, help="seconds before it (default 35)")
    add("--pool-size", type=int, default=10, help="database.pool_max_size (default 10)")
    add("--pgbouncer-pool", type=int, default=20, help="PgBouncer default_pool_size (20)")
    add(
        "--max-connections",
        type=int,
        default=100,
        help="PostgreSQL max_connections (default 100, PostgreSQL's own default)",
    )
    add(
        "--pgbouncer-login-retry",
        type=int,
        help="PgBouncer server_login_retry, seconds (default: PgBouncer's own, 15)",
    )
    add(
        "--write-targets",
        choices=("own", "any"),
        default="own",
        help="heartbeats and performance reports of a sidecar go to its own share of the agents "
        "(own, default) or to any agent, the same rows from every sidecar (any)",
    )
    add("--agents", type=int, default=200, help="agents seeded (default 200)")
    add("--change-gap", type=float, default=0.25, help="seconds between changes (0.25)")
    add("--drain-timeout", type=float, default=180.0, help="seconds (default 180)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--through-pgbouncer",
        dest="topology",
        action="store_const",
        const="pgbouncer",
        help="pools through PgBouncer, direct DSN to PostgreSQL (default where supported)",
    )
    where.add_argument(
        "--direct",
        dest="topology",
        action="store_const",
        const="direct",
        help="every sidecar straight to PostgreSQL",
    )
    add("--out", type=Path, help="result file (default bench/results/fleet-<UTC>.json)")
    add("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    topology = args.topology or ("pgbouncer" if pooler_supported() else "direct")
    if topology == "pgbouncer" and not pooler_supported():
        parser.error("this sidecar has no database.pooler / database_direct_url: use --direct")
    if args.sidecars < 2:
        parser.error("a fleet needs at least 2 sidecars (propagation goes from one to another)")
    if args.pool_size < 2:
        parser.error("--pool-size must be at least database.pool_min_size (2)")
    positive = ("clients_per_sidecar", "client_rate", "duration", "outage_seconds", "idle_seconds")
    if any(getattr(args, k) <= 0 for k in positive):
        parser.error("clients, rates, durations and the outage must be positive")
    plan = FleetPlan(
        sidecars=args.sidecars,
        clients_per_sidecar=args.clients_per_sidecar,
        client_rate=args.client_rate,
        duration_s=args.duration,
        outage_s=args.outage_seconds,
        idle_s=args.idle_seconds,
        settle_s=args.settle,
        pool_size=args.pool_size,
        pgbouncer_pool=args.pgbouncer_pool,
        pgbouncer_login_retry_s=args.pgbouncer_login_retry,
        topology=topology,
        write_targets=args.write_targets,
        agents=args.agents,
        change_gap_s=args.change_gap,
        drain_timeout_s=args.drain_timeout,
        max_connections=args.max_connections,
        out=args.out or result_path("fleet"),
        keep=args.keep,
    )
    doc = asyncio.run(fleet(plan))
    publish(plan.out, doc, report)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
