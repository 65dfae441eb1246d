"""The durable local write journal: the record behind every `202 Accepted` (journal.py says what
it promises, and each module beside it one part of how).

Callers outside this package import from here only; the modules behind it are free to move.
`codec` (the record format) and `scan` (reading a file back) are exported as namespaces for the
tools and tests that read journal files byte by byte.
"""

from proxy.store.journal import codec, scan
from proxy.store.journal.errors import JournalDamaged, JournalError, JournalFull
from proxy.store.journal.files import JOURNAL_FILE, LOCK_FILE, SEAL_FILE
from proxy.store.journal.journal import Journal
from proxy.store.journal.model import JournalEntry, OpStatus, Outcome
from proxy.store.journal.recovery import OnDamage, inspect_journal
from proxy.store.journal.space import RESERVE_FILE

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
