"""A history checker: what clients did and saw, and whether every read can be explained.

Clients post performance events for a few hot agents and read those agents back, each client
one request at a time; every request is recorded with the instants it was sent and answered.
A read of an agent's `task_count` is explainable when it lies between

- the events acknowledged (201, 200 or 202) before the read was sent: a sidecar shows its own
  acknowledged writes, journaled ones included, except a `202` marked
  `X-Registry-Pending: uncertain` (its connection broke mid-write, so PostgreSQL may hold it
  already; it shows once the replay has settled it); and
- the events sent before the read was answered, less those refused with "nothing was done"
  (422, 503 overloaded, 429): a write cannot show before it is sent, nor twice, since the
  database counts an `event_id` once;

and one client's reads of one agent never go backwards. After the journal has drained, the
database holds exactly the acknowledged events, plus those whose answer was lost or cut short
(504, a dropped connection) that it did apply, and no other.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import Api

ACKNOWLEDGED = frozenset({200, 201, 202})
NOTHING_DONE = frozenset({400, 404, 409, 422, 429})


@dataclass(frozen=True, slots=True)
class Op:
    client: int
    kind: str  # "post" or "read"
    agent: str
    sent: float
    answered: float
    status: int
    event_id: str | None = None
    count: int | None = None  # a read's task_count
    source: str = ""
    problem: str = ""
    uncertain: bool = False  # a 202 whose write may already be in PostgreSQL


def _nothing_done(op: Op) -> bool:
    if op.status in NOTHING_DONE:
        return True
    return op.status == 503 and op.problem.endswith("/overloaded")


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    _events: itertools.count[int] = field(default_factory=itertools.count)

    def new_event(self) -> str:
        return f"h-{next(self._events)}"

    async def post(self, api: Api, client: int, agent: str, event_id: str) -> Op:
        body = {"event_id": event_id, "success": True, "quality_score": 0.5, "latency_ms": 5}
        sent = time.monotonic()
        try:
            status, answer, headers = await api.call(
                "POST", f"/v1/agents/{agent}/performance", body
            )
        except Exception:  # the answer was lost: the write may or may not have happened
            status, answer, headers = 0, None, {}
        problem = answer.get("type", "") if isinstance(answer, dict) and status >= 400 else ""
        op = Op(
            client,
            "post",
            agent,
            sent,
            time.monotonic(),
            status,
            event_id=event_id,
            source=headers.get("X-Registry-Source", ""),
            problem=problem,
            uncertain=headers.get("X-Registry-Pending") == "uncertain",
        )
        self.ops.append(op)
        return op

    async def read(self, api: Api, client: int, agent: str) -> Op:
        sent = time.monotonic()
        status, answer, headers = await api.call("GET", f"/v1/agents/{agent}")
        count = answer["performance"]["task_count"] if status == 200 else None
        op = Op(
            client,
            "read",
            agent,
            sent,
            time.monotonic(),
            status,
            count=count,
            source=headers.get("X-Registry-Source", ""),
        )
        self.ops.append(op)
        return op

    def unexplained(self) -> list[str]:
        """Every read that no order of the recorded writes explains, in words."""
        problems: list[str] = []
        posts = [o for o in self.ops if o.kind == "post"]
        last_seen: dict[tuple[int, str], Op] = {}
        for r in sorted((o for o in self.ops if o.kind == "read"), key=lambda o: o.sent):
            if r.count is None:
                continue
            mine = [p for p in posts if p.agent == r.agent]
            floor = {
                p.event_id
                for p in mine
                if p.status in ACKNOWLEDGED and not p.uncertain and p.answered < r.sent
            }
            ceiling = {p.event_id for p in mine if p.sent < r.answered and not _nothing_done(p)}
            if r.count < len(floor):
                problems.append(
                    f"client {r.client} read {r.agent} task_count={r.count} from {r.source} "
                    f"after {len(floor)} events were acknowledged"
                )
            if r.count > len(ceiling):
                problems.append(
                    f"client {r.client} read {r.agent} task_count={r.count} from {r.source} "
                    f"when only {len(ceiling)} events had been sent"
                )
            before = last_seen.get((r.client, r.agent))
            if before is not None and before.count is not None and r.count < before.count:
                problems.append(
                    f"client {r.client} read {r.agent} task_count={r.count} ({r.source}) after "
                    f"{before.count} ({before.source}): it went backwards"
                )
            last_seen[(r.client, r.agent)] = r
        return problems

    def final_mismatches(self, stored: dict[str, set[str]]) -> list[str]:
        """Compare the events PostgreSQL holds per agent with what the clients were told."""
        problems: list[str] = []
        agents = {o.agent for o in self.ops}
        for agent in sorted(agents):
            posts = [o for o in self.ops if o.kind == "post" and o.agent == agent]
            acked = {p.event_id for p in posts if p.status in ACKNOWLEDGED}
            unsure = {p.event_id for p in posts if not _nothing_done(p)} - acked
            held = stored.get(agent, set())
            missing = acked - held
            if missing:
                problems.append(f"{agent}: acknowledged events lost: {sorted(missing)[:5]}")
            extra = held - acked - unsure
            if extra:
                problems.append(f"{agent}: events applied that were refused: {sorted(extra)[:5]}")
        return problems

    def statuses(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for o in self.ops:
            out[(o.kind, o.status)] = out.get((o.kind, o.status), 0) + 1
        return out


async def run_clients(
    api: Api,
    history: History,
    agents: list[str],
    *,
    clients: int,
    until: Callable[[], bool],
    seed: int = 0,
    pause: float = 0.0,
) -> None:
    """Clients alternate posts and reads on the hot agents until `until()` holds. Now and then
    a client posts an event id it posted before (a retry), which must count once."""

    async def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        mine: list[tuple[str, str]] = []
        while not until():
            agent = rng.choice(agents)
            if mine and rng.random() < 0.1:
                again_agent, again_event = rng.choice(mine)
                await history.post(api, n, again_agent, again_event)
            else:
                event = history.new_event()
                mine.append((agent, event))
                await history.post(api, n, agent, event)
            await history.read(api, n, rng.choice(agents))
            if pause:
                await asyncio.sleep(pause)  # pacing of the workload, not synchronisation

    await asyncio.gather(*(client(n) for n in range(clients)))


async def stored_events(fetch: Callable[..., Awaitable[Any]], tenant: str) -> dict[str, set[str]]:
    rows = await fetch(
        "SELECT agent_id, event_id FROM performance_events WHERE tenant_id = $1", tenant
    )
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["agent_id"], set()).add(row["event_id"])
    return out
