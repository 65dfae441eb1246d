"""A write's kind and its request fingerprint are stored (journal records, the ledger, the audit
log), so both must read the same as the strings and hashes written before them."""

from __future__ import annotations

import orjson
import pytest

from proxy.registry.requests import REGISTRY_KINDS, WriteKind, request_hash
from proxy.store.repository.writes import WRITES

STORED = ["register", "patch", "load", "heartbeat", "performance", "unregister", "admin"]


def test_every_kind_is_the_string_stored_for_it() -> None:
    assert [k.value for k in WriteKind] == STORED
    for kind in WriteKind:
        assert kind == kind.value
        assert hash(kind) == hash(kind.value)
        assert f"{kind}" == kind.value
        assert orjson.dumps(kind) == orjson.dumps(kind.value)
        assert WriteKind(kind.value) is kind


def test_a_stored_string_finds_its_kind_in_a_set_or_a_mapping() -> None:
    assert "performance" in REGISTRY_KINDS
    by_kind: dict[str, int] = {WriteKind.LOAD: 1}
    assert by_kind["load"] == 1


def test_admin_records_change_no_agent() -> None:
    assert set(WriteKind) - REGISTRY_KINDS == {WriteKind.ADMIN}


def test_the_repository_has_a_write_for_every_kind() -> None:
    assert set(WRITES) == set(WriteKind)


# Hashes stored in ledgers today: a retry reaching a newer sidecar must still match them.
@pytest.mark.parametrize(
    ("args", "digest"),
    [
        (
            ("register", None, {"name": "n", "agent_id": "a1"}),
            "a4c3ee6da59688a8db62f6f453c6a78988313fded63654fc3c4d8ce767a81acf",
        ),
        (
            ("patch", "a1", [{"name": "x"}, 3]),
            "386733b182868a0eabb30901b76f9d7a88c68d361f75a54473dd725eac2310f0",
        ),
    ],
)
def test_request_hash_is_stable(args: tuple[str, str | None, object], digest: str) -> None:
    assert request_hash(*args) == digest
    kind, target, body = args
    assert request_hash(WriteKind(kind), target, body) == digest


def test_request_hash_ignores_key_order() -> None:
    assert request_hash("load", "a1", {"a": 1, "b": 2}) == request_hash(
        "load", "a1", {"b": 2, "a": 1}
    )
