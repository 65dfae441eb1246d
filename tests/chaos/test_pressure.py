"""The short form of `python -m bench.pressure`: many paced clients while PostgreSQL is cut off.

64 clients, each pacing itself, send the bench's mix (60% get by id, 15% capability query, 25%
writes with their own Idempotency-Key) to the in-process sidecar: a few seconds healthy, a cut
of the Toxiproxy proxy in front of PostgreSQL, a heal, and the load goes on. Under that load the
breaker must close and the journal drain within 10 s of the heal, no answer may be a 5xx other
than `503 overloaded`, and every acknowledged write must be in PostgreSQL exactly once while no
refused one is. Latency is the bench's business, never asserted here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from toxiproxy.proxy import Proxy

from bench.ledger import miscounted_agents
from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.chaos.conftest import (
    healed_and_drained,
    in_thread,
    proxied_dsn,
    seed,
    start_sidecar,
    tenant_of,
    transitions,
)
from tests.conftest import Api, AppFactory, agent_body, app_of

pytestmark = pytest.mark.chaos

CLIENTS = 64
THINK_S = 0.1  # mean pause of a client between two requests (exponential)
AGENTS = 32
HEALTHY_S = 3.0
CUT_S = 2.5
HEAL_DEADLINE_S = 10.0
LOAD_AFTER_HEAL_S = 3.0  # at least; longer while the breaker or the journal has not settled
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


@dataclass
class Sent:
    phase: str
    kind: str
    status: int  # 0: no answer
    problem: str
    source: str
    op_id: str = ""
    target: str = ""
    event_id: str = ""
    error: str = ""


@dataclass
class Pressure:
    api: Api
    known: list[str]
    phase: str = "healthy"
    stop: bool = False
    sent: list[Sent] = field(default_factory=list)
    samples: list[tuple[float, str, str, int]] = field(default_factory=list)

    def _kind(self, rng: random.Random) -> str:
        roll = rng.randrange(100)
        for kind, share in MIX:
            if roll < share:
                return kind
            roll -= share
        return "get"

    async def request(self, client: int, n: int, rng: random.Random) -> None:
        kind = self._kind(rng)
        agent = rng.choice(self.known)
        op_id = f"p-{kind}-{client}-{n}" if kind in WRITES else ""
        event_id = ""
        body: Any = None
        if kind == "get":
            method, path = "GET", f"/v1/agents/{agent}"
        elif kind == "query":
            method, path = "GET", "/v1/agents?task_type=code&limit=10"
        elif kind == "performance":
            event_id = f"p-ev-{client}-{n}"
            method, path = "POST", f"/v1/agents/{agent}/performance"
            body = {
                "event_id": event_id,
                "success": rng.random() < 0.9,
                "quality_score": 0.5,
                "latency_ms": 12,
            }
        elif kind == "load":
            method, path = "PUT", f"/v1/agents/{agent}/load"
            body = {
                "active_tasks": rng.randint(0, 4),
                "queued_tasks": 0,
                "observed_at": datetime.now(UTC).isoformat(),
            }
        elif kind == "heartbeat":
            method, path, body = "POST", f"/v1/agents/{agent}/heartbeat", {}
        else:
            agent = f"p-new-{client}-{n}"
            method, path, body = "POST", "/v1/agents", agent_body(agent)
        phase = self.phase
        record = Sent(phase, kind, 0, "", "", op_id, agent, event_id)
        try:
            status, answer, headers = await self.api.call(
                method,
                path,
                body,
                headers={"Idempotency-Key": op_id} if op_id else None,
                timeout=aiohttp.ClientTimeout(total=15),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            self.sent.append(record)
            return
        record.status = status
        record.source = headers.get("X-Registry-Source", "")
        if status >= 400 and isinstance(answer, dict):
            record.problem = str(answer.get("type", "")).rsplit("/", 1)[-1]
        self.sent.append(record)

    async def client(self, client: int) -> None:
        rng = random.Random(client)
        await asyncio.sleep(rng.uniform(0, THINK_S))
        n = 0
        while not self.stop:
            n += 1
            await self.request(client, n, rng)
            await asyncio.sleep(rng.expovariate(1 / THINK_S))

    async def watch(self) -> None:
        """The breaker's state and the journal's depth, every 50 ms, while the load runs."""
        service = app_of(self.api)[keys.SERVICE]
        while not self.stop:
            depth = service.journal.depth if service.journal is not None else 0
            self.samples.append((time.monotonic(), self.phase, service.breaker.state.value, depth))
            await asyncio.sleep(0.05)

    def settled_since(self, healed_at: float) -> float | None:
        """Monotonic time of the first sample after the heal with the breaker closed and the
        journal empty."""
        return next(
            (
                t
                for t, _, state, depth in self.samples
                if t >= healed_at and state == "closed" and depth == 0
            ),
            None,
        )


async def _check_writes(pressure: Pressure, dsn: str, tenant: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        ops = {
            r["op_id"]: r["status"]
            for r in await conn.fetch(
                "SELECT op_id, status FROM operations WHERE tenant_id = $1", tenant
            )
        }
        events = {
            r["event_id"]: r["agent_id"]
            for r in await conn.fetch(
                "SELECT event_id, agent_id FROM performance_events WHERE tenant_id = $1", tenant
            )
        }
        agents = {
            r["agent_id"]
            for r in await conn.fetch("SELECT agent_id FROM agents WHERE tenant_id = $1", tenant)
        }
        miscounted = await miscounted_agents(conn, tenant)
    finally:
        await conn.close()

    def effect(s: Sent) -> bool:
        if s.kind == "performance":
            return events.get(s.event_id) == s.target
        if s.kind == "register":
            return s.target in agents
        return True

    lost, refused_applied = [], []
    counts: Counter[str] = Counter()
    for s in pressure.sent:
        if s.kind not in WRITES:
            continue
        applied = ops.get(s.op_id) == "applied"
        if s.status in ACKNOWLEDGED:
            counts["acknowledged"] += 1
            counts["journaled"] += s.status == 202
            if not applied or not effect(s):
                lost.append((s.op_id, s.status, s.phase, ops.get(s.op_id)))
        elif s.status == 503 or 400 <= s.status < 500:
            counts["refused"] += 1
            if applied or (s.kind in ("performance", "register") and effect(s)):
                refused_applied.append((s.op_id, s.status, s.problem, s.phase))
    assert not lost, f"{len(lost)} acknowledged writes not applied: {lost[:10]}"
    assert not refused_applied, f"refused writes applied: {refused_applied[:10]}"
    assert not miscounted, f"task_count differs from the stored events: {miscounted[:10]}"
    return dict(counts)


async def test_paced_clients_through_a_cut_keep_every_write_and_recover_under_load(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api = await start_sidecar(make_api, proxied_dsn(pg_proxy))
    pressure = Pressure(api, await seed(api, AGENTS))
    tasks = [asyncio.create_task(pressure.client(i)) for i in range(CLIENTS)]
    tasks.append(asyncio.create_task(pressure.watch()))
    try:
        await asyncio.sleep(HEALTHY_S)
        pressure.phase = "cut"
        await in_thread(pg_proxy.disable)
        await asyncio.sleep(CUT_S)
        await in_thread(pg_proxy.enable)
        pressure.phase = "heal"
        healed_at = time.monotonic()
        # The load goes on for a few seconds, and longer while the sidecar has not recovered
        # (bounded by the deadline the assertion below holds it to).
        while time.monotonic() < healed_at + HEAL_DEADLINE_S:
            if (
                time.monotonic() >= healed_at + LOAD_AFTER_HEAL_S
                and pressure.settled_since(healed_at) is not None
            ):
                break
            await asyncio.sleep(0.1)
        load_ended_at = time.monotonic()
    finally:
        pressure.stop = True
        await asyncio.wait(tasks, timeout=20)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    answers = Counter(
        (s.phase, s.status if s.status < 500 else f"{s.status} {s.problem}") for s in pressure.sent
    )
    summary = f"answers by phase: {sorted(answers.items(), key=str)}; breaker: {transitions(api)}"

    # The cut did what it is for: the breaker opened, reads came from the replica, writes
    # were journaled.
    assert ("closed", "open") in transitions(api), summary
    during_cut = [s for s in pressure.sent if s.phase == "cut"]
    assert any(s.source == "replica" for s in during_cut if s.kind in ("get", "query")), summary
    assert any(s.status == 202 for s in during_cut), summary

    settled = pressure.settled_since(healed_at)
    assert settled is not None, f"breaker closed and journal empty never seen; {summary}"
    assert settled - healed_at <= HEAL_DEADLINE_S, summary
    assert settled <= load_ended_at, summary

    bad = [
        (s.phase, s.kind, s.status, s.problem)
        for s in pressure.sent
        if s.status >= 500 and not (s.status == 503 and s.problem == "overloaded")
    ]
    assert not bad, f"{len(bad)} unexpected 5xx: {bad[:10]}; {summary}"
    unanswered = [(s.phase, s.kind, s.error) for s in pressure.sent if not s.status]
    assert not unanswered, f"{len(unanswered)} requests without an answer: {unanswered[:10]}"

    await healed_and_drained(api)
    counts = await _check_writes(pressure, pg.dsn, tenant_of(api))
    assert counts.get("journaled", 0) > 0, counts
    # Shown with `pytest -s`: what this run went through.
    print(
        f"\n{len(pressure.sent)} requests; closed and drained {settled - healed_at:.2f} s after "
        f"the heal; peak journal depth {max(d for *_, d in pressure.samples)}; writes {counts}; "
        f"{summary}"
    )
