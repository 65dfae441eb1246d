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
    """Every order the agent is counted in (and filed in, for those built)."""
    tasks: tuple[str | None, ...] = (None, *rec.task_types)
    return [*tasks, *((task, language) for task in tasks for language in rec.languages)]


def _in_order(rec: AgentRecord, order: Order) -> bool:
    if order is None:
        return True
    if isinstance(order, str):
        return order in rec.task_types
    task, language = order
    return (task is None or task in rec.task_types) and language in rec.languages


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
    # The agents in each order, counted for every order that has any; the order itself only
    # once a query has walked it (`order`), kept in step with every change from then on. An
    # order kept for every combination of task type and language cost 9 sorted inserts per
    # registration of an agent with two of each, for orders a consumer may never ask for.
    sizes: dict[Order, int] = field(default_factory=dict)
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

    def order(self, order: Order) -> Ranked:
        """The agents of `order`, best first; built from what reads show the first time."""
        ranked = self.ranked.get(order)
        if ranked is None:
            if not self.sizes.get(order):
                return NO_AGENTS
            ranked = self.ranked[order] = SortedList(
                sort_key(rec) for rec in self.current.values() if _in_order(rec, order)
            )
        return ranked

    def enter(self, rec: AgentRecord) -> None:
        """Count and file `rec` in each of its orders."""
        key = None
        sizes, ranked = self.sizes, self.ranked
        for order in orders(rec):
            sizes[order] = sizes.get(order, 0) + 1
            built = ranked.get(order)
            if built is not None:
                if key is None:
                    key = sort_key(rec)
                built.add(key)

    def leave(self, rec: AgentRecord) -> None:
        """Take `rec`, as it was entered, out of each of its orders."""
        key = None
        sizes, ranked = self.sizes, self.ranked
        for order in orders(rec):
            left = sizes[order] - 1
            built = ranked.get(order)
            if built is not None:
                if key is None:
                    key = sort_key(rec)
                built.remove(key)
            if left:
                sizes[order] = left
            else:
                # An order with no agent left is forgotten: what queries ask for that no agent
                # has holds no memory.
                del sizes[order]
                ranked.pop(order, None)

    def file_all(self, current: dict[str, AgentRecord]) -> None:
        """Make `current` what reads show, every count and sum afresh and the orders queries
        had built built again, sorting once."""
        sizes: dict[Order, int] = {}
        keys: dict[Order, list[tuple[float, str]]] = {order: [] for order in self.ranked}
        for rec in current.values():
            key = None
            for order in orders(rec):
                sizes[order] = sizes.get(order, 0) + 1
                entries = keys.get(order)
                if entries is not None:
                    if key is None:
                        key = sort_key(rec)
                    entries.append(key)
        self.current = current
        self.sizes = sizes
        self.ranked = {order: SortedList(entries) for order, entries in keys.items() if entries}
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
