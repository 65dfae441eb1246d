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
import gc
import math
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from bench.client import http
from bench.dataset import QUERIES, READ_TENANT, agent_body, seed
from bench.provenance import machine
from bench.servers import HOST, Server, Tokens, sidecar

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("warm", "cut", "heal")
OVERLOADED = "overloaded"
# The traffic mix, in percent of requests.
MIX: tuple[tuple[str, int], ...] = (
    ("get", 60),
    ("query", 15),
    ("performance", 10),
    ("load", 7),
    ("heartbeat", 6),
    ("register", 2),
)
WRITES = frozenset({"performance", "load", "heartbeat", "register"})
ACKNOWLEDGED = frozenset({200, 201, 202, 204})
STATUS_EVERY_S = 0.1
CLIENT_TIMEOUT_S = 10.0
# Hard bounds on what one run may ask for: the machine is shared.
MAX_CLIENTS = 2_000
MAX_PHASE_S = 600.0
MAX_AGENTS = 20_000


@dataclass(frozen=True)
class PressureTokens(Tokens):
    """The bench's writer tokens, and an admin token of the same tenant for `/v1/status`: only an
    admin sees the whole document (the replay counters among it)."""

    admin: str = ""

    @classmethod
    def new(cls) -> PressureTokens:
        base = Tokens.new()
        return cls(base.read_tenant, base.write_tenant, "bench-admin-" + secrets.token_hex(16))

    def spec(self) -> str:
        tokens = orjson.loads(super().spec())
        tokens.append({"token": self.admin, "tenant": READ_TENANT, "role": "admin", "id": "ops"})
        return orjson.dumps(tokens).decode()


def _log(msg: str) -> None:
    print(f"[pressure {datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- what is recorded ------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """One request and what came back; status 0 when no answer came (then `error` says why)."""

    t: float  # when it was sent, seconds from the start of the load
    phase: str
    kind: str
    status: int
    problem: str  # the last segment of the problem type, "" for a success
    source: str
    fallback: str
    latency_s: float
    op_id: str = ""
    target: str = ""
    event_id: str = ""
    error: str = ""
    detail: str = ""


@dataclass
class Run:
    """The shared state of one load: the phase now, and everything recorded."""

    url: str
    token: str
    status_token: str
    ids: list[str]
    think_s: float
    t0: float = 0.0
    phase: str = "warm"
    stopping: bool = False
    answers: list[Answer] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    counted: dict[str, dict[str, Any]] = field(default_factory=dict)
    generator_lag_ms: list[float] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0


# ---- the clients -----------------------------------------------------------------------------


def _choose(rng: random.Random) -> str:
    roll = rng.randrange(100)
    for kind, share in MIX:
        if roll < share:
            return kind
        roll -= share
    return MIX[0][0]


def _request(
    kind: str, client: int, n: int, rng: random.Random, ids: list[str]
) -> tuple[str, str, Any, str, str, str]:
    """(method, path, body, op id, target agent, event id) of one request of `kind`."""
    agent = rng.choice(ids)
    if kind == "get":
        return "GET", f"/v1/agents/{agent}", None, "", agent, ""
    if kind == "query":
        return "GET", rng.choice(QUERIES), None, "", "", ""
    op_id = f"pr-{kind}-{client}-{n}"
    if kind == "performance":
        event_id = f"pr-ev-{client}-{n}"
        body = {
            "event_id": event_id,
            "success": rng.random() < 0.9,
            "quality_score": round(rng.random(), 3),
            "latency_ms": round(rng.uniform(10, 5000), 1),
        }
        return "POST", f"/v1/agents/{agent}/performance", body, op_id, agent, event_id
    if kind == "load":
        body = {
            "active_tasks": rng.randint(0, 4),
            "queued_tasks": rng.randint(0, 2),
            "observed_at": datetime.now(UTC).isoformat(),
        }
        return "PUT", f"/v1/agents/{agent}/load", body, op_id, agent, ""
    if kind == "heartbeat":
        return "POST", f"/v1/agents/{agent}/heartbeat", {}, op_id, agent, ""
    target = f"pr-agent-{client}-{n}"
    return "POST", "/v1/agents", agent_body(target, rng), op_id, target, ""


def _problem_slug(raw: bytes) -> tuple[str, str]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "?", raw[:200].decode(errors="replace")
    if not isinstance(doc, dict):
        return "?", ""
    return str(doc.get("type", "?")).rsplit("/", 1)[-1], str(doc.get("detail", ""))[:300]


async def one_request(session: Any, run: Run, client: int, n: int, rng: random.Random) -> None:
    import aiohttp

    kind = _choose(rng)
    method, path, body, op_id, target, event_id = _request(kind, client, n, rng, run.ids)
    headers = {"Authorization": f"Bearer {run.token}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = orjson.dumps(body)
    if op_id:
        headers["Idempotency-Key"] = op_id
    phase = run.phase
    sent = time.monotonic()
    answer = Answer(sent - run.t0, phase, kind, 0, "", "", "", 0.0, op_id, target, event_id)
    try:
        async with session.request(method, run.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            answer.latency_s = time.monotonic() - sent
            answer.status = r.status
            answer.source = r.headers.get("X-Registry-Source", "")
            answer.fallback = r.headers.get("X-Registry-Fallback", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        answer.latency_s = time.monotonic() - sent
        answer.error = f"{type(exc).__name__}: {exc}"[:300]
        run.answers.append(answer)
        return
    if answer.status >= 400:
        answer.problem, answer.detail = _problem_slug(raw)
    elif answer.status == 202:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            journaled = orjson.loads(raw).get("op_id", "")
            if journaled != op_id:
                answer.detail = f"202 names op id {journaled!r}, sent {op_id!r}"
    run.answers.append(answer)


async def client_loop(run: Run, client: int, seed_value: int) -> None:
    import aiohttp

    rng = random.Random(seed_value * 100_003 + client)
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if run.think_s > 0:
            # Spread the first requests over one think time rather than all at once.
            await asyncio.sleep(rng.uniform(0, run.think_s))
        n = 0
        while not run.stopping:
            n += 1
            await one_request(session, run, client, n, rng)
            if run.think_s > 0:
                await asyncio.sleep(rng.expovariate(1.0 / run.think_s))


async def generator_lag(run: Run, every_s: float = 0.05) -> None:
    """How late this process's own timers fire: a busy generator adds to every latency."""
    loop = asyncio.get_running_loop()
    while not run.stopping:
        expected = loop.time() + every_s
        await asyncio.sleep(every_s)
        run.generator_lag_ms.append(max(0.0, loop.time() - expected) * 1000)


# ---- the sidecar's own view ------------------------------------------------------------------


def compact_status(doc: dict[str, Any]) -> dict[str, Any]:
    overload = doc.get("overload") or {}
    bulkhead = overload.get("bulkhead") or {}
    lag = overload.get("loop_lag") or {}
    breaker = doc.get("breaker") or {}
    return {
        "breaker": breaker.get("state"),
        "journal_depth": (doc.get("journal") or {}).get("depth"),
        "in_use": bulkhead.get("in_use"),
        "queued": bulkhead.get("queued"),
        "shed_total": sum((bulkhead.get("shed_total") or {}).values()),
        "max_wait_s": bulkhead.get("max_wait_seconds"),
        "lag_ms": lag.get("last_ms"),
        "lag_max_ms": lag.get("max_ms"),
        "shedding": lag.get("shedding"),
        "backlog_waiters": overload.get("backlog_waiters"),
        "replay": {k: v for k, v in (doc.get("replay") or {}).items() if isinstance(v, int)},
        "pool_in_use": (doc.get("pool") or {}).get("in_use"),
    }


async def poll_status(run: Run) -> None:
    """`/v1/status` every 100 ms on a connection of its own, until the load stops."""
    import aiohttp

    headers = {"Authorization": f"Bearer {run.status_token}"}
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        next_at = time.monotonic()
        while not run.stopping:
            t = run.now()
            phase = run.phase
            started = time.monotonic()
            row: dict[str, Any] = {"t": round(t, 3), "phase": phase}
            try:
                async with session.get(run.url + "/v1/status", headers=headers) as r:
                    raw = await r.read()
                    if r.status == 200:
                        row.update(compact_status(orjson.loads(raw)))
                    else:
                        row["error"] = f"status {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            row["poll_ms"] = round((time.monotonic() - started) * 1000, 1)
            run.polls.append(row)
            next_at += STATUS_EVERY_S
            now = time.monotonic()
            if next_at < now:  # a slow answer: skip the slots it overran
                next_at = now + STATUS_EVERY_S - (now - next_at) % STATUS_EVERY_S
            await asyncio.sleep(next_at - now)


_SAMPLE = re.compile(
    r"^registry_proxy_(shed_total|db_call_duration_seconds_(?:sum|count)|"
    r"db_queue_wait_seconds_(?:sum|count))(?:\{([^}]*)\})? ([0-9.e+-]+)$",
    re.MULTILINE,
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def metrics_snapshot(server: Server) -> dict[str, float]:
    """The sidecar's counters that explain a phase: refusals for lack of capacity by reason,
    database calls by operation and outcome (count and seconds), and the wait for a pooled
    connection (count and seconds). Keys like `shed:backlog`, `db:get:success:sum`."""
    try:
        status, text = await http(server.url + "/metrics", timeout_s=5.0)
    except OSError:
        return {}
    if status != 200 or not isinstance(text, str):
        return {}
    out: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        lab = dict(_LABEL.findall(labels))
        if name == "shed_total":
            key = f"shed:{lab.get('reason')}"
        elif name.startswith("db_call"):
            key = f"db:{lab.get('operation')}:{lab.get('outcome')}:{name.rsplit('_', 1)[1]}"
        else:
            key = f"queue_wait:{name.rsplit('_', 1)[1]}"
        out[key] = out.get(key, 0.0) + float(value)
    return out


def metrics_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the sidecar counted during one phase."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    shed = {k[5:]: int(v) for k, v in sorted(delta.items()) if k.startswith("shed:") and v}
    calls: dict[str, dict[str, Any]] = {}
    for key, count in sorted(delta.items()):
        if not key.startswith("db:") or not key.endswith(":count") or not count:
            continue
        _, operation, outcome, _ = key.split(":")
        total = delta.get(key[: -len("count")] + "sum", 0.0)
        calls[f"{operation}:{outcome}"] = {
            "calls": int(count),
            "mean_ms": round(total / count * 1000, 2),
        }
    waits = delta.get("queue_wait:count", 0.0)
    return {
        "shed": shed,
        "db_calls": calls,
        "queue_waits": int(waits),
        "queue_wait_mean_ms": (
            round(delta.get("queue_wait:sum", 0.0) / waits * 1000, 2) if waits else None
        ),
    }


async def full_status(server: Server, token: str) -> dict[str, Any] | None:
    try:
        status, body = await http(server.url + "/v1/status", token=token, timeout_s=5.0)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


# ---- figures ---------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of values already sorted."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_ms(answers: Iterable[Answer]) -> dict[str, Any]:
    values = sorted(a.latency_s * 1000 for a in answers if a.status)
    out: dict[str, Any] = {"count": len(values)}
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        v = percentile(values, q)
        out[name] = round(v, 2) if v is not None else None
    out["max"] = round(values[-1], 2) if values else None
    return out


def answer_key(a: Answer) -> str:
    if not a.status:
        return "no answer"
    if a.status >= 400:
        return f"{a.status} {a.problem}"
    return str(a.status)


def source_key(a: Answer) -> str:
    if not a.status:
        return "none"
    if a.fallback:
        return f"{a.source or '?'}:{a.fallback}"
    return a.source or "?"


def phase_figures(
    answers: list[Answer], polls: list[dict[str, Any]], seconds: float, counted: dict[str, Any]
) -> dict[str, Any]:
    ok_polls = [p for p in polls if "breaker" in p]
    by_kind: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_kind[a.kind].append(a)

    def most(key: str) -> Any:
        values = [p[key] for p in ok_polls if p.get(key) is not None]
        return max(values) if values else None

    return {
        "seconds": round(seconds, 2),
        "requests": len(answers),
        "requests_per_s": round(len(answers) / seconds, 1) if seconds > 0 else None,
        "answers": dict(sorted(Counter(answer_key(a) for a in answers).items())),
        "sources": dict(sorted(Counter(source_key(a) for a in answers).items())),
        "latency_ms": latency_ms(answers),
        "latency_ms_2xx": latency_ms(a for a in answers if 200 <= a.status < 300),
        "latency_ms_by_kind": {k: latency_ms(v) for k, v in sorted(by_kind.items())},
        "answers_by_kind": {
            k: dict(sorted(Counter(answer_key(a) for a in v).items()))
            for k, v in sorted(by_kind.items())
        },
        "shed": counted.get("shed", {}),
        "shed_503_overloaded": sum(
            1 for a in answers if a.status == 503 and a.problem == OVERLOADED
        ),
        "max_queued": most("queued"),
        "max_in_use": most("in_use"),
        "max_loop_lag_ms": most("lag_ms"),
        "loop_lag_shedding_seen": any(p.get("shedding") for p in ok_polls),
        "max_journal_depth": most("journal_depth"),
        "breaker_states": dict(Counter(str(p["breaker"]) for p in ok_polls)),
        "status_polls": len(polls),
        "status_poll_failures": sum(1 for p in polls if "error" in p),
        "status_poll_ms_max": max((p["poll_ms"] for p in polls), default=None),
        "sidecar_counted": counted,
    }


def timeline(answers: list[Answer], polls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per second of the load: what was answered, how fast, and the sidecar's state."""
    buckets: dict[int, list[Answer]] = defaultdict(list)
    for a in answers:
        buckets[int(a.t)].append(a)
    poll_buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in polls:
        poll_buckets[int(p["t"])].append(p)
    rows = []
    for second in sorted(set(buckets) | set(poll_buckets)):
        got = buckets.get(second, [])
        ps = [p for p in poll_buckets.get(second, []) if "breaker" in p]
        lat = latency_ms(got)
        rows.append(
            {
                "s": second,
                "phase": got[0].phase if got else (ps[0]["phase"] if ps else None),
                "requests": len(got),
                "answers": dict(sorted(Counter(answer_key(a) for a in got).items())),
                "replica": sum(1 for a in got if a.source == "replica"),
                "p50_ms": lat["p50"],
                "p99_ms": lat["p99"],
                "breaker": ps[-1]["breaker"] if ps else None,
                "journal_depth_max": max((p["journal_depth"] or 0 for p in ps), default=None),
                "queued_max": max((p["queued"] or 0 for p in ps), default=None),
                "lag_ms_max": max((p["lag_ms"] or 0 for p in ps), default=None),
            }
        )
    return rows


def heal_figures(run: Run, heal_s: float, deadline_s: float) -> dict[str, Any]:
    """From the polls after the heal: when the breaker closed and the journal emptied."""
    t_heal = run.marks["heal"]
    t_end = run.marks["load_end"]
    after = [p for p in run.polls if p["t"] >= t_heal and "breaker" in p]
    closed_at = next((p["t"] for p in after if p["breaker"] == "closed"), None)
    drained_at = next((p["t"] for p in after if p["journal_depth"] == 0), None)
    both_at = next(
        (p["t"] for p in after if p["breaker"] == "closed" and p["journal_depth"] == 0), None
    )
    reopened = closed_at is not None and any(
        p["breaker"] != "closed" for p in after if p["t"] > closed_at
    )
    regrew = drained_at is not None and any(
        (p["journal_depth"] or 0) > 0 for p in after if p["t"] > drained_at
    )

    def since_heal(t: float | None) -> float | None:
        return round(t - t_heal, 2) if t is not None else None

    both = since_heal(both_at)
    return {
        "heal_at_s": round(t_heal, 3),
        "load_went_on_after_heal_s": round(t_end - t_heal, 2),
        "breaker_closed_after_s": since_heal(closed_at),
        "journal_empty_after_s": since_heal(drained_at),
        "closed_and_empty_after_s": both,
        "closed_and_empty_during_load": both_at is not None and both_at <= t_end,
        "within_deadline": (
            both is not None and both_at is not None and both <= deadline_s and both_at <= t_end
        ),
        "deadline_s": deadline_s,
        "breaker_left_closed_again": reopened,
        "journal_grew_again": regrew,
        "peak_journal_depth": max(
            (p["journal_depth"] or 0 for p in run.polls if "breaker" in p), default=0
        ),
        "polls_first_5s_after_heal": [p for p in after if p["t"] <= t_heal + 5.0],
    }


# ---- verification against PostgreSQL ---------------------------------------------------------


async def verify(dsn: str, answers: list[Answer]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        ledger = {
            r["op_id"]: (r["status"], r["reason"])
            for r in await conn.fetch(
                "SELECT op_id, status, reason FROM operations "
                "WHERE tenant_id = $1 AND op_id LIKE 'pr-%'",
                READ_TENANT,
            )
        }
        events = {
            r["event_id"]: r["agent_id"]
            for r in await conn.fetch(
                "SELECT event_id, agent_id FROM performance_events "
                "WHERE tenant_id = $1 AND event_id LIKE 'pr-ev-%'",
                READ_TENANT,
            )
        }
        registered = {
            r["agent_id"]
            for r in await conn.fetch(
                "SELECT agent_id FROM agents WHERE tenant_id = $1 AND agent_id LIKE 'pr-agent-%'",
                READ_TENANT,
            )
        }
        miscounted = await conn.fetch(
            "SELECT a.agent_id, a.task_count, count(e.event_id) AS events FROM agents a "
            "LEFT JOIN performance_events e "
            "ON e.tenant_id = a.tenant_id AND e.agent_id = a.agent_id "
            "WHERE a.tenant_id = $1 GROUP BY a.agent_id, a.task_count "
            "HAVING a.task_count <> count(e.event_id)",
            READ_TENANT,
        )
    finally:
        await conn.close()

    def effect(a: Answer) -> bool:
        if a.kind == "performance":
            return events.get(a.event_id) == a.target
        if a.kind == "register":
            return a.target in registered
        return True  # load and heartbeat: the ledger row is the trace

    missing: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    refused_applied: list[dict[str, Any]] = []
    unknown: Counter[str] = Counter()
    acknowledged = journaled = refused = 0
    for a in answers:
        if a.kind not in WRITES:
            continue
        entry = ledger.get(a.op_id)
        applied = entry is not None and entry[0] == "applied"
        row = {"op_id": a.op_id, "kind": a.kind, "status": a.status, "phase": a.phase}
        if a.status in ACKNOWLEDGED:
            acknowledged += 1
            journaled += a.status == 202
            if entry is None:
                missing.append({**row, "why": "op id not in the ledger"})
            elif not applied:
                rejected.append({**row, "reason": entry[1]})
            elif not effect(a):
                missing.append({**row, "why": "effect absent"})
        elif a.status == 503 or 400 <= a.status < 500:
            refused += 1
            if applied or (a.kind in ("performance", "register") and effect(a)):
                refused_applied.append({**row, "problem": a.problem})
        else:
            # No answer, or an answer that says nothing of the write's fate.
            fate = "applied" if applied else ("rejected" if entry else "absent")
            unknown[f"{a.status or 'no answer'}:{fate}"] += 1
    return {
        "acknowledged": acknowledged,
        "journaled_202": journaled,
        "refused": refused,
        "missing": len(missing),
        "missing_examples": missing[:20],
        "rejected": len(rejected),
        "rejected_examples": rejected[:20],
        "refused_but_applied": len(refused_applied),
        "refused_but_applied_examples": refused_applied[:20],
        "fate_unknown": dict(unknown),
        "agents_counted_wrong": len(miscounted),
        "agents_counted_wrong_examples": [dict(r) for r in miscounted[:20]],
        "ledger_rows": len(ledger),
        "events_stored": len(events),
        "registered": len(registered),
    }


# ---- the run ---------------------------------------------------------------------------------


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


async def _wait_replica(server: Server, token: str, agents: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        doc = await full_status(server, token)
        if doc and (doc.get("replica") or {}).get("agents", 0) >= agents:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the replica did not hold the {agents} seeded agents in {timeout_s}s")


def _process_groups(sidecar_pid: int, pg_pid: int | None) -> dict[str, list[int]]:
    """The processes whose CPU time is reported: PostgreSQL with its backends of the moment."""
    import psutil

    from bench.cpu import process_tree

    toxi = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chaos.toxiproxy" in " ".join(child.cmdline()):
                toxi.append(child.pid)
    return {
        "sidecar": [sidecar_pid],
        "postgres": process_tree(pg_pid) if pg_pid else [],
        "toxiproxy": toxi,
        "generator": [os.getpid()],
    }


async def load(plan: Plan, run: Run, server: Server, pg_proxy: Any) -> None:
    """The three phases; the cut and the heal happen on a thread (the client is synchronous)."""
    at_start = await metrics_snapshot(server)
    # The generator's own garbage collections would stall every client at once and show up as
    # the sidecar's latency: none during the load (it keeps a few hundred MiB at most).
    gc.collect()
    gc.freeze()
    gc.disable()
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
        gc.enable()
        gc.unfreeze()
    for name, before, after in (
        ("warm", at_start, at_cut),
        ("cut", at_cut, at_heal),
        ("heal", at_heal, at_end),
    ):
        run.counted[name] = metrics_figures(before, after)


async def drain(server: Server, token: str, timeout_s: float) -> tuple[bool, float]:
    started = time.monotonic()
    end = started + timeout_s
    while time.monotonic() < end:
        doc = await full_status(server, token)
        if doc and doc["breaker"]["state"] == "closed" and doc["journal"]["depth"] == 0:
            return True, round(time.monotonic() - started, 2)
        await asyncio.sleep(0.2)
    return False, round(time.monotonic() - started, 2)


async def pressure(plan: Plan) -> dict[str, Any]:
    from toxiproxy import Toxiproxy

    from bench.cpu import cpu_delta, cpu_snapshot
    from chaos.toxiproxy.testing import toxiproxy_process
    from proxy.store.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="registry-proxy-pressure-"))
    pg = EmbeddedPostgres(root=workdir / "pg")
    tokens = PressureTokens.new()
    server: Server | None = None
    doc: dict[str, Any] = {
        "kind": "registry-proxy pressure",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.pressure", *sys.argv[1:]]),
        "machine": machine(),
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
        with toxiproxy_process() as toxi_url:
            await asyncio.to_thread(pg.start)
            parsed = urlparse(toxi_url)
            toxiproxy = Toxiproxy()
            toxiproxy.update_api_consumer(parsed.hostname, parsed.port)
            pg_proxy = await asyncio.to_thread(
                toxiproxy.create, upstream=f"{HOST}:{pg.port}", name="pg", listen=f"{HOST}:0"
            )
            port = pg_proxy.listen.rpartition(":")[2]
            dsn = f"postgresql://postgres@{HOST}:{port}/postgres"
            server = sidecar("sidecar", dsn=dsn, tokens=tokens, workdir=workdir)
            server.start()
            await server.wait_until("/readyz", 60)
            _log(f"seeding {plan.agents} agents")
            ids = await seed(server.url, tokens.read_tenant, plan.agents)
            await _wait_replica(server, tokens.read_tenant, plan.agents, 30)
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
            drained, drain_s = await drain(server, tokens.admin, plan.drain_timeout_s)
            doc["drain_after_load"] = {"drained": drained, "seconds": drain_s}
            doc["final_status"] = await full_status(server, tokens.admin)
            _log("checking every write against PostgreSQL")
            doc["verification"] = await verify(pg.dsn, run.answers)
            doc["sidecar_errors"] = server.error_lines()
            doc["sidecar_alive"] = server.alive()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pg_proxy.destroy)
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


def summarise(plan: Plan, run: Run, doc: dict[str, Any]) -> dict[str, Any]:
    bounds = {
        "warm": (0.0, run.marks["cut"]),
        "cut": (run.marks["cut"], run.marks["heal"]),
        "heal": (run.marks["heal"], run.marks["load_end"]),
    }
    phases = {}
    for name in PHASES:
        lo, hi = bounds[name]
        phases[name] = phase_figures(
            [a for a in run.answers if a.phase == name],
            [p for p in run.polls if p["phase"] == name],
            hi - lo,
            run.counted.get(name, {}),
        )
    doc["marks_s"] = {k: round(v, 3) for k, v in run.marks.items() if k != "heal_wall"}
    doc["phases"] = phases
    doc["total"] = {
        "requests": len(run.answers),
        "answers": dict(sorted(Counter(answer_key(a) for a in run.answers).items())),
        "latency_ms": latency_ms(run.answers),
    }
    lag = sorted(run.generator_lag_ms)
    doc["generator_loop_lag_ms"] = {
        name: round(v, 1) if v is not None else None
        for name, v in (
            ("p50", percentile(lag, 50)),
            ("p99", percentile(lag, 99)),
            ("max", lag[-1] if lag else None),
        )
    }
    heal = heal_figures(run, plan.heal_s, plan.heal_deadline_s)
    doc["heal"] = heal
    final = doc.get("final_status") or {}
    transitions = (final.get("breaker") or {}).get("transitions") or []
    heal_wall = run.marks.get("heal_wall", 0.0)
    doc["breaker_transitions"] = [
        {**t, "at_from_heal_s": round(float(t["at"]) - heal_wall, 3)}
        for t in transitions
        if isinstance(t.get("at"), (int, float))
    ]
    bad = [
        a
        for a in run.answers
        if a.status >= 500 and not (a.status == 503 and a.problem == OVERLOADED)
    ]
    lost = [a for a in run.answers if not a.status]
    doc["unexpected_answers"] = [
        {
            "t": round(a.t, 3),
            "phase": a.phase,
            "kind": a.kind,
            "status": a.status,
            "problem": a.problem,
            "detail": a.detail,
            "error": a.error,
            "latency_ms": round(a.latency_s * 1000, 1),
        }
        for a in (bad + lost)[:30]
    ]
    doc["op_id_mismatches"] = sum(1 for a in run.answers if a.status == 202 and a.detail)
    doc["timeline"] = timeline(run.answers, run.polls)
    doc["status_polls"] = run.polls
    v = doc["verification"]
    p99s = {name: phases[name]["latency_ms"]["p99"] for name in PHASES}
    acceptance = {
        "no_5xx_but_503_overloaded": {
            "value": len(bad),
            "target": "== 0",
            "pass": not bad,
        },
        "every_request_answered": {"value": len(lost), "target": "== 0", "pass": not lost},
        "closed_and_drained_within_deadline_during_load": {
            "value": heal["closed_and_empty_after_s"],
            "target": f"<= {plan.heal_deadline_s:g} s after the heal, load still on",
            "pass": heal["within_deadline"],
        },
        "p99_ms_each_phase": {
            "value": p99s,
            "target": f"<= {plan.max_p99_ms:g}",
            "pass": all(p is not None and p <= plan.max_p99_ms for p in p99s.values()),
        },
        "acknowledged_writes_applied_once": {
            "value": {
                "missing": v["missing"],
                "rejected": v["rejected"],
                "agents_counted_wrong": v["agents_counted_wrong"],
            },
            "target": "all 0",
            "pass": v["missing"] == 0 and v["rejected"] == 0 and v["agents_counted_wrong"] == 0,
        },
        "refused_writes_not_applied": {
            "value": v["refused_but_applied"],
            "target": "== 0",
            "pass": v["refused_but_applied"] == 0,
        },
        "journal_drained_after_load": {
            "value": doc["drain_after_load"]["drained"],
            "target": "true",
            "pass": doc["drain_after_load"]["drained"],
        },
    }
    doc["acceptance"] = acceptance
    doc["passed"] = all(c["pass"] for c in acceptance.values())
    return doc


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def report(doc: dict[str, Any]) -> str:
    m, plan, heal, v = doc["machine"], doc["plan"], doc["heal"], doc["verification"]
    think = f"think {plan['think_ms_mean']:g} ms mean" if plan["think_ms_mean"] else "no think"
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, load average "
        f"{m['loadavg_at_start']}; commit {str(m.get('git_commit'))[:10]}"
        + (" with uncommitted changes to proxy/" if m.get("uncommitted_product_changes") else ""),
        f"command: {doc['command']}",
        f"plan: {plan['clients']} clients, {think}, warm {plan['warm_s']:g} s, cut "
        f"{plan['cut_s']:g} s, heal {plan['heal_s']:g} s, {plan['agents']} agents",
        f"CPU during the load (cores): {doc.get('cpu_cores_during_load')}; generator loop lag "
        f"p99 {_fmt(doc['generator_loop_lag_ms']['p99'])} ms",
        "",
        "latency of the answers given, ms (p99 2xx: of the successes only); shed: refused for "
        "capacity; maxq: most requests seen waiting for a connection; lag: the sidecar's loop",
        f"{'phase':<6}{'req':>8}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}"
        f"{'p99 2xx':>9}{'shed':>7}{'maxq':>6}{'lag':>6}  answers",
    ]
    for name in PHASES:
        ph = doc["phases"][name]
        lat = ph["latency_ms"]
        lines.append(
            f"{name:<6}{ph['requests']:>8}{_fmt(ph['requests_per_s']):>8}{_fmt(lat['p50']):>8}"
            f"{_fmt(lat['p95']):>8}{_fmt(lat['p99']):>8}{_fmt(lat['max']):>9}"
            f"{_fmt(ph['latency_ms_2xx']['p99']):>9}{sum(ph['shed'].values()):>7}"
            f"{_fmt(ph['max_queued']):>6}{_fmt(ph['max_loop_lag_ms']):>6}  {ph['answers']}"
        )
    for name in PHASES:
        ph = doc["phases"][name]
        counted = ph["sidecar_counted"]
        calls = {
            k.split(":")[0]: v["mean_ms"]
            for k, v in counted.get("db_calls", {}).items()
            if k.endswith(":success")
        }
        lines.append(f"  {name} sources: {ph['sources']}; shed by reason: {ph['shed'] or {}}")
        lines.append(
            f"  {name} sidecar: wait for a connection {_fmt(counted.get('queue_wait_mean_ms'))} ms"
            f" mean; database call ms mean (successes): {calls}"
        )
    lines += [
        "",
        f"heal: breaker closed after {_fmt(heal['breaker_closed_after_s'])} s, journal empty "
        f"after {_fmt(heal['journal_empty_after_s'])} s (both: "
        f"{_fmt(heal['closed_and_empty_after_s'])} s; during the load: "
        f"{'yes' if heal['closed_and_empty_during_load'] else 'no'}); peak journal depth "
        f"{heal['peak_journal_depth']}; breaker left closed again: "
        f"{'yes' if heal['breaker_left_closed_again'] else 'no'}",
        f"after the load: drained {doc['drain_after_load']}",
        f"writes: {v['acknowledged']} acknowledged ({v['journaled_202']} journaled), "
        f"{v['refused']} refused; missing {v['missing']}, rejected {v['rejected']}, refused but "
        f"applied {v['refused_but_applied']}, agents counted wrong {v['agents_counted_wrong']}, "
        f"fate unknown {v['fate_unknown'] or 0}",
        f"sidecar log lines at level error: {doc['sidecar_errors']['count']}",
    ]
    if doc["unexpected_answers"]:
        lines.append("unexpected answers (first few):")
        lines += [f"  {a}" for a in doc["unexpected_answers"][:5]]
    for k, c in doc["acceptance"].items():
        lines.append(
            f"  {'PASS' if c['pass'] else 'FAIL'} {k}: {c['value']} (target {c['target']})"
        )
    return "\n".join(lines)


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
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
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
        out=args.out or RESULTS / f"pressure-{stamp}.json",
        keep=args.keep,
    )
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    doc = runner(pressure(plan))
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(doc))
    print(f"written: {plan.out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
