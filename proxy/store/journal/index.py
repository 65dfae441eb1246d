"""What the journal holds, in memory: the pending entries (in seq order, and by tenant), the
outcomes of the most recent finished operations, and the sequence numbers.

It changes only once the bytes it describes are durable (the writer commits a batch, or recovery
reads an acknowledged record back), so what it shows was never unacknowledged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import structlog

from proxy.store.journal.codec import (
    TYPE_ENTRY,
    TYPE_META,
    entry_from_obj,
    is_int,
    outcome_bound,
    outcome_from_obj,
)
from proxy.store.journal.model import JournalEntry, OpStatus, Outcome

_log = structlog.get_logger(__name__)


class Index:
    def __init__(self, max_outcomes: int) -> None:
        self.max_outcomes = max_outcomes
        self.next_seq = 1  # next seq handed out, including writes still in flight
        self.durable_next_seq = 1  # one past the highest seq that is on disk
        self.pending: dict[str, JournalEntry] = {}
        self.by_tenant: dict[str, dict[str, JournalEntry]] = {}
        self.finished: OrderedDict[str, tuple[Outcome, JournalEntry]] = OrderedDict()
        self.reserved = 0  # sum of outcome_bound() over pending entries

    def add_pending(self, entry: JournalEntry) -> None:
        # An op journaled again (`append(reopen=True)`) is no longer finished.
        self.finished.pop(entry.op_id, None)
        self.pending[entry.op_id] = entry
        self.by_tenant.setdefault(entry.tenant, {})[entry.op_id] = entry
        self.reserved += outcome_bound(entry.op_id)

    def finish(self, outcome: Outcome) -> None:
        entry = self.pending.pop(outcome.op_id)
        self.reserved -= outcome_bound(entry.op_id)
        tenant_ops = self.by_tenant[entry.tenant]
        del tenant_ops[outcome.op_id]
        if not tenant_ops:
            del self.by_tenant[entry.tenant]
        if self.max_outcomes == 0:
            return
        self.finished[outcome.op_id] = (outcome, entry)
        while len(self.finished) > self.max_outcomes:
            self.finished.popitem(last=False)

    def load(self, rtype: int, obj: Any) -> None:
        """Take in a record read back from the file (in file order), as `add_pending` and
        `finish` took it in when it was written."""
        if rtype == TYPE_META:
            next_seq = obj.get("next_seq") if isinstance(obj, dict) else None
            if not is_int(next_seq):
                raise ValueError("meta record has no integer next_seq")
            self.next_seq = max(self.next_seq, next_seq)
        elif rtype == TYPE_ENTRY:
            entry = entry_from_obj(obj)
            self.next_seq = max(self.next_seq, entry.seq + 1)
            if entry.op_id in self.pending:
                _log.warning("journal_duplicate_entry_ignored", op_id=entry.op_id, seq=entry.seq)
                return
            # An op_id whose outcome is still remembered is appended again only when reopened
            # (or its outcome had been forgotten): the new entry stands either way.
            self.add_pending(entry)
        else:
            outcome = outcome_from_obj(obj)
            if outcome.op_id not in self.pending:
                _log.warning("journal_outcome_without_entry_ignored", op_id=outcome.op_id)
                return
            self.finish(outcome)

    def live_state(self, *, shed: bool) -> tuple[list[JournalEntry], list[Outcome]]:
        """What a rewrite keeps; `shed` leaves out finished operations (only pending remain)."""
        finished = [] if shed else list(self.finished.values())
        entries = [*self.pending.values(), *(entry for _, entry in finished)]
        entries.sort(key=lambda entry: entry.seq)
        return entries, [outcome for outcome, _ in finished]

    def pending_for(self, tenant: str, key: str | None = None) -> list[JournalEntry]:
        """Pending entries of one tenant (and optionally one key), in seq order."""
        entries = self.by_tenant.get(tenant)
        if not entries:
            return []
        if key is None:
            return list(entries.values())
        return [entry for entry in entries.values() if entry.key == key]

    def outcome(self, op_id: str) -> Outcome | None:
        finished = self.finished.get(op_id)
        return finished[0] if finished is not None else None

    def state(self, op_id: str) -> OpStatus | None:
        """PENDING while journaled, the outcome's status once finished, None when unknown."""
        if op_id in self.pending:
            return OpStatus.PENDING
        finished = self.finished.get(op_id)
        return finished[0].status if finished is not None else None

    @property
    def depth(self) -> int:
        return len(self.pending)
