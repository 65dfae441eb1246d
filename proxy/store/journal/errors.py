"""How the journal says no: callers tell a write that did not reach the disk (do not answer 202)
from a full disk (answer that it passes once the journal drains) and from a journal that will not
open because acknowledged records do not read back."""

from __future__ import annotations

from proxy.store.journal.scan import Damage


class JournalError(Exception):
    """The journal could not make a record durable (or cannot be opened); do not answer 202."""


class JournalFull(JournalError):
    """The journal's disk has no room for a new entry (its reserve is kept for the outcomes of
    the entries it holds). Nothing of the entry was kept; it passes once the journal drains."""


class JournalDamaged(JournalError):
    """Records that had been acknowledged do not read back; `open` refuses rather than drop them."""

    def __init__(self, message: str, damage: list[Damage]) -> None:
        super().__init__(message)
        self.damage = damage
