"""The replica's state of one tenant, kept apart from the rules that keep it (`replica`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sortedcontainers import SortedList

from proxy.registry.agent import HEARTBEAT_TIMEOUT, AgentRecord
from proxy.registry.matching import sort_key
from proxy.registry.matching import stats as matching_stats
from proxy.store.pending_write import PendingWrite

__all__ = ["NO_AGENTS", "UNFILED_MAX", "Order", "Ranked", "TenantState", "orders"]

Order = str | None | tuple[str | None, str]
"""An order of a tenant's agents, best first: all of them (None), those of a task type, and
those of a task type (or of any) that speak a language, `(task type or None, language)`."""

Ranked = SortedList[tuple[float, str]]
"""The `(sort key, agent id)` of every agent in an order, best first."""

NO_AGENTS: Ranked = SortedList()
"""The order of a task type or language no agent has; never written to."""


def orders(rec: AgentRecord) -> list[Order]:
    """Every order the agent is filed in."""
    tasks: tuple[str | None, ...] = (None, *rec.task_types)
    return [*tasks, *((task, language) for task in tasks for language in rec.languages)]


# Changed agents a tenant may hold unfiled. Filing is done on the event loop: a batch of 1,024
# stalled every answer for 20 to 50 ms once a second under 1,000 registrations/s. At 20 to 30 us
# an agent, a batch of 32 pauses under a millisecond; a change to an agent already waiting is
# still filed once.
UNFILED_MAX = 32


@dataclass(slots=True)
class TenantState:
    """What the replica holds of one tenant: base rows, what reads show and the overlay."""

    agents: dict[str, AgentRecord] = field(default_factory=dict)
    # What reads show: each live agent as it is now (base row and pending writes), and the
    # orders and sums kept from it (see the module docstring).
    current: dict[str, AgentRecord] = field(default_factory=dict)
    ranked: dict[Order, Ranked] = field(default_factory=dict)
    beats: SortedList[tuple[datetime, str]] = field(default_factory=SortedList)
    idle_beats: SortedList[tuple[datetime, str]] = field(default_factory=SortedList)
    utilization_sum: float = 0.0
    success_sum: float = 0.0
    rated: int = 0
    # Agents changed since they were last filed; the next read files them (once, however many
    # changes came in between: a replay batch drops many entries of one agent), or the change
    # that makes them UNFILED_MAX, so a tenant written to and never queried holds no more.
    dirty: set[str] = field(default_factory=set)
    pending: dict[str, list[PendingWrite]] = field(default_factory=dict)
    pending_total: int = 0
    # The overlay folded over the base, per agent with pending writes; dropped when either moves.
    views: dict[str, AgentRecord | None] = field(default_factory=dict)
    # The event ids the cached view of an agent has counted from its pending writes.
    view_events: dict[str, set[str]] = field(default_factory=dict)
    # The event ids of an agent's pending writes of unknown fate (PostgreSQL may count them).
    doubt: dict[str, set[str]] = field(default_factory=dict)

    def stats(self, now: datetime) -> dict[str, Any]:
        """`matching.stats` of the tenant's agents, from the orders and sums kept on change."""
        if not self.current:
            return matching_stats([], now)
        total = len(self.current)
        since = (now - HEARTBEAT_TIMEOUT, "")
        return {
            "total_agents": total,
            "active_agents": len(self.beats) - self.beats.bisect_left(since),
            "idle_agents": len(self.idle_beats) - self.idle_beats.bisect_left(since),
            "average_utilization": max(0.0, self.utilization_sum) / total,
            "average_success_rate": self.success_sum / self.rated if self.rated else None,
        }

    def file_all(self, current: dict[str, AgentRecord]) -> None:
        """Make `current` what reads show, every order and sum built afresh, sorting once."""
        keys: dict[Order, list[tuple[float, str]]] = {None: []}
        for rec in current.values():
            key = sort_key(rec)
            for order in orders(rec):
                keys.setdefault(order, []).append(key)
        self.current = current
        self.ranked = {order: SortedList(entries) for order, entries in keys.items()}
        self.beats = SortedList((rec.last_heartbeat_at, rec.agent_id) for rec in current.values())
        self.idle_beats = SortedList(
            (rec.last_heartbeat_at, rec.agent_id)
            for rec in current.values()
            if rec.active_tasks == 0
        )
        self.dirty.clear()
        self.utilization_sum = sum(rec.utilization for rec in current.values())
        rates = [r for rec in current.values() if (r := rec.success_rate) is not None]
        self.success_sum = sum(rates)
        self.rated = len(rates)
