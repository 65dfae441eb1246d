"""``python -m bench.soak``: a bounded run of mixed traffic with periodic PostgreSQL outages.

One sidecar process in front of an embedded PostgreSQL that is stopped and started again every
``--outage-every`` seconds (clean ``pg_ctl stop -m fast``: the embedded server runs with
``synchronous_commit=off``, so a crash-style stop could lose commits PostgreSQL itself had
acknowledged, which is not what this run is about). Meanwhile a fixed-rate mix of reads and writes
runs, every write with its own ``Idempotency-Key``, and every few seconds the sidecar's RSS, open
file descriptors, journal and replica figures are sampled (psutil and ``/v1/status``).

At the end PostgreSQL is up, the journal has drained, and the run fails (exit 1) when:

- RSS after the run grew more than ``--max-rss-growth`` (10%) over RSS at the end of warm-up;
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
import itertools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.client import http
from bench.dataset import READ_TENANT, WRITE_TENANT, agent_body, seed
from bench.provenance import machine
from bench.replica_memory import replica_memory, replica_memory_lines
from bench.servers import Server, Tokens, sidecar
from bench.status import status_of

RESULTS = Path(__file__).resolve().parent / "results"
_MIB = 1024 * 1024


def _log(msg: str) -> None:
    print(f"[soak {datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- traffic ---------------------------------------------------------------------------------


@dataclass
class Ack:
    tenant: str
    op_id: str
    kind: str
    status: int
    target: str
    event_id: str | None = None


@dataclass
class Traffic:
    url: str
    tokens: Tokens
    ids: list[str]
    acks: list[Ack] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    live: list[str] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    # One slot per request: 9 get, 2 query, 2 register, 2 unregister (a get while fewer than 50
    # soak agents live, so the data set stays the same size), 3 performance, 1 load, 1 heartbeat.
    MIX: tuple[str, ...] = (
        "get", "performance", "register", "get", "query", "unregister", "get", "load", "get",
        "performance", "register", "get", "query", "unregister", "get", "heartbeat", "get",
        "performance", "get", "get",
    )  # fmt: skip

    async def one(self, session: Any, slot: int) -> None:
        kind = self.MIX[slot % len(self.MIX)]
        n = next(self.seq)
        agent = self.rng.choice(self.ids)
        read_token, write_token = self.tokens.read_tenant, self.tokens.write_tenant
        if kind == "unregister" and len(self.live) < 50:
            kind = "get"
        op_id = f"soak-{kind}-{n}"
        key = {"Idempotency-Key": op_id}
        event_id: str | None = None
        req: tuple[str, str, str, Any, dict[str, str] | None]
        if kind == "get":
            req = ("GET", f"/v1/agents/{agent}", read_token, None, None)
        elif kind == "query":
            task = self.rng.choice(("code", "review", "test", "docs", "data"))
            req = ("GET", f"/v1/agents?task_type={task}&limit=10", read_token, None, None)
        elif kind == "register":
            target = f"soak-{n}"
            body = agent_body(target, self.rng)
            req = ("POST", "/v1/agents", write_token, body, key)
            agent = target
        elif kind == "unregister":
            agent = self.live.pop(0)
            req = ("DELETE", f"/v1/agents/{agent}", write_token, None, key)
        elif kind == "performance":
            event_id = f"ev-{n}"
            body = {
                "event_id": event_id,
                "success": self.rng.random() < 0.9,
                "quality_score": round(self.rng.random(), 3),
                "latency_ms": round(self.rng.uniform(10, 5000), 1),
            }
            req = ("POST", f"/v1/agents/{agent}/performance", read_token, body, key)
        elif kind == "load":
            body = {
                "active_tasks": self.rng.randint(0, 4),
                "queued_tasks": self.rng.randint(0, 2),
                "observed_at": datetime.now(UTC).isoformat(),
            }
            req = ("PUT", f"/v1/agents/{agent}/load", read_token, body, key)
        else:
            req = ("POST", f"/v1/agents/{agent}/heartbeat", read_token, {}, key)
        method, path, token, payload, headers = req
        try:
            status, _ = await http(
                self.url + path,
                method=method,
                token=token,
                body=payload,
                headers=headers,
                session=session,
                timeout_s=10,
            )
        except OSError as exc:
            self.failures[f"{kind}:{type(exc.__cause__ or exc).__name__}"] += 1
            if kind == "unregister":
                self.live.append(agent)  # its fate is unknown: never delete it again
            return
        self.answers[f"{kind}:{status}"] += 1
        if method != "GET" and 200 <= status < 300:
            tenant = WRITE_TENANT if kind in ("register", "unregister") else READ_TENANT
            self.acks.append(Ack(tenant, op_id, kind, status, agent, event_id))
            if kind == "register":
                self.live.append(agent)

    async def run(self, rate: float, until: float) -> None:
        import aiohttp

        sem = asyncio.Semaphore(64)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:

            async def guarded(slot: int) -> None:
                try:
                    await self.one(s, slot)
                finally:
                    sem.release()

            for slot in itertools.count():
                due = t0 + slot * interval
                if due >= until:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                task = asyncio.create_task(guarded(slot))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30)


# ---- outages and samples ---------------------------------------------------------------------


async def outages(
    pg: Any, *, start: float, first_s: float, every_s: float, down_s: float, until: float
) -> list[dict[str, Any]]:
    """Stop and start PostgreSQL on a schedule; none starts too close to `until`."""
    events: list[dict[str, Any]] = []
    at = start + first_s
    while at + down_s <= until:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        _log("outage: stopping PostgreSQL")
        t_stop = time.monotonic()
        await asyncio.to_thread(pg.stop, "fast")
        await asyncio.sleep(max(0.0, t_stop + down_s - time.monotonic()))
        await asyncio.to_thread(pg.start)
        _log("outage: PostgreSQL started again")
        events.append(
            {
                "stopped_at_s": round(t_stop - start, 1),
                "down_s": round(time.monotonic() - t_stop, 1),
            }
        )
        at += every_s
    return events


async def sample(server: Server, token: str, proc: Any, start: float) -> dict[str, Any]:
    mem = proc.memory_info()
    row: dict[str, Any] = {
        "t_s": round(time.monotonic() - start, 1),
        "rss_mib": round(mem.rss / _MIB, 2),
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "cpu_percent": proc.cpu_percent(None),
    }
    try:
        doc = await status_of(server, token)
    except (OSError, RuntimeError) as exc:
        row["status_error"] = str(exc)[:200]
        return row
    row.update(
        breaker=doc["breaker"]["state"],
        journal_depth=doc["journal"]["depth"],
        journal_bytes=doc["journal"].get("size_bytes"),
        journal_outcomes_retained=doc["journal"].get("outcomes_retained"),
        replica_agents=doc["replica"]["agents"],
        replica_pending=doc["replica"].get("pending_writes"),
        replica_age_s=doc["replica"]["age_seconds"],
    )
    return row


async def sampler(
    server: Server, token: str, proc: Any, start: float, every_s: float, until: float
) -> list[dict[str, Any]]:
    rows = []
    next_at = time.monotonic()
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        row = await sample(server, token, proc, start)
        rows.append(row)
        if len(rows) % max(1, round(30 / every_s)) == 0:
            _log(
                f"t={row['t_s']}s rss={row['rss_mib']}MiB fds={row['fds']} "
                f"breaker={row.get('breaker')} journal={row.get('journal_depth')}"
            )
        next_at += every_s
    return rows


# ---- verification ----------------------------------------------------------------------------


async def verify(dsn: str, acks: list[Ack]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        tenants = [READ_TENANT, WRITE_TENANT]
        ledger = {
            (r["tenant_id"], r["op_id"]): (r["status"], r["reason"])
            for r in await conn.fetch(
                "SELECT tenant_id, op_id, status, reason FROM operations "
                "WHERE tenant_id = ANY($1::text[])",
                tenants,
            )
        }
        events = {
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM performance_events WHERE tenant_id = $1", READ_TENANT
            )
        }
        agents = {
            r["agent_id"]: r["deleted_at"] is not None
            for r in await conn.fetch(
                "SELECT agent_id, deleted_at FROM agents WHERE tenant_id = $1", WRITE_TENANT
            )
        }
        twice = await conn.fetch(
            "SELECT a.agent_id, a.task_count, count(e.event_id) AS events FROM agents a "
            "LEFT JOIN performance_events e "
            "ON e.tenant_id = a.tenant_id AND e.agent_id = a.agent_id "
            "WHERE a.tenant_id = $1 GROUP BY a.agent_id, a.task_count "
            "HAVING a.task_count <> count(e.event_id)",
            READ_TENANT,
        )
    finally:
        await conn.close()
    missing: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    by_status: Counter[str] = Counter()
    for a in acks:
        by_status[f"{a.kind}:{a.status}"] += 1
        entry = ledger.get((a.tenant, a.op_id))
        if entry is None:
            missing.append({"op_id": a.op_id, "kind": a.kind, "status": a.status, "why": "ledger"})
            continue
        if entry[0] == "rejected":
            rejected.append({"op_id": a.op_id, "kind": a.kind, "reason": entry[1]})
            continue
        effect = True
        if a.kind == "register":
            effect = a.target in agents
        elif a.kind == "unregister":
            effect = agents.get(a.target, False)
        elif a.kind == "performance":
            effect = a.event_id in events
        if not effect:
            missing.append({"op_id": a.op_id, "kind": a.kind, "status": a.status, "why": "effect"})
    return {
        "acknowledged": len(acks),
        "acknowledged_by_kind_status": dict(sorted(by_status.items())),
        "journaled_202": sum(1 for a in acks if a.status == 202),
        "missing": len(missing),
        "missing_examples": missing[:20],
        "rejected": len(rejected),
        "rejected_examples": rejected[:20],
        "counted_twice_agents": len(twice),
    }


# ---- the run ---------------------------------------------------------------------------------


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
    out: Path
    keep: bool = False


async def soak(plan: SoakPlan) -> dict[str, Any]:
    import psutil

    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-soak-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens = Tokens.new()
    server: Server | None = None
    total_s = plan.minutes * 60
    doc: dict[str, Any] = {
        "kind": "registry-proxy soak",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.soak", *sys.argv[1:]]),
        "machine": machine(),
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
        proc = psutil.Process(server.pid)
        proc.cpu_percent(None)
        start = time.monotonic()
        until = start + total_s
        traffic = Traffic(server.url, tokens, ids)
        _log(f"running {plan.minutes:g} min at {plan.rate:g} req/s")
        results = await asyncio.gather(
            traffic.run(plan.rate, until),
            outages(
                pg,
                start=start,
                first_s=min(30.0, plan.warmup_s / 3),
                every_s=plan.outage_every_s,
                down_s=plan.outage_s,
                until=until - 20,
            ),
            sampler(server, tokens.read_tenant, proc, start, plan.sample_every_s, until),
        )
        outage_events, samples = results[1], results[2]
        if not pg.running():
            await asyncio.to_thread(pg.start)
        _log("draining the journal")
        drained = False
        drain_end = time.monotonic() + 120
        while time.monotonic() < drain_end:
            st = await status_of(server, tokens.read_tenant)
            if st["journal"]["depth"] == 0 and st["breaker"]["state"] == "closed":
                drained = True
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        final = []
        for _ in range(3):
            final.append(await sample(server, tokens.read_tenant, proc, start))
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
            "journal_bytes_final": final[-1].get("journal_bytes"),
            "replica_agents_final": final[-1].get("replica_agents"),
        },
    )
    doc["acceptance"] = {
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
    m, mem, w = doc["machine"], doc["memory"], doc["writes"]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}; "
        f"commit {str(m.get('git_commit'))[:10]}",
        f"command: {doc['command']}",
        f"outages: {len(doc['outages'])}, samples: {len(doc['samples'])}",
        f"RSS: {mem['rss_mib_at_warmup_end']} MiB after warm-up -> {mem['rss_mib_final']} MiB "
        f"at the end ({mem['rss_growth']:+.1%}), peak {mem['rss_mib_peak_after_warmup']} MiB",
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
    lines += replica_memory_lines(doc.get("replica_memory", {}))
    for k, v in doc["acceptance"].items():
        lines.append(
            f"  {'PASS' if v['pass'] else 'FAIL'} {k}: {v['value']} (target {v['target']})"
        )
    return "\n".join(lines)


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
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--outage-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, help="seconds; default max(45, 20%% of the run)")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--read-mode", choices=("database", "replica"), default="database")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--replica-memory", type=int, metavar="N", help="only print the replica's memory for N"
    )
    args = parser.parse_args(argv)
    if args.replica_memory is not None:
        sys.stdout.write(orjson.dumps(replica_memory(args.replica_memory)).decode() + "\n")
        return 0
    if args.minutes <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error("minutes, rate and sample-every must be positive")
    total = args.minutes * 60
    # The warm-up covers the first outage and the first periodic replica resync (60 s by
    # default), which both raise the allocator's high-water mark once.
    warmup = args.warmup if args.warmup is not None else max(75.0, 0.2 * total)
    if warmup >= total:
        parser.error("the warm-up must be shorter than the run")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
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
        out=args.out or RESULTS / f"soak-{stamp}.json",
        keep=args.keep,
    )
    doc = asyncio.run(soak(plan))
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(doc))
    print(f"written: {plan.out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
