"""The journaled writes not yet in PostgreSQL, as the rest of the service meets them: shown by the
replica (read-your-writes), waited for by an agent's next write, and drained by the replay.

Writes and the replay never call each other; they meet here. A write joins the backlog (`show`)
or waits behind it (`wait_for`), and rings `due` so the replay runs; the replay takes the agents
someone waits for first (`waiting_agents`) and says when an agent's entries are all applied
(`settled`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from proxy.registry.requests import REGISTRY_KINDS
from proxy.service.context import op_id_of
from proxy.store.journal import JournalEntry
from proxy.store.pending_write import PendingWrite
from proxy.store.replica import Replica

AgentKey = tuple[str, str]  # (tenant, agent id)


class Backlog:
    def __init__(self, replica: Replica | None) -> None:
        self._replica = replica
        self.due = asyncio.Event()
        """Rung when the journal should be applied now rather than at the replay's next tick: a
        write joined it, a write waits behind it, or PostgreSQL answers again."""
        # Writes waiting for their agent's journaled backlog to be applied, by agent.
        self._waiters: dict[AgentKey, list[asyncio.Future[None]]] = {}

    def wake(self) -> None:
        self.due.set()

    def show(self, entry: JournalEntry) -> bool:
        """Let the replica's reads see a journaled write of the registry until it is applied.
        Returns whether its fate is unknown (the reads then leave it out until it is settled)."""
        uncertain = bool(entry.payload.get("uncertain"))
        if self._replica is None or entry.kind not in REGISTRY_KINDS:
            return uncertain
        write = PendingWrite(
            op_id=op_id_of(entry.op_id),
            kind=entry.kind,
            payload=entry.payload["payload"],
            received_at=datetime.fromisoformat(entry.payload["received_at"]),
            uncertain=uncertain,
        )
        self._replica.add_pending(entry.tenant, entry.key, write)
        return write.uncertain

    async def wait_for(self, tenant: str, agent_id: str, seconds: float) -> bool:
        """Wait until the replay has applied every journaled write of the agent (the replay
        takes such agents first), or `look_again` is called; False when ``seconds`` run out."""
        key = (tenant, agent_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        waiters.append(waiter)
        self.due.set()
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
        return True

    def look_again(self) -> None:
        """End every wait at once: PostgreSQL is away again, so the waiting writes are journaled
        behind the backlog rather than waiting out their deadline."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def settled(self, keys: set[AgentKey]) -> None:
        """The replay applied (or rejected) entries of these agents: end the waits of those with
        nothing left pending."""
        rep = self._replica
        for key in keys:
            waiters = self._waiters.get(key)
            if waiters and (rep is None or not rep.has_pending(*key)):
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def waiting_agents(self) -> list[AgentKey]:
        """The agents a write is waiting for, in the order they were first waited for."""
        return list(self._waiters)

    def waiting(self) -> int:
        """How many writes wait behind their agent's backlog."""
        return sum(len(w) for w in self._waiters.values())
