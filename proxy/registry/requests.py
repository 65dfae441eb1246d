"""What identifies a write request, apart from the op id it is carried under.

An Idempotency-Key names one request: a retry under the same key must be the same request, and
a different one under it is refused. `request_hash` is the fingerprint compared, stored in the
ledger with the operation, so it must stay stable across releases: a retry that reaches a newer
sidecar still matches.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def request_hash(kind: str, target: str | None, body: Any, extra: Any = None) -> str:
    # Keys sorted, so two encodings of the same JSON document hash alike.
    blob = orjson.dumps([kind, target, body, extra], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()
