"""The durable local write journal: the record behind every `202 Accepted`.

Callers outside this package import from here only; the modules behind it are free to move.
`codec` is exported as a namespace for the tools and tests that read journal files byte by byte.
"""

from proxy.store.journal import codec
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
]
