"""One agent as stored, and its public form with derived load and performance.

`AgentRecord` is what both the PostgreSQL path and the local replica hold, so every answer is
derived by the same code whichever source served it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

# An agent's score and the reasons that depend on it alone (`proxy.registry.matching`).
MatchFacts = tuple[float, tuple[str, ...]]
# Both as a query's answer writes them, around the query's own reasons (`matching.rank`).
RankedParts = tuple[bytes, bytes]

# An agent that has not sent a heartbeat for this long is reported as unresponsive.
HEARTBEAT_TIMEOUT = timedelta(minutes=5)


@dataclass(slots=True, frozen=True)
class AgentRecord:
    tenant_id: str
    agent_id: str
    name: str
    model_family: str
    task_types: tuple[str, ...]
    languages: tuple[str, ...]
    specializations: tuple[str, ...]
    max_concurrent_tasks: int
    active_tasks: int
    queued_tasks: int
    load_observed_at: datetime | None
    registered_at: datetime
    last_heartbeat_at: datetime
    updated_at: datetime
    # The change watermark: drawn from one sequence by every write, whatever it changes.
    version: int
    deleted_at: datetime | None
    task_count: int
    success_count: int
    quality_sum: float
    latency_ms_sum: float
    # The ETag: 1 at registration, +1 per change of what a PATCH can change (name, model family,
    # capabilities, max_concurrent_tasks). Heartbeats, load and performance leave it alone, so an
    # If-Match taken from a read does not lose to the agent's own reports.
    revision: int
    # The encoded public document and the status it was rendered with. A record never changes
    # (a new version is a new record) and only its status depends on the clock, so a record
    # read again and again, as the replica's are, is encoded once per status.
    _encoded: tuple[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)
    # What capability matching derives from this record alone (`proxy.registry.matching`):
    # computed on the first query that ranks it, then reused by every later one.
    _match: Any = field(default=None, init=False, repr=False, compare=False)
    # The same, encoded: only once a query answers with this record, since most records of a
    # large tenant are filed (which needs the score) and never make a query's top.
    _ranked: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def utilization(self) -> float:
        return min(1.0, self.active_tasks / self.max_concurrent_tasks)

    @property
    def success_rate(self) -> float | None:
        return self.success_count / self.task_count if self.task_count else None

    def status(self, now: datetime) -> str:
        return "active" if now - self.last_heartbeat_at <= HEARTBEAT_TIMEOUT else "unresponsive"

    def performance(self) -> dict[str, Any]:
        n = self.task_count
        return {
            "task_count": n,
            "success_rate": self.success_count / n if n else None,
            "average_quality": self.quality_sum / n if n else None,
            "average_latency_ms": self.latency_ms_sum / n if n else None,
        }

    def public_json(self, now: datetime) -> bytes:
        """The agent document of the API (see `proxy.registry.models.Agent`) as of `now`, encoded
        as JSON."""
        status = self.status(now)
        cached = self._encoded
        if cached is not None and cached[0] == status:
            return cached[1]
        encoded = orjson.dumps(self._public(status))
        object.__setattr__(self, "_encoded", (status, encoded))  # a cache, not a change
        return encoded

    def match_facts(self, compute: Callable[[AgentRecord], MatchFacts]) -> MatchFacts:
        """`compute(self)`, once per record: a record never changes, and matching asks again for
        every query that ranks it. Only one computation may use this (matching's)."""
        facts = self._match
        if facts is None:
            facts = compute(self)
            object.__setattr__(self, "_match", facts)  # a cache, not a change
        return facts  # type: ignore[no-any-return]

    def ranked_parts(self, compute: Callable[[AgentRecord], RankedParts]) -> RankedParts:
        """`compute(self)`, once per record, like `match_facts` (matching's encoding of them)."""
        parts = self._ranked
        if parts is None:
            parts = compute(self)
            object.__setattr__(self, "_ranked", parts)  # a cache, not a change
        return parts  # type: ignore[no-any-return]

    def _public(self, status: str) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "model_family": self.model_family,
            "capabilities": {
                "task_types": list(self.task_types),
                "languages": list(self.languages),
                "specializations": list(self.specializations),
            },
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "status": status,
            "registered_at": self.registered_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "updated_at": self.updated_at,
            "version": self.version,
            "revision": self.revision,
            "load": {
                "active_tasks": self.active_tasks,
                "queued_tasks": self.queued_tasks,
                "utilization": self.utilization,
            },
            "performance": self.performance(),
        }

    def to_snapshot(self) -> tuple[Any, ...]:
        """Compact positional form for the replica snapshot file. orjson writes the tuples as
        arrays and the datetimes as `isoformat` would, in C: a snapshot encodes tens of
        thousands of agents on the event loop (in steps), so the less Python per agent the
        better."""
        return (
            self.tenant_id,
            self.agent_id,
            self.name,
            self.model_family,
            self.task_types,
            self.languages,
            self.specializations,
            self.max_concurrent_tasks,
            self.active_tasks,
            self.queued_tasks,
            self.load_observed_at,
            self.registered_at,
            self.last_heartbeat_at,
            self.updated_at,
            self.version,
            self.deleted_at,
            self.task_count,
            self.success_count,
            self.quality_sum,
            self.latency_ms_sum,
            self.revision,
        )

    @classmethod
    def from_snapshot(cls, row: list[Any]) -> AgentRecord:
        return cls(
            tenant_id=row[0],
            agent_id=row[1],
            name=row[2],
            model_family=row[3],
            task_types=tuple(row[4]),
            languages=tuple(row[5]),
            specializations=tuple(row[6]),
            max_concurrent_tasks=row[7],
            active_tasks=row[8],
            queued_tasks=row[9],
            load_observed_at=_dt(row[10]),
            registered_at=_req_dt(row[11]),
            last_heartbeat_at=_req_dt(row[12]),
            updated_at=_req_dt(row[13]),
            version=row[14],
            deleted_at=_dt(row[15]),
            task_count=row[16],
            success_count=row[17],
            quality_sum=row[18],
            latency_ms_sum=row[19],
            # Snapshots written before the revision existed: the migration that added it gave
            # every row 1, and the resync after a snapshot start corrects any row changed since.
            revision=row[20] if len(row) > 20 else 1,
        )

    def evolve(self, **changes: Any) -> AgentRecord:
        return replace(self, **changes)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _req_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)
