"""What a write request is, apart from the op id it is carried under: its kind, and the
fingerprint that tells a retry from a different request.

Both are stored: the kind names a write in journal records, the ledger and the audit log, and
`request_hash` goes into the ledger with the operation. So neither may change between releases:
a journal written by one sidecar is replayed by the next, and a retry that reaches a newer
sidecar must still match its first attempt.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

import orjson


class WriteKind(StrEnum):
    """The kinds of write. Each value is the string stored for it, and a member equals (and
    hashes as) that string, so records written before the enum existed read the same."""

    REGISTER = "register"
    PATCH = "patch"
    LOAD = "load"
    HEARTBEAT = "heartbeat"
    PERFORMANCE = "performance"
    UNREGISTER = "unregister"
    ADMIN = "admin"
    """An operator's action: it changes no agent, it is written for its audit row."""


# The kinds that change an agent: those the replica shows over its rows while they wait.
REGISTRY_KINDS = frozenset(WriteKind) - {WriteKind.ADMIN}


def request_hash(kind: str, target: str | None, body: Any, extra: Any = None) -> str:
    # Keys sorted, so two encodings of the same JSON document hash alike.
    blob = orjson.dumps([kind, target, body, extra], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()
