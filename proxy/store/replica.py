"""The local replica: every agent of the tenants this sidecar serves, in memory.

It answers reads while PostgreSQL is unreachable (and, with ``read_mode=replica``, while it is
fresh enough). Two layers:

- the base: rows as PostgreSQL last told us (initial load, NOTIFY, catch-up, resync); a row only
  replaces the one held when its version is higher, so out-of-order news cannot regress it;
- the overlay: writes journaled during an outage, per agent, in order. Reads fold them over the
  base (`proxy.registry.apply`), so the host app reads its own writes before PostgreSQL has them.

Capability queries use an index by task type and the same filters, score and order as the
database path (`proxy.registry.matching`). Hand-written because it is the registry's own index;
no library holds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.apply import apply_write
from proxy.registry.matching import matches
from proxy.registry.models import AgentQuery
from proxy.resilience.clock import SYSTEM_CLOCK, Clock


@dataclass(slots=True)
class PendingWrite:
    op_id: str
    kind: str
    payload: dict[str, Any]
    received_at: datetime


@dataclass(slots=True)
class _Tenant:
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    by_task: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[str, list[PendingWrite]] = field(default_factory=dict)


def snapshot_rows(view: tuple[list[str], bool, list[AgentRecord]]) -> dict[str, Any]:
    tenants, partial, records = view
    return {
        "tenants": tenants,
        "partial": partial,
        "agents": [rec.to_snapshot() for rec in records],
    }


class Replica:
    def __init__(self, *, max_agents: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_agents = max_agents
        self.clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._count = 0
        self.watermark = 0
        self.partial = False
        self.warm = False
        self.from_snapshot = False
        self.connected = False
        self._last_contact: float | None = None
        self._contact_wall: float | None = None

    # -- freshness -------------------------------------------------------------------------

    def touch(self) -> None:
        """PostgreSQL just confirmed the replica is in step (a sync or a live listener ping)."""
        self._last_contact = self.clock.monotonic()
        self._contact_wall = self.clock.wall()

    def age(self) -> float | None:
        """Seconds since the replica was last known in step with PostgreSQL; None if never."""
        if self._last_contact is not None:
            return max(0.0, self.clock.monotonic() - self._last_contact)
        if self._contact_wall is not None:
            return max(0.0, self.clock.wall() - self._contact_wall)
        return None

    def fresh_within(self, seconds: float) -> bool:
        age = self.age()
        return self.connected and age is not None and age <= seconds

    # -- base rows -------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        return t

    def _index(self, t: _Tenant, rec: AgentRecord) -> None:
        for task in rec.task_types:
            t.by_task.setdefault(task, set()).add(rec.agent_id)

    def _unindex(self, t: _Tenant, rec: AgentRecord) -> None:
        for task in rec.task_types:
            ids = t.by_task.get(task)
            if ids is not None:
                ids.discard(rec.agent_id)
                if not ids:
                    del t.by_task[task]

    def upsert(self, rec: AgentRecord) -> bool:
        """Apply one row from PostgreSQL; False when it is not newer than what we hold."""
        self.watermark = max(self.watermark, rec.version)
        t = self._tenant(rec.tenant_id)
        old = t.agents.get(rec.agent_id)
        if old is not None and old.version >= rec.version:
            return False
        if old is not None:
            self._unindex(t, old)
            del t.agents[rec.agent_id]
            self._count -= 1
        if rec.deleted_at is not None:
            return True
        if self._count >= self.max_agents:
            self.partial = True
            return False
        t.agents[rec.agent_id] = rec
        self._count += 1
        self._index(t, rec)
        return True

    def replace_all(self, tenants: Iterable[str], records: Iterable[AgentRecord]) -> None:
        """A full resync: the base becomes exactly `records`; the overlay is kept."""
        pending = {name: t.pending for name, t in self._tenants.items()}
        self._tenants = {}
        self._count = 0
        self.partial = False
        for name in tenants:
            self._tenant(name).pending = pending.get(name, {})
        for rec in records:
            self.upsert(rec)
        self.warm = True
        self.from_snapshot = False

    @property
    def size(self) -> int:
        return self._count

    def tenants(self) -> list[str]:
        return list(self._tenants)

    def records(self) -> Iterator[AgentRecord]:
        for t in self._tenants.values():
            yield from t.agents.values()

    # -- overlay of journaled writes -------------------------------------------------------

    def _view(self, t: _Tenant, tenant: str, agent_id: str) -> AgentRecord | None:
        rec = t.agents.get(agent_id)
        for w in t.pending.get(agent_id, ()):
            try:
                rec = apply_write(w.kind, tenant, w.payload, rec, w.received_at)
            except errors.RegistryError:
                # PostgreSQL will reject it on replay too; the read shows what will stay.
                continue
        return rec

    def preview(
        self, tenant: str, agent_id: str, kind: str, payload: dict[str, Any]
    ) -> AgentRecord | None:
        """The agent as it would be after this write; raises RegistryError on a sure conflict."""
        t = self._tenant(tenant)
        return apply_write(
            kind, tenant, payload, self._view(t, tenant, agent_id), datetime.now(UTC)
        )

    def add_pending(self, tenant: str, agent_id: str, write: PendingWrite) -> None:
        self._tenant(tenant).pending.setdefault(agent_id, []).append(write)

    def drop_pending(self, tenant: str, agent_id: str, op_id: str) -> None:
        t = self._tenants.get(tenant)
        if t is None:
            return
        writes = t.pending.get(agent_id)
        if writes is None:
            return
        writes[:] = [w for w in writes if w.op_id != op_id]
        if not writes:
            del t.pending[agent_id]

    def has_pending(self, tenant: str, agent_id: str) -> bool:
        t = self._tenants.get(tenant)
        return bool(t and t.pending.get(agent_id))

    def pending_count(self) -> int:
        return sum(len(w) for t in self._tenants.values() for w in t.pending.values())

    # -- reads -----------------------------------------------------------------------------

    def get(self, tenant: str, agent_id: str) -> AgentRecord | None:
        t = self._tenants.get(tenant)
        if t is None:
            return None
        rec = self._view(t, tenant, agent_id) if agent_id in t.pending else t.agents.get(agent_id)
        return rec if rec is not None and rec.deleted_at is None else None

    def knows_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def all(self, tenant: str) -> list[AgentRecord]:
        t = self._tenants.get(tenant)
        if t is None:
            return []
        if not t.pending:
            return list(t.agents.values())
        ids = set(t.agents) | set(t.pending)
        out = []
        for agent_id in ids:
            rec = self._view(t, tenant, agent_id)
            if rec is not None and rec.deleted_at is None:
                out.append(rec)
        return out

    def query(self, tenant: str, q: AgentQuery) -> list[AgentRecord]:
        """Agents passing the hard filters (unordered; rank with `matching.rank`)."""
        t = self._tenants.get(tenant)
        if t is None:
            return []
        if q.task_type is not None:
            ids: Iterable[str] = t.by_task.get(q.task_type, set()) | set(t.pending)
        else:
            ids = set(t.agents) | set(t.pending) if t.pending else t.agents.keys()
        out = []
        for agent_id in ids:
            rec = (
                self._view(t, tenant, agent_id) if agent_id in t.pending else t.agents.get(agent_id)
            )
            if rec is not None and matches(rec, q):
                out.append(rec)
        return out

    # -- snapshot --------------------------------------------------------------------------

    def snapshot_data(self) -> dict[str, Any]:
        return snapshot_rows(self.snapshot_view())

    def snapshot_view(self) -> tuple[list[str], bool, list[AgentRecord]]:
        """An immutable copy, cheap to take on the event loop; the records are frozen, so the
        rows can be built from it in another thread while the replica moves on."""
        return list(self._tenants), self.partial, list(self.records())

    def load_snapshot(self, data: dict[str, Any], *, watermark: int, written_at: float) -> None:
        records = [AgentRecord.from_snapshot(row) for row in data.get("agents", [])]
        self.replace_all(data.get("tenants", []), records)
        self.partial = bool(data.get("partial", False)) or self.partial
        self.watermark = max(self.watermark, watermark)
        self.from_snapshot = True
        self._last_contact = None
        self._contact_wall = written_at

    def stats(self) -> dict[str, Any]:
        age = self.age()
        return {
            "agents": self._count,
            "tenants": len(self._tenants),
            "age_seconds": round(age, 3) if age is not None else None,
            "partial": self.partial,
            "warm": self.warm,
            "connected": self.connected,
            "from_snapshot": self.from_snapshot,
            "watermark": self.watermark,
            "pending_writes": self.pending_count(),
        }
