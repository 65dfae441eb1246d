"""The journal's bytes: record framing, commit records, the clean-close seal and the bodies of
entry, outcome and meta records. Pure functions over bytes and values; reading a whole file back
is scan.py's, the I/O is files.py's.

On-disk format, version 2 (`journal.log`, big-endian): a sequence of records, each a 12-byte
header `magic b"RJ" | format version u8 | record type u8 | body length u32 | CRC-32 u32` followed
by the body. The CRC covers version, type, length and body. Types: `M` meta (orjson: `next_seq`,
so sequence numbers keep rising after compaction empties the file), `E` entry (orjson, a
`JournalEntry`; its optional `trace`, about 65 bytes, is left out when absent, so entries written
before it existed read back unchanged), `O` outcome (orjson, an `Outcome`; its reason is cut to
256 encoded bytes) and `C` commit (binary: `batch start offset u64 | records in the batch u32 |
CRC-32 of the batch's bytes u32`). Every write is one batch: its records, then one commit
record, in one write and one fsync. A record counts, was acknowledged, only once a commit record
closes its batch. An outcome after its entry means the operation has left the journal.

`journal.seal` is `b"RJSL" | state u8 ("C" closed, "O" in use) | size u64 | CRC-32 u32`: the
journal's size at a clean close, set back to "in use" before the journal changes again.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any, Final, NamedTuple, TypeGuard

import orjson

from proxy.store.journal.model import JournalEntry, OpStatus, Outcome

MAGIC: Final = b"RJ"
FORMAT_VERSION: Final = 2
LEGACY_VERSION: Final = 1
HEADER: Final = struct.Struct(">2sBBII")
_CRC_PREFIX: Final = struct.Struct(">BBI")

TYPE_META: Final = ord("M")
TYPE_ENTRY: Final = ord("E")
TYPE_OUTCOME: Final = ord("O")
TYPE_COMMIT: Final = ord("C")
DATA_TYPES: Final = frozenset({TYPE_META, TYPE_ENTRY, TYPE_OUTCOME})

# Commit record body: offset where the batch starts, records in it, CRC-32 of its bytes.
COMMIT_BODY: Final = struct.Struct(">QII")
COMMIT_RECORD_SIZE: Final = HEADER.size + COMMIT_BODY.size

# A length field beyond this is treated as damage instead of an instruction to read gigabytes.
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024

# An outcome's reason is cut to this many encoded bytes, so that the room an outcome needs is
# known when its entry is accepted (see `outcome_bound`).
REASON_MAX_BYTES: Final = 256
# Longest `at` a finished outcome can carry, as orjson writes a float (sign, 17 digits, exponent).
_AT_MAX_CHARS: Final = 24

# Seal file: magic, state, journal size at the clean close, CRC-32 of the state and the size.
SEAL: Final = struct.Struct(">4sBQI")
_SEAL_MAGIC: Final = b"RJSL"
_SEAL_CLOSED: Final = ord("C")
_SEAL_OPEN: Final = ord("O")


class Parsed(NamedTuple):
    version: int
    rtype: int
    body: bytes
    end: int


def _crc(version: int, rtype: int, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(_CRC_PREFIX.pack(version, rtype, len(body))))


def encode(rtype: int, body: bytes, version: int = FORMAT_VERSION) -> bytes:
    return HEADER.pack(MAGIC, version, rtype, len(body), _crc(version, rtype, body)) + body


def encode_commit(start: int, count: int, batch: bytes) -> bytes:
    """The record that closes a batch of `count` records (`batch`) written at `start`."""
    return encode(TYPE_COMMIT, COMMIT_BODY.pack(start, count, zlib.crc32(batch)))


def parse(buf: bytes, offset: int, limit: int | None = None) -> Parsed | str:
    """The record at `offset` (not reading past `limit`), or why there is none."""
    limit = len(buf) if limit is None else limit
    if limit - offset < HEADER.size:
        return "truncated header"
    magic, version, rtype, length, crc = HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        return "bad magic"
    if length > MAX_RECORD_BYTES:
        return f"implausible length {length}"
    start = offset + HEADER.size
    end = start + length
    if end > limit:
        return "truncated body"
    body = buf[start:end]
    if _crc(version, rtype, body) != crc:
        return "checksum mismatch"
    return Parsed(version, rtype, body, end)


# --------------------------------------------------------------------------- seal


def encode_seal(size: int | None) -> bytes:
    """The seal of a journal closed cleanly at `size` bytes, or of one in use (None)."""
    state, value = (_SEAL_OPEN, 0) if size is None else (_SEAL_CLOSED, size)
    crc = zlib.crc32(struct.pack(">BQ", state, value))
    return SEAL.pack(_SEAL_MAGIC, state, value, crc)


def decode_seal(data: bytes) -> int | None:
    """The size a cleanly closed journal had; None when it was not closed cleanly (or the seal
    does not read back, which only costs the extra checks of a clean close)."""
    if len(data) < SEAL.size:
        return None
    magic, state, value, crc = SEAL.unpack_from(data)
    if magic != _SEAL_MAGIC or zlib.crc32(struct.pack(">BQ", state, value)) != crc:
        return None
    return value if state == _SEAL_CLOSED else None


# --------------------------------------------------------------------------- record bodies


def meta_body(next_seq: int) -> bytes:
    return orjson.dumps({"format": FORMAT_VERSION, "next_seq": next_seq, "at": time.time()})


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fit_reason(reason: str | None) -> str | None:
    """`reason`, cut (with an ellipsis) to REASON_MAX_BYTES once encoded."""
    if reason is None or len(orjson.dumps(reason)) <= REASON_MAX_BYTES:
        return reason
    low, high = 0, len(reason)
    while low < high:
        mid = (low + high + 1) // 2
        if len(orjson.dumps(reason[:mid] + "\u2026")) <= REASON_MAX_BYTES:
            low = mid
        else:
            high = mid - 1
    return reason[:low] + "\u2026"


_OUTCOME_FIXED: Final = len(
    orjson.dumps({"op_id": "", "status": "rejected", "reason": None, "at": 0})
) - len(b"null0")


def outcome_bound(op_id: str) -> int:
    """Most bytes the outcome of `op_id` can take on disk, its own commit record included."""
    return (
        HEADER.size
        + _OUTCOME_FIXED
        + len(orjson.dumps(op_id))
        - 2
        + REASON_MAX_BYTES
        + _AT_MAX_CHARS
        + COMMIT_RECORD_SIZE
    )


def entry_to_obj(entry: JournalEntry) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "seq": entry.seq,
        "op_id": entry.op_id,
        "kind": entry.kind,
        "tenant": entry.tenant,
        "key": entry.key,
        "payload": entry.payload,
        "created_at": entry.created_at,
    }
    if entry.trace is not None:
        obj["trace"] = entry.trace
    return obj


def outcome_to_obj(outcome: Outcome) -> dict[str, Any]:
    return {
        "op_id": outcome.op_id,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "at": outcome.at,
    }


def entry_from_obj(obj: Any) -> JournalEntry:
    if not isinstance(obj, dict):
        raise ValueError("entry record is not an object")
    seq, created_at, payload = obj.get("seq"), obj.get("created_at"), obj.get("payload")
    strings = [obj.get(name) for name in ("op_id", "kind", "tenant", "key")]
    if not is_int(seq) or not is_number(created_at) or not isinstance(payload, dict):
        raise ValueError("entry record has a malformed seq, created_at or payload")
    op_id, kind, tenant, key = strings
    if not (
        isinstance(op_id, str)
        and isinstance(kind, str)
        and isinstance(tenant, str)
        and isinstance(key, str)
    ):
        raise ValueError("entry record has a non-string op_id, kind, tenant or key")
    trace = obj.get("trace")
    return JournalEntry(
        seq=seq,
        op_id=op_id,
        kind=kind,
        tenant=tenant,
        key=key,
        payload=payload,
        created_at=float(created_at),
        # Only a link between two traces depends on it: a trace that does not read is dropped,
        # never a reason to call an acknowledged write damaged.
        trace=trace if isinstance(trace, str) else None,
    )


def outcome_from_obj(obj: Any) -> Outcome:
    if not isinstance(obj, dict):
        raise ValueError("outcome record is not an object")
    op_id, status, reason, at = (obj.get(name) for name in ("op_id", "status", "reason", "at"))
    if not isinstance(op_id, str) or not is_number(at):
        raise ValueError("outcome record has a malformed op_id or time")
    if status not in (OpStatus.APPLIED.value, OpStatus.REJECTED.value):
        raise ValueError(f"outcome record has an unknown status {status!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("outcome record has a non-string reason")
    return Outcome(op_id=op_id, status=OpStatus(status), reason=reason, at=float(at))
