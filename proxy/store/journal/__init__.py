"""The durable local write journal: the record behind every `202 Accepted`.

Callers outside this package import from here only; the modules behind it are free to move.
`codec` (the record format) and `scan` (reading a file back) are exported as namespaces for the
tools and tests that read journal files byte by byte.
"""

from proxy.store.journal import codec, scan
from proxy.store.journal.journal import (
    JOURNAL_FILE,
    LOCK_FILE,
    RESERVE_FILE,
    SEAL_FILE,
    Journal,
    JournalDamaged,
    JournalEntry,
    JournalError,
    JournalFull,
    OnDamage,
    OpStatus,
    Outcome,
    inspect_journal,
)

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "RESERVE_FILE",
    "SEAL_FILE",
    "Journal",
    "JournalDamaged",
    "JournalEntry",
    "JournalError",
    "JournalFull",
    "OnDamage",
    "OpStatus",
    "Outcome",
    "codec",
    "inspect_journal",
    "scan",
]
