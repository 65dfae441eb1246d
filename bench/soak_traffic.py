"""The soak's traffic: a fixed-rate mix of reads and writes, and what was acknowledged.

The mix keeps the data set the same size over hours (registrations and unregistrations balance),
so memory growth means a leak rather than more data; every acknowledged write is kept for the
check against PostgreSQL at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.client import http
from bench.dataset import READ_TENANT, TASK_TYPES, WRITE_TENANT, agent_body
from bench.servers import Tokens


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
    # Refusals and errors by the problem's type (`overloaded`, `database-unavailable`...): a
    # status alone does not say which bound refused.
    problems: Counter[str] = field(default_factory=Counter)
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
            task = self.rng.choice(TASK_TYPES)
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
            status, answer = await http(
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
        if status >= 400:
            self.problems[f"{kind}:{status}:{problem_type(answer)}"] += 1
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


def problem_type(answer: Any) -> str:
    """The last segment of a problem document's `type`; `?` for an answer that is not one."""
    kind = answer.get("type") if isinstance(answer, dict) else None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) and kind else "?"
