"""The local replica: every agent of the tenants this sidecar serves, in memory.

It answers reads while PostgreSQL is unreachable (and, with ``read_mode=replica``, while it is
fresh enough). Two layers:

- the base: rows as PostgreSQL last told us (initial load, NOTIFY, catch-up, resync); a row only
  replaces the one held when its version is higher, so out-of-order news cannot regress it;
- the overlay: writes journaled during an outage, per agent, in order. Reads fold them over the
  base (`proxy.registry.apply`), so the host app reads its own writes before PostgreSQL has them.
  The fold is kept per agent until the agent changes, so a deep backlog costs a read no more
  than the writes of the agents it touches; a performance post whose `event_id` is already
  pending counts once, as PostgreSQL will count it.

Every read must show a state that existed. The one moment where base and overlay could both hold
the same write is while the journal replay has a batch in flight: PostgreSQL may have committed
it, and its rows may reach the base (NOTIFY, a resync) before the replay hears the commit and
drops the entries. So the replay *holds* the agents of its batch: rows for them are buffered
until it releases them, dropping the applied entries in the same step. A write a request commits
meanwhile is shown from the overlay until then, and entries settled while their agent stays held
(for an earlier batch of unknown fate) stay there too.

Reads are answered from what each agent looks like now (its base row with its pending writes
folded in), kept per tenant and refreshed whenever a row or a pending write of that agent
changes, never per read:

- a capability query walks agents best first, in an order kept per task type and language (the
  same sort key as `proxy.registry.matching.rank`, so both paths answer the same), and stops
  once `limit` agents pass the remaining filters; an order is built the first time a query walks
  it and kept on change from then on, the others only counted;
- stats come from sums kept on change, and from the agents ordered by last heartbeat, so the
  active and idle counts need no scan either.

Hand-written because it is the registry's own index; no library holds it. The orders themselves
are `sortedcontainers.SortedList`s: a plain list's sorted insert moves every entry after it, tens
of microseconds per order in a tenant of tens of thousands of agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.apply import apply_write
from proxy.registry.matching import matches, sort_key
from proxy.registry.matching import stats as matching_stats
from proxy.registry.models import AgentQuery
from proxy.resilience import SYSTEM_CLOCK, Clock
from proxy.store.counted_events import CountedEvents
from proxy.store.pending_write import PendingWrite
from proxy.store.tenant_state import UNFILED_MAX, Order, TenantState
from proxy.store.untracked import untrack


class Replica:
    def __init__(self, *, max_agents: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_agents = max_agents
        self.clock = clock
        self._tenants: dict[str, TenantState] = {}
        self._count = 0
        self.watermark = 0
        self.partial = False
        self.warm = False
        self.from_snapshot = False
        self.connected = False
        self._last_contact: float | None = None
        self._contact_wall: float | None = None
        # (tenant, agent) held by a replay batch in flight -> the newest row that arrived meanwhile.
        self._held: dict[tuple[str, str], AgentRecord | None] = {}
        # While a full resync reads PostgreSQL: the newest row applied meanwhile of each agent
        # (`begin_reload`), newer than what the read may see.
        self._applied_during_reload: dict[tuple[str, str], AgentRecord] | None = None
        # Held agent -> the writes committed during the hold: (op id, event id).
        self._held_writes: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        self._pending_total = 0
        self._counted = CountedEvents(clock=clock)
        self._loading = False

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
        if not self.connected:
            return False
        last = self._last_contact
        if last is not None:
            # `age` without its frame and its max(0, ...): asked once per replica read.
            return self.clock.monotonic() - last <= seconds
        age = self.age()
        return age is not None and age <= seconds

    # -- base rows -------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> TenantState:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = TenantState()
        return t

    def _rebuild(self, t: TenantState, tenant: str) -> None:
        """File every agent of the tenant afresh (after a full resync), sorting once."""
        current: dict[str, AgentRecord] = {}
        for agent_id in t.agents.keys() | t.pending.keys():
            rec = self._view(t, tenant, agent_id) if agent_id in t.pending else t.agents[agent_id]
            if rec is not None and rec.deleted_at is None:
                current[agent_id] = rec
        t.file_all(current)

    def _refresh(self, t: TenantState, tenant: str, agent_id: str) -> None:
        """File the agent as reads should see it now, in every order and sum."""
        rec = self._view(t, tenant, agent_id) if agent_id in t.pending else t.agents.get(agent_id)
        if rec is not None and rec.deleted_at is not None:
            rec = None
        old = t.current.get(agent_id)
        if old is rec:
            return
        # A change that moves neither its score nor its capabilities (a heartbeat) keeps its
        # place in every order; its score matters only to orders already built.
        moved = (
            old is None
            or rec is None
            or old.task_types != rec.task_types
            or old.languages != rec.languages
            or (bool(t.ranked) and sort_key(old) != sort_key(rec))
        )
        if old is not None:
            del t.current[agent_id]
            if moved:
                t.leave(old)
            beat = (old.last_heartbeat_at, agent_id)
            t.beats.remove(beat)
            if old.active_tasks == 0:
                t.idle_beats.remove(beat)
            t.utilization_sum -= old.utilization
            rate = old.success_rate
            if rate is not None:
                t.success_sum -= rate
                t.rated -= 1
        if rec is not None:
            t.current[agent_id] = rec
            if moved:
                t.enter(rec)
            beat = (rec.last_heartbeat_at, agent_id)
            t.beats.add(beat)
            if rec.active_tasks == 0:
                t.idle_beats.add(beat)
            t.utilization_sum += rec.utilization
            rate = rec.success_rate
            if rate is not None:
                t.success_sum += rate
                t.rated += 1
        if not t.current:
            # Sums kept by adding and taking away drift in the last bits: start them afresh.
            t.utilization_sum = t.success_sum = 0.0

    def holds(self, tenant: str, agent_id: str, version: int) -> bool:
        """Whether a row of `version` would change nothing: the base holds it or a newer one
        (an agent held by the replay is never said to, its rows wait in the buffer)."""
        t = self._tenants.get(tenant)
        if t is None or (tenant, agent_id) in self._held:
            return False
        rec = t.agents.get(agent_id)
        return rec is not None and rec.version >= version

    def upsert(self, rec: AgentRecord) -> bool:
        """Apply one row from PostgreSQL; False when it is not newer than what we hold."""
        self.watermark = max(self.watermark, rec.version)
        key = (rec.tenant_id, rec.agent_id)
        applied = self._applied_during_reload
        if applied is not None:
            kept = applied.get(key)
            if kept is None or kept.version < rec.version:
                applied[key] = rec
        if key in self._held:
            buffered = self._held[key]
            if buffered is None or buffered.version < rec.version:
                self._held[key] = rec
            return False
        return self._upsert(rec)

    def _upsert(self, rec: AgentRecord) -> bool:
        t = self._tenant(rec.tenant_id)
        old = t.agents.get(rec.agent_id)
        if old is not None and old.version >= rec.version:
            return False
        self._drop_view(t, rec.agent_id)
        if old is not None:
            del t.agents[rec.agent_id]
            self._count -= 1
        if rec.deleted_at is not None:
            self._changed(t, rec.tenant_id, rec.agent_id)
            return True
        if self._count >= self.max_agents:
            self.partial = True
            self._changed(t, rec.tenant_id, rec.agent_id)
            return False
        # Held until the agent changes again: out of the collector's walks (`untracked`).
        untrack(rec)
        t.agents[rec.agent_id] = rec
        self._count += 1
        self._changed(t, rec.tenant_id, rec.agent_id)
        return True

    def begin_reload(self) -> None:
        """A full resync is about to read PostgreSQL. A row applied from now until its
        `replace_all` (a commit of this sidecar, a notification) may be newer than what the
        read sees; `replace_all` applies it again over the rows read, or the base would go back
        to the older row, or lose a new agent, while the watermark had passed it."""
        self._applied_during_reload = {}

    def end_reload(self) -> None:
        """The full resync failed before `replace_all`: stop keeping rows for it."""
        self._applied_during_reload = None

    def replace_all(self, tenants: Iterable[str], records: Iterable[AgentRecord]) -> None:
        """A full resync: the base becomes `records`, and the rows applied since
        `begin_reload` that are newer; the overlay is kept."""
        applied, self._applied_during_reload = self._applied_during_reload, None
        old = self._tenants
        self._tenants = {}
        self._count = 0
        self.partial = False
        for name in tenants:
            t = self._tenant(name)
            if name in old:
                t.pending = old[name].pending
                t.pending_total = old[name].pending_total
                t.doubt = old[name].doubt
                # Which orders queries use: `_rebuild` builds them again, from the new base.
                t.ranked = old[name].ranked
        # A held agent keeps the base it has until the replay releases it; the resync's row
        # for it waits in the buffer like any other.
        self._loading = True
        try:
            for tenant, agent_id in self._held:
                kept = old[tenant].agents.get(agent_id) if tenant in old else None
                if kept is not None and tenant in self._tenants:
                    self._upsert(kept)
            for rec in records:
                self.upsert(rec)
            for rec in (applied or {}).values():
                if rec.tenant_id in self._tenants:
                    self.upsert(rec)
        finally:
            self._loading = False
        # A folded view stays good while its base row is the same version: a resync during a
        # backlog then does not make every read fold its agent's writes again.
        for name, t in self._tenants.items():
            before = old.get(name)
            if before is None:
                continue
            for agent_id, view in before.views.items():
                was, now = before.agents.get(agent_id), t.agents.get(agent_id)
                same = (was is None and now is None) or (
                    was is not None and now is not None and was.version == now.version
                )
                if same and agent_id in t.pending:
                    t.views[agent_id] = view
                    t.view_events[agent_id] = before.view_events.get(agent_id, set())
        for name, t in self._tenants.items():
            self._rebuild(t, name)
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

    def _view(self, t: TenantState, tenant: str, agent_id: str) -> AgentRecord | None:
        if agent_id in t.views:
            return t.views[agent_id]
        rec = t.agents.get(agent_id)
        counted: set[str] = set()
        for w in t.pending.get(agent_id, ()):
            rec = self._fold(tenant, rec, w, counted)
        t.views[agent_id] = rec
        t.view_events[agent_id] = counted
        return rec

    @staticmethod
    def _fold(
        tenant: str,
        rec: AgentRecord | None,
        w: PendingWrite,
        counted: set[str],
    ) -> AgentRecord | None:
        """One pending write over the view so far, as PostgreSQL will apply it."""
        if w.uncertain:
            return rec  # never counted twice: shown once PostgreSQL has settled it
        event_id = w.event_id
        if event_id is not None:
            if w.counted or event_id in counted:
                return rec  # PostgreSQL counts an event once
            counted.add(event_id)
        try:
            folded = apply_write(w.kind, tenant, w.payload, rec, w.received_at)
        except errors.RegistryError:
            # PostgreSQL will reject it on replay too; the read shows what will stay.
            return rec
        if folded is not None:
            untrack(folded)
        return folded

    def add_pending(self, tenant: str, agent_id: str, write: PendingWrite) -> None:
        """Show a journaled write. One reporting an event that an earlier write of unknown fate
        reported too is of unknown fate itself (PostgreSQL may count the event already), and is
        marked so."""
        t = self._tenant(tenant)
        event_id = write.event_id
        if event_id is not None:
            if self._counted.knows((tenant, agent_id), event_id):
                write.counted = True
            if write.uncertain:
                t.doubt.setdefault(agent_id, set()).add(event_id)
            elif event_id in t.doubt.get(agent_id, ()):
                write.uncertain = True
        cached = agent_id in t.views
        t.pending.setdefault(agent_id, []).append(write)
        t.pending_total += 1
        self._pending_total += 1
        # Folded into the view now, once, rather than by every read after it: a deep backlog
        # then costs a read nothing more.
        if cached:
            t.views[agent_id] = self._fold(
                tenant,
                t.views[agent_id],
                write,
                t.view_events.setdefault(agent_id, set()),
            )
        else:
            self._view(t, tenant, agent_id)
        self._changed(t, tenant, agent_id)

    def drop_pending(self, tenant: str, agent_id: str, op_id: str) -> None:
        t = self._tenants.get(tenant)
        if t is None:
            return
        writes = t.pending.get(agent_id)
        if writes is None:
            return
        kept = [w for w in writes if w.op_id != op_id]
        dropped = len(writes) - len(kept)
        t.pending_total -= dropped
        self._pending_total -= dropped
        self._drop_view(t, agent_id)
        if kept:
            writes[:] = kept
        else:
            del t.pending[agent_id]
        if agent_id in t.doubt:
            doubt = {w.event_id for w in kept if w.uncertain and w.event_id is not None}
            if doubt:
                t.doubt[agent_id] = doubt
            else:
                del t.doubt[agent_id]
        self._changed(t, tenant, agent_id)

    def event_counted(self, tenant: str, agent_id: str, event_id: str) -> None:
        """PostgreSQL has counted this performance event of the agent (its base row has it)."""
        if not self._counted.add((tenant, agent_id), event_id):
            return
        t = self._tenants.get(tenant)
        writes = t.pending.get(agent_id) if t is not None else None
        if t is None or not writes:
            return
        for w in writes:
            if w.event_id == event_id:
                w.counted = True
        self._drop_view(t, agent_id)
        self._changed(t, tenant, agent_id)

    def has_pending(self, tenant: str, agent_id: str) -> bool:
        t = self._tenants.get(tenant)
        return bool(t and t.pending.get(agent_id))

    def pending_count(self, tenant: str | None = None) -> int:
        """Journaled writes not yet applied: of one tenant, or of all."""
        if tenant is None:
            return self._pending_total
        t = self._tenants.get(tenant)
        return t.pending_total if t is not None else 0

    # -- the replay's batches --------------------------------------------------------------

    def hold(self, keys: Iterable[tuple[str, str]]) -> None:
        """Buffer rows from PostgreSQL for these agents until `release` (a batch in flight)."""
        for key in keys:
            self._held.setdefault(key, None)

    def release(self, keys: Iterable[tuple[str, str]]) -> None:
        """End a hold: rows that arrived meanwhile are applied now, newest wins, and the writes
        committed meanwhile leave the overlay in the same step."""
        for key in keys:
            if key in self._held:
                rec = self._held.pop(key)
                for op_id, event_id in self._held_writes.pop(key, ()):
                    self.settled(key[0], key[1], op_id, event_id)
                if rec is not None:
                    self._upsert(rec)

    def settled(self, tenant: str, agent_id: str, op_id: str, event_id: str | None) -> None:
        """PostgreSQL now holds this journaled write: it leaves the overlay, and its event (if it
        reports one) is counted.

        While a replay batch holds the agent the base stays the row from before, so the write
        stays in the overlay until the hold ends, or reads would lose it meanwhile."""
        key = (tenant, agent_id)
        if key in self._held:
            self._held_writes.setdefault(key, []).append((op_id, event_id))
            return
        self.drop_pending(tenant, agent_id, op_id)
        if event_id is not None:
            self.event_counted(tenant, agent_id, event_id)

    def committed(self, rec: AgentRecord, write: PendingWrite) -> None:
        """A write this sidecar committed: its row (as of its commit) goes to the base, its
        event (if it reports one) is counted.

        While a replay batch holds the agent, the base stays as it is, so the write is shown
        from the overlay until the hold ends, and its event is counted then."""
        key = (rec.tenant_id, rec.agent_id)
        if key in self._held:
            self._held_writes.setdefault(key, []).append((write.op_id, write.event_id))
            self.add_pending(key[0], key[1], write)
        elif write.event_id is not None:
            self.event_counted(key[0], key[1], write.event_id)
        self.upsert(rec)

    # -- reads -----------------------------------------------------------------------------

    def get(self, tenant: str, agent_id: str) -> AgentRecord | None:
        t = self._tenants.get(tenant)
        if t is None:
            return None
        rec = self._view(t, tenant, agent_id) if agent_id in t.pending else t.agents.get(agent_id)
        return rec if rec is not None and rec.deleted_at is None else None

    def knows_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    def _changed(self, t: TenantState, tenant: str, agent_id: str) -> None:
        """Call once the agent's base row or pending writes are as they will stay. (A full
        resync files every agent at its end, sorting once: nothing is filed while it loads.)"""
        t.dirty.add(agent_id)
        if len(t.dirty) >= UNFILED_MAX and not self._loading:
            self._filed(tenant)

    def _filed(self, tenant: str) -> TenantState | None:
        """The tenant with every changed agent filed again, ready to read."""
        t = self._tenants.get(tenant)
        if t is not None and t.dirty:
            for agent_id in t.dirty:
                self._refresh(t, tenant, agent_id)
            t.dirty.clear()
        return t

    def count(self, tenant: str) -> int:
        """Live agents of the tenant, journaled ones included."""
        t = self._filed(tenant)
        return len(t.current) if t is not None else 0

    def query(self, tenant: str, q: AgentQuery) -> list[AgentRecord]:
        """The best `q.limit` agents passing the hard filters, best first (the order of
        `matching.rank`): a walk down the tenant's order for the task type that stops at the
        limit."""
        t = self._filed(tenant)
        if t is None:
            return []
        out: list[AgentRecord] = []
        current = t.current
        # Every agent that passes is in the order of the task type and of each language asked
        # for: the shortest of them is walked.
        sizes = t.sizes
        shortest: Order = q.task_type
        size = sizes.get(shortest, 0)
        for language in q.languages:
            narrower = (q.task_type, language)
            n = sizes.get(narrower, 0)
            if n < size:
                shortest, size = narrower, n
        for _key, agent_id in t.order(shortest):
            rec = current[agent_id]
            if matches(rec, q):
                out.append(rec)
                if len(out) >= q.limit:
                    break
        return out

    def tenant_stats(self, tenant: str, now: datetime) -> dict[str, Any]:
        """`matching.stats` of the tenant's agents, from what is kept on change."""
        t = self._filed(tenant)
        return t.stats(now) if t is not None else matching_stats([], now)

    # -- snapshot --------------------------------------------------------------------------

    @staticmethod
    def _drop_view(t: TenantState, agent_id: str) -> None:
        t.views.pop(agent_id, None)
        t.view_events.pop(agent_id, None)

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
            "counted_events": len(self._counted),
        }
