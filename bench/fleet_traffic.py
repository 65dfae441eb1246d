"""The fleet benchmark's traffic: paced clients on every sidecar, and changes watched fleet-wide.

Every sidecar gets the same few clients, each paced (a request, then a pause to its rate; a late
answer is not made up with a burst), so the load scales with the fleet and PostgreSQL sees what a
fleet of similar pods sends it. Every acknowledged write is kept for the check against PostgreSQL
at the end (``bench.soak_verify``), with op ids that name the sidecar and client, since the
sidecars share their tenants and an op id is unique per tenant.

Propagation is watched separately: one agent at a time is renamed through one sidecar while every
other sidecar is asked for it by id until it shows the new revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.dataset import READ_TENANT, TASK_TYPES, WRITE_TENANT, agent_body
from bench.servers import Tokens
from bench.soak_traffic import Ack

# One slot per request: 4 reads by id, 2 capability queries, 1 registration, 2 performance
# reports, 1 heartbeat.
MIX = (
    "get", "performance", "query", "get", "register",
    "get", "heartbeat", "query", "performance", "get",
)  # fmt: skip
WRITES = frozenset({"register", "performance", "heartbeat"})


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        # Nearest rank: the smallest value with at least q of them at or below it.
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 2)}


async def call(
    session: Any,
    method: str,
    url: str,
    token: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any, Any]:
    """(status, decoded JSON or None, response headers); OSError when no answer came."""
    import aiohttp

    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    if body is not None:
        h["Content-Type"] = "application/json"
    try:
        async with session.request(
            method,
            url,
            data=orjson.dumps(body) if body is not None else None,
            headers=h,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            raw = await r.read()
            doc = orjson.loads(raw) if raw and "json" in r.headers.get("Content-Type", "") else None
            return r.status, doc, r.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OSError(f"{method} {url}: {type(exc).__name__}") from exc


@dataclass
class FleetTraffic:
    urls: list[str]
    tokens: Tokens
    ids: list[str]
    clients_per_sidecar: int
    rate_per_client: float
    # "own": heartbeats and performance reports of sidecar i go to its share of the agents
    # (ids[i::N]), as when each agent talks to the registry through its own pod's sidecar;
    # "any": to any agent, so sidecars write the same rows (and their replays lock them).
    write_targets: str = "own"
    phase: str = "load"
    acks: list[Ack] = field(default_factory=list)
    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    async def _one(
        self, session: Any, base: str, index: int, who: str, n: int, rng: random.Random
    ) -> None:
        kind = MIX[n % len(MIX)]
        op_id = f"fleet-{who}-{n}"
        key = {"Idempotency-Key": op_id}
        mine = kind in WRITES and self.write_targets == "own"
        agent = rng.choice(self.ids[index :: len(self.urls)] if mine else self.ids)
        read_token, write_token = self.tokens.read_tenant, self.tokens.write_tenant
        event_id: str | None = None
        tenant = READ_TENANT
        req: tuple[str, str, str, Any, dict[str, str] | None]
        if kind == "get":
            req = ("GET", f"/v1/agents/{agent}", read_token, None, None)
        elif kind == "query":
            path = f"/v1/agents?task_type={rng.choice(TASK_TYPES)}&limit=10"
            req = ("GET", path, read_token, None, None)
        elif kind == "register":
            agent, tenant = f"fleet-{who}-{n}", WRITE_TENANT
            req = ("POST", "/v1/agents", write_token, agent_body(agent, rng), key)
        elif kind == "performance":
            event_id = f"fev-{who}-{n}"
            body = {
                "event_id": event_id,
                "success": rng.random() < 0.9,
                "quality_score": round(rng.random(), 3),
                "latency_ms": round(rng.uniform(10, 5000), 1),
            }
            req = ("POST", f"/v1/agents/{agent}/performance", read_token, body, key)
        else:
            req = ("POST", f"/v1/agents/{agent}/heartbeat", read_token, {}, key)
        method, path, token, payload, headers = req
        phase = self.phase
        started = time.monotonic()
        try:
            status, _, _ = await call(session, method, base + path, token, payload, headers)
        except OSError as exc:
            self.answers[phase][f"{kind}:{type(exc.__cause__ or exc).__name__}"] += 1
            return
        self.answers[phase][f"{kind}:{status}"] += 1
        group = "write" if kind in WRITES else "read"
        self.latency_ms[f"{phase}:{group}"].append((time.monotonic() - started) * 1000)
        if kind in WRITES and 200 <= status < 300:
            self.acks.append(Ack(tenant, op_id, kind, status, agent, event_id))

    async def _client(
        self, session: Any, base: str, index: int, who: str, stop: asyncio.Event
    ) -> None:
        rng = random.Random(who)
        interval = 1.0 / self.rate_per_client
        # Clients start spread over one interval, not in step.
        await asyncio.sleep(rng.random() * interval)
        for n in itertools.count():
            if stop.is_set():
                return
            due = time.monotonic() + interval
            await self._one(session, base, index, who, n, rng)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await stop.wait()

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        sessions = [aiohttp.ClientSession() for _ in self.urls]
        try:
            await asyncio.gather(
                *(
                    self._client(sessions[i], url, i, f"s{i:02d}c{c}", stop)
                    for i, url in enumerate(self.urls)
                    for c in range(self.clients_per_sidecar)
                )
            )
        finally:
            for s in sessions:
                await s.close()

    def figures(self) -> dict[str, Any]:
        phases = sorted(self.answers)
        return {
            "answers": {p: dict(sorted(self.answers[p].items())) for p in phases},
            "latency_ms": {k: _quantiles(v) for k, v in sorted(self.latency_ms.items())},
        }


@dataclass
class Propagation:
    """Renames probe agents through one sidecar after another and times their arrival everywhere
    else. Every other sidecar is asked for the agent by id from the moment the rename is sent,
    again `poll_gap_s` after each answer; an observation is the time from the send to the first
    answer that showed the new revision, an upper bound on when that sidecar had it."""

    urls: list[str]
    token: str
    agents: list[str]
    poll_gap_s: float = 0.002
    give_up_s: float = 5.0
    # Per change: ms until each other sidecar showed it; None where it never did.
    changes: list[list[float | None]] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    before_answer: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    write_failures: Counter[str] = field(default_factory=Counter)

    async def _watch(self, session: Any, url: str, agent: str, revision: int, t0: float) -> float:
        end = t0 + self.give_up_s
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                status, doc, headers = await call(
                    session, "GET", f"{url}/v1/agents/{agent}", self.token, timeout_s=2
                )
                if status == 200 and doc and doc.get("revision", 0) >= revision:
                    self.sources[headers.get("X-Registry-Source", "?")] += 1
                    return (time.monotonic() - t0) * 1000
            await asyncio.sleep(self.poll_gap_s)
        raise TimeoutError

    async def _change(self, sessions: list[Any], k: int, revisions: dict[str, int]) -> None:
        writer = k % len(self.urls)
        agent = self.agents[k % len(self.agents)]
        session, url = sessions[writer], self.urls[writer]
        if agent not in revisions:
            _, doc, _ = await call(session, "GET", f"{url}/v1/agents/{agent}", self.token)
            revisions[agent] = int(doc["revision"])
        # Only this prober renames the probe agents: the next revision is known beforehand.
        expected = revisions[agent] + 1
        t0 = time.monotonic()
        watchers = [
            asyncio.create_task(self._watch(sessions[i], u, agent, expected, t0))
            for i, u in enumerate(self.urls)
            if i != writer
        ]
        try:
            status, doc, _ = await call(
                session,
                "PATCH",
                f"{url}/v1/agents/{agent}",
                self.token,
                {"name": f"probe {k}"},
                {"If-Match": f'"{revisions[agent]}"'},
            )
        except OSError:
            status, doc = 0, None
        answered_ms = (time.monotonic() - t0) * 1000
        if status != 200 or not doc or doc.get("revision") != expected:
            self.write_failures[str(status)] += 1
            revisions.pop(agent, None)
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            return
        revisions[agent] = expected
        self.write_ms.append(answered_ms)
        watched = await asyncio.gather(*watchers, return_exceptions=True)
        seen = [w if isinstance(w, float) else None for w in watched]
        self.before_answer += sum(ms is not None and ms < answered_ms for ms in seen)
        self.changes.append(seen)

    async def run(self, stop: asyncio.Event, gap_s: float) -> None:
        import aiohttp

        sessions = [aiohttp.ClientSession() for _ in self.urls]
        revisions: dict[str, int] = {}
        try:
            for k in itertools.count():
                if stop.is_set():
                    return
                await self._change(sessions, k, revisions)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(gap_s):
                        await stop.wait()
        finally:
            for s in sessions:
                await s.close()

    def figures(self) -> dict[str, Any]:
        each = [ms for change in self.changes for ms in change if ms is not None]
        complete = [
            max(ms for ms in c if ms is not None) for c in self.changes if c and None not in c
        ]
        return {
            "changes": len(self.changes),
            "observations": len(each),
            "never_seen": sum(ms is None for change in self.changes for ms in change),
            "all_others_ms": _quantiles(complete),
            "each_other_ms": _quantiles(each),
            "writer_answer_ms": _quantiles(self.write_ms),
            "seen_before_the_writer_answered": self.before_answer,
            "answered_from": dict(self.sources),
            "write_failures": dict(self.write_failures),
        }
