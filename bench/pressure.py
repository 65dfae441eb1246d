"""``python -m bench.pressure``: many paced clients, a cut of PostgreSQL under their load, a heal.

One sidecar process (``registry-proxy serve``, default settings but for the bench's rate limit and
agent cap, see :func:`bench.servers.sidecar`) on an embedded PostgreSQL reached through the
Toxiproxy-compatible server (``python -m chaos.toxiproxy``), driven with the ``toxiproxy`` client.
After seeding ``--agents`` agents, ``--clients`` clients (one aiohttp connection each) send a mix
of 60% get by id, 15% capability queries and 25% writes (10% performance, 7% load, 6% heartbeat,
2% registrations; every write with its own ``Idempotency-Key``, every performance event with its
own ``event_id``). Each client waits a random think time (exponential, mean ``--think-ms``) between
its requests: 200 clients at 200 ms offer about 1,000 requests/s (at 100 ms, 2,000: more than
ten pooled connections serve through the Python Toxiproxy on a 2-core machine); ``--think-ms 0``
is a saturating closed loop.

Phases: ``warm`` (PostgreSQL reachable), ``cut`` (the proxy in front of PostgreSQL disabled: every
connection dropped, none accepted), ``heal`` (enabled again, the load goes on). Every answer is
recorded with the phase it was sent in, its status, problem type, ``X-Registry-Source``,
``X-Registry-Fallback`` and latency, and ``/v1/status`` is polled every 100 ms. When the load
stops and the journal has drained, PostgreSQL is read directly to check the writes.

Exit 1 when:

- any answer is a 5xx other than ``503`` with problem type ``.../overloaded``, or a request got no
  answer at all;
- the breaker was not ``closed`` or the journal not empty within ``--heal-deadline`` (10 s) of the
  heal, while the load went on;
- the p99 latency of the answers given exceeds ``--max-p99-ms`` (100 ms) in any phase;
- an acknowledged write (200, 201, 202, 204) is not applied exactly once (its op id applied in the
  ``operations`` ledger of the tenant, its event in ``performance_events``, its agent registered,
  every agent's ``task_count`` equal to its stored events), or a refused write (503, 4xx) was
  applied.

The result is ``bench/results/pressure-<UTC time>.json``; a summary goes to stdout.

    make pressure
    python -m bench.pressure --clients 200 --think-ms 200 --warm 5 --cut 10 --heal 20
    python -m bench.pressure --think-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.collector import collector_paused
from bench.cpu import cpu_delta, cpu_snapshot, process_tree
from bench.dataset import seed
from bench.metrics import metrics_figures, metrics_snapshot
from bench.outages import behind_toxiproxy, toxiproxy_pids
from bench.pressure_report import report, summarise
from bench.pressure_traffic import (
    CLIENT_TIMEOUT_S,
    MIX,
    Run,
    client_loop,
    generator_lag,
    poll_status,
)
from bench.pressure_verify import verify
from bench.reporting import logger, opening, publish, result_path
from bench.servers import AdminTokens, Server, sidecar
from bench.status import full_status, wait_drained, wait_replica

_log = logger("pressure")

# Hard bounds on what one run may ask for: the machine is shared.
MAX_CLIENTS = 2_000
MAX_PHASE_S = 600.0
MAX_AGENTS = 20_000


@dataclass(frozen=True)
class Plan:
    clients: int
    think_ms: float
    warm_s: float
    cut_s: float
    heal_s: float
    agents: int
    heal_deadline_s: float
    max_p99_ms: float
    drain_timeout_s: float
    seed: int
    out: Path
    keep: bool = False


def _process_groups(sidecar_pid: int, pg_pid: int | None) -> dict[str, list[int]]:
    """The processes whose CPU time is reported: PostgreSQL with its backends of the moment."""
    return {
        "sidecar": [sidecar_pid],
        "postgres": process_tree(pg_pid) if pg_pid else [],
        "toxiproxy": toxiproxy_pids(),
        "generator": [os.getpid()],
    }


async def load(plan: Plan, run: Run, server: Server, pg_proxy: Any) -> None:
    """The three phases; the cut and the heal happen on a thread (the client is synchronous)."""
    at_start = await metrics_snapshot(server)
    # The generator's own garbage collections would stall every client at once and show up as
    # the sidecar's latency: none during the load (it keeps a few hundred MiB at most).
    with collector_paused():
        run.t0 = time.monotonic()
        tasks = [asyncio.create_task(client_loop(run, i, plan.seed)) for i in range(plan.clients)]
        tasks.append(asyncio.create_task(poll_status(run)))
        tasks.append(asyncio.create_task(generator_lag(run)))
        try:
            run.marks["warm"] = 0.0
            await asyncio.sleep(plan.warm_s)
            at_cut = await metrics_snapshot(server)
            _log("cut: disabling the proxy in front of PostgreSQL")
            run.phase = "cut"
            run.marks["cut"] = run.now()
            await asyncio.to_thread(pg_proxy.disable)
            run.marks["cut_done"] = run.now()
            await asyncio.sleep(max(0.0, run.marks["cut"] + plan.cut_s - run.now()))
            at_heal = await metrics_snapshot(server)
            _log("heal: enabling the proxy again")
            run.marks["heal_call"] = run.now()
            await asyncio.to_thread(pg_proxy.enable)
            run.phase = "heal"
            run.marks["heal"] = run.now()
            run.marks["heal_wall"] = time.time()
            await asyncio.sleep(max(0.0, run.marks["heal"] + plan.heal_s - run.now()))
            run.marks["load_end"] = run.now()
            run.stopping = True
            _log("load stopped; waiting for the requests in flight")
            await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT_S + 5)
            at_end = await metrics_snapshot(server)
        finally:
            run.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for name, before, after in (
        ("warm", at_start, at_cut),
        ("cut", at_cut, at_heal),
        ("heal", at_heal, at_end),
    ):
        run.counted[name] = metrics_figures(before, after)


async def pressure(plan: Plan) -> dict[str, Any]:
    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-pressure-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens = AdminTokens.new()
    server: Server | None = None
    doc: dict[str, Any] = {
        **opening("registry-proxy pressure", "bench.pressure"),
        "plan": {
            "clients": plan.clients,
            "think_ms_mean": plan.think_ms,
            "offered_per_s": round(plan.clients * 1000 / plan.think_ms) if plan.think_ms else None,
            "warm_s": plan.warm_s,
            "cut_s": plan.cut_s,
            "heal_s": plan.heal_s,
            "agents": plan.agents,
            "mix_percent": dict(MIX),
            "heal_deadline_s": plan.heal_deadline_s,
            "max_p99_ms": plan.max_p99_ms,
            "seed": plan.seed,
            "settings": "defaults, but rate_limit 1e6/s and max_agents 1e6 (bench.sidecar)",
        },
    }
    run: Run | None = None
    try:
        async with behind_toxiproxy(pg) as (pg_proxy, dsn):
            server = sidecar("sidecar", dsn=dsn, tokens=tokens, workdir=workdir)
            server.start()
            await server.wait_until("/readyz", 60)
            _log(f"seeding {plan.agents} agents")
            ids = await seed(server.url, tokens.read_tenant, plan.agents)
            await wait_replica(server, tokens.read_tenant, plan.agents, 30)
            groups = _process_groups(server.pid, pg.pid())
            cpu_before = {k: cpu_snapshot(v) for k, v in groups.items()}
            _log(
                f"load: {plan.clients} clients, think {plan.think_ms:g} ms; warm {plan.warm_s:g} s,"
                f" cut {plan.cut_s:g} s, heal {plan.heal_s:g} s"
            )
            run = Run(server.url, tokens.read_tenant, tokens.admin, ids, plan.think_ms / 1000)
            await load(plan, run, server, pg_proxy)
            groups = _process_groups(server.pid, pg.pid())
            cpu = {k: cpu_delta(cpu_before.get(k, {}), cpu_snapshot(v)) for k, v in groups.items()}
            load_s = run.marks["load_end"]
            doc["cpu_cores_during_load"] = {k: round(v / load_s, 2) for k, v in cpu.items()}
            _log("load over; waiting for the journal to drain")
            drained, drain_s = await wait_drained(server, tokens.admin, plan.drain_timeout_s)
            doc["drain_after_load"] = {"drained": drained, "seconds": drain_s}
            doc["final_status"] = await full_status(server, tokens.admin)
            _log("checking every write against PostgreSQL")
            doc["verification"] = await verify(pg.dsn, run.answers)
            doc["sidecar_errors"] = server.error_lines()
            doc["sidecar_alive"] = server.alive()
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop, "immediate")
        if plan.keep:
            doc["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert run is not None
    return summarise(plan, run, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pressure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument(
        "--think-ms",
        type=float,
        default=200.0,
        help="mean think time between a client's requests (200); 0: a saturating closed loop",
    )
    parser.add_argument("--warm", type=float, default=5.0, help="seconds healthy (5)")
    parser.add_argument("--cut", type=float, default=10.0, help="seconds cut off (10)")
    parser.add_argument("--heal", type=float, default=20.0, help="seconds of load after (20)")
    parser.add_argument("--agents", type=int, default=1000, help="agents seeded (1000)")
    parser.add_argument(
        "--heal-deadline", type=float, default=10.0, help="seconds to close and drain (10)"
    )
    parser.add_argument("--max-p99-ms", type=float, default=100.0, help="per phase (100)")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to wait after the load (60)"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the clients' random choices")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1 to {MAX_CLIENTS}")
    if not 0 <= args.think_ms <= 60_000:
        parser.error("--think-ms must be 0 to 60000")
    for name in ("warm", "cut", "heal"):
        if not 0 < getattr(args, name) <= MAX_PHASE_S:
            parser.error(f"--{name} must be above 0 and at most {MAX_PHASE_S:g} seconds")
    if not 1 <= args.agents <= MAX_AGENTS:
        parser.error(f"--agents must be 1 to {MAX_AGENTS}")
    if not 0 < args.drain_timeout <= MAX_PHASE_S:
        parser.error(f"--drain-timeout must be above 0 and at most {MAX_PHASE_S:g}")
    plan = Plan(
        clients=args.clients,
        think_ms=args.think_ms,
        warm_s=args.warm,
        cut_s=args.cut,
        heal_s=args.heal,
        agents=args.agents,
        heal_deadline_s=args.heal_deadline,
        max_p99_ms=args.max_p99_ms,
        drain_timeout_s=args.drain_timeout,
        seed=args.seed,
        out=args.out or result_path("pressure"),
        keep=args.keep,
    )
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    doc = runner(pressure(plan))
    publish(plan.out, doc, report)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
