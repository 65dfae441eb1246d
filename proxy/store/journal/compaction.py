"""Compaction: rewriting the journal with only its live state, so that the file does not grow
with every operation it ever held.

A rewrite writes the live state (meta, pending entries, entries and outcomes of the most recent
finished operations, one batch) to `journal.log.compact`, fsyncs it, renames it over
`journal.log` and fsyncs the directory. A crash at any step leaves one complete file: the old one
until the rename, the new one after; a leftover `.compact` file is deleted on open.

It happens when the file passes `compact_bytes` (then at twice the size it was rewritten to), on
request, and while the disk is full, when enough finished operations could be left out. The
writer decides when (between batches) and what a failure means; this module does the rewrite,
on the I/O thread, and keeps its figures.
"""

from __future__ import annotations

from typing import Final

import orjson
import structlog

from proxy.store.journal.codec import (
    TYPE_ENTRY,
    TYPE_META,
    TYPE_OUTCOME,
    encode,
    encode_commit,
    entry_to_obj,
    meta_body,
    outcome_to_obj,
)
from proxy.store.journal.files import LogFile
from proxy.store.journal.index import Index
from proxy.store.journal.model import JournalEntry, Outcome
from proxy.store.journal.space import DiskSpace, is_space_error

_log = structlog.get_logger(__name__)

# While full, a rewrite is tried after this many (or `depth`, if more) outcomes, or once drained.
_PRESSURE_COMPACT_MIN: Final = 64


class Compactor:
    def __init__(
        self, file: LogFile, index: Index, space: DiskSpace, *, compact_bytes: int
    ) -> None:
        self._file = file
        self._index = index
        self._space = space
        self.compact_bytes = compact_bytes
        self.compact_at = compact_bytes  # the file size past which the writer rewrites it
        self.sheddable = 0  # outcome records in the file that a rewrite could leave out
        self.pressure_tried_at = 0  # `sheddable` when a rewrite under pressure last failed
        self.compactions = 0
        self.failures = 0

    def due(self) -> bool:
        return self._file.size > self.compact_at or self._pressure_due()

    def _pressure_due(self) -> bool:
        fresh = self.sheddable - self.pressure_tried_at
        if not self._space.full or fresh <= 0:
            return False
        return not self._index.pending or fresh >= max(_PRESSURE_COMPACT_MIN, self._index.depth)

    def write(self, entries: list[JournalEntry], outcomes: list[Outcome]) -> tuple[int, int]:
        """Write the live state to the side file and rename it into place; runs in the thread."""
        parts = [encode(TYPE_META, meta_body(self._index.durable_next_seq))]
        parts.extend(encode(TYPE_ENTRY, orjson.dumps(entry_to_obj(e))) for e in entries)
        parts.extend(encode(TYPE_OUTCOME, orjson.dumps(outcome_to_obj(o))) for o in outcomes)
        data = b"".join(parts)
        data += encode_commit(0, len(parts), data)
        fd = self._file.replace(data)
        return fd, len(data)

    def write_making_room(
        self, entries: list[JournalEntry], outcomes: list[Outcome]
    ) -> tuple[int, int, int]:
        """`write` (fd, size, outcomes kept); when the disk is full, again without the finished
        operations and with the reserve lent to it: the rename frees the old file, which holds
        all the new one does, and the reserve is restored after."""
        try:
            return (*self.write(entries, outcomes), len(outcomes))
        except OSError as exc:
            if not is_space_error(exc):
                raise
            self._space.note_error(exc)
        pending = [entry for entry in entries if entry.op_id in self._index.pending]
        self._space.lend_all()
        return (*self.write(pending, []), 0)

    def install(self, new_fd: int, new_size: int, *, kept_outcomes: int) -> None:
        self._file.install(new_fd, new_size)
        self.compactions += 1
        self.sheddable = self.pressure_tried_at = kept_outcomes
        # Doubling keeps compaction amortised O(1) even when the live state itself is large.
        self.compact_at = max(self.compact_bytes, 2 * new_size)

    def failed(self, exc: OSError) -> None:
        self.failures += 1
        self.compact_at = self._file.size + self.compact_bytes
        _log.warning("journal_compaction_failed", path=str(self._file.path), error=str(exc))
