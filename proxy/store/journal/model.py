"""What the journal holds: an operation waiting to be applied (an entry) and how it left the
journal (an outcome). Plain values, shared by the codec that writes them, the index that holds
them and the callers that replay them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OpStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    op_id: str
    kind: str
    tenant: str
    key: str
    payload: dict[str, Any]
    created_at: float
    trace: str | None = None
    """The span context (a W3C traceparent) of the request that journaled it, when tracing was
    on: the replay's span links to it. Records written without it read back as None."""


@dataclass(frozen=True, slots=True)
class Outcome:
    op_id: str
    status: OpStatus
    reason: str | None
    at: float
