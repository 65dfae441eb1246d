"""Performance event ids PostgreSQL has counted through this sidecar, remembered for a while.

A client that retries a performance post (a timeout it saw, a restart) sends the same
``event_id`` again. If the retry is journaled during an outage, the replica's overlay must not
count it on top of a base row that already has it. The overlay marks such a pending write when
it arrives (or when the first attempt's commit is heard later), so the id only has to be
remembered for as long as a retry of it can come: ``ttl_s`` (15 minutes), and never more than
``max_events`` ids in all, oldest first out.

Bounded by time and by count, not per agent, because the agents come and go: ids kept per agent
until the agent went away grew with every agent that ever reported an event.
"""

from __future__ import annotations

from collections import deque

from proxy.resilience import SYSTEM_CLOCK, Clock

AgentKey = tuple[str, str]

# How long an id is remembered by default: its memory grows this long, then stays level.
TTL_S = 900.0


class CountedEvents:
    def __init__(
        self, *, ttl_s: float = TTL_S, max_events: int = 100_000, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if ttl_s <= 0 or max_events < 1:
            raise ValueError("ttl_s must be > 0 and max_events >= 1")
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.clock = clock
        self._by_agent: dict[AgentKey, set[str]] = {}
        self._order: deque[tuple[float, AgentKey, str]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, key: AgentKey, event_id: str) -> bool:
        """Remember the id; False when it was remembered already."""
        now = self.clock.monotonic()
        self._expire(now)
        ids = self._by_agent.setdefault(key, set())
        if event_id in ids:
            return False
        ids.add(event_id)
        self._order.append((now, key, event_id))
        while len(self._order) > self.max_events:
            self._forget()
        return True

    def knows(self, key: AgentKey, event_id: str) -> bool:
        ids = self._by_agent.get(key)
        return ids is not None and event_id in ids

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl_s
        while self._order and self._order[0][0] <= horizon:
            self._forget()

    def _forget(self) -> None:
        _at, key, event_id = self._order.popleft()
        ids = self._by_agent[key]
        ids.discard(event_id)
        if not ids:
            del self._by_agent[key]
