"""Op ids and request ids: unique without a random read each."""

from __future__ import annotations

import re

from proxy.registry.models import ID_PATTERN
from proxy.service.ids import UniqueIds


def test_ids_are_unique_and_shaped_like_a_uuid_hex() -> None:
    ids = UniqueIds()
    drawn = [ids.next() for _ in range(10_000)]
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in drawn)
    # An op id is handed back to a client to send again as its Idempotency-Key.
    assert all(re.match(ID_PATTERN, i) for i in drawn[:10])


def test_two_processes_or_two_starts_draw_apart() -> None:
    first, second = UniqueIds(), UniqueIds()
    assert first.next()[:16] != second.next()[:16]
