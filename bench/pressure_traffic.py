"""The load of ``python -m bench.pressure``: paced clients, and what they and the poller record.

Each client holds one connection and thinks between its requests, as agents and dispatchers do;
every answer is kept with the phase it was sent in, so the figures and the write check afterwards
work from the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bench.dataset import QUERIES, agent_body
from bench.status import compact_status

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
STATUS_EVERY_S = 0.1
CLIENT_TIMEOUT_S = 10.0


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
