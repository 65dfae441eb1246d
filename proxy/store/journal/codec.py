"""Bytes of the write journal: record framing, commit records, the clean-close seal and the
recovery scan. Pure functions over bytes; `journal.py` beside it does the I/O and describes the
on-disk format in its module docstring.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeGuard

import orjson

MAGIC: Final = b"RJ"
FORMAT_VERSION: Final = 2
LEGACY_VERSION: Final = 1
HEADER: Final = struct.Struct(">2sBBII")
_CRC_PREFIX: Final = struct.Struct(">BBI")

TYPE_META: Final = ord("M")
TYPE_ENTRY: Final = ord("E")
TYPE_OUTCOME: Final = ord("O")
TYPE_COMMIT: Final = ord("C")
_DATA_TYPES: Final = frozenset({TYPE_META, TYPE_ENTRY, TYPE_OUTCOME})

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


def next_valid_record(buf: bytes, start: int, limit: int | None = None) -> int | None:
    # orjson escapes control characters, so the NUL-bearing header of a real record cannot hide
    # inside a JSON body; a match here is a genuine record, not a coincidence in someone's payload.
    limit = len(buf) if limit is None else limit
    pos = buf.find(MAGIC, start, limit)
    while pos != -1:
        if not isinstance(parse(buf, pos, limit), str):
            return pos
        pos = buf.find(MAGIC, pos + 1, limit)
    return None


# --------------------------------------------------------------------------- recovery scan


class UnsupportedRecord(ValueError):
    """A well-formed record this version cannot interpret (newer format, unknown type)."""

    def __init__(self, offset: int, version: int, rtype: int) -> None:
        super().__init__(
            f"record of format version {version}, type {rtype} at offset {offset} that this "
            "version does not understand"
        )
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    version: int
    rtype: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of acknowledged records that do not read back: `length` bytes at `offset` are bad,
    and `missing` bytes that were there at the clean close are gone."""

    offset: int
    length: int
    reason: str
    missing: int = 0

    def to_obj(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "bytes": self.length,
            "missing_bytes": self.missing,
            "reason": self.reason,
        }


@dataclass(slots=True)
class Scan:
    records: list[Record] = field(default_factory=list)
    """Acknowledged records, in file order."""
    end: int = 0
    """Where acknowledged data ends; the bytes from here on are the torn tail."""
    tail_records: int = 0
    """Records (whole or partial, commit records aside) in the torn tail."""
    damage: list[Damage] = field(default_factory=list)
    legacy: bool = False
    """Version 1 records were read (they carry no commit records)."""
    next_commit: int | None = None
    """Offset of the record that proves the first damage was acknowledged: the commit record
    (or version 1 record) after it; None when the clean-close seal proves it."""


def scan(buf: bytes, sealed_size: int | None = None) -> Scan:
    """Split a journal into acknowledged records, damage and a torn tail.

    A version 2 record is acknowledged once a valid commit record closes its batch; bad bytes
    before a valid commit record are damage, and whatever follows the last valid commit record is
    a torn tail (the batch being written when the process stopped). A version 1 record stands
    alone, as that format had no commit records. `sealed_size` is the size recorded when the
    journal was last closed cleanly: then every byte up to it had been acknowledged, so a torn
    tail, a shorter file or bytes beyond it are damage too.
    """
    limit = len(buf) if sealed_size is None else min(len(buf), sealed_size)
    result = Scan()
    batch: list[Record] = []
    batch_damage: list[Damage] = []
    batch_start = 0
    bad_tail: Damage | None = None

    def close_batch(end: int, closer: int | None) -> None:
        nonlocal batch, batch_damage, batch_start
        if batch_damage and not result.damage:
            result.next_commit = closer
        result.records.extend(batch)
        result.damage.extend(batch_damage)
        result.end = batch_start = end
        batch, batch_damage = [], []

    pos = 0
    while pos < limit:
        parsed = parse(buf, pos, limit)
        if isinstance(parsed, str):
            following = next_valid_record(buf, pos + 1, limit)
            region = Damage(pos, (limit if following is None else following) - pos, parsed)
            if following is None:
                bad_tail = region
                break
            batch_damage.append(region)
            pos = following
            continue
        version, rtype, body, end = parsed
        if version == LEGACY_VERSION and rtype in _DATA_TYPES:
            result.legacy = True
            batch.append(Record(pos, version, rtype, body))
            close_batch(end, pos)
        elif version == FORMAT_VERSION and rtype in _DATA_TYPES:
            batch.append(Record(pos, version, rtype, body))
        elif version == FORMAT_VERSION and rtype == TYPE_COMMIT:
            if not batch_damage and not _commit_matches(body, buf, batch_start, pos, len(batch)):
                batch_damage.append(Damage(pos, end - pos, "commit record does not fit its batch"))
            close_batch(end, pos)
        else:
            raise UnsupportedRecord(pos, version, rtype)
        pos = end

    if sealed_size is None:
        partial = 0
        if bad_tail is not None:
            # A partial record counts, unless it is what remains of the commit record of the
            # whole records before it.
            kind = buf[bad_tail.offset + 3] if bad_tail.length > 3 else None
            partial = 0 if batch and kind in (None, TYPE_COMMIT) else 1
        result.tail_records = len(batch) + len(batch_damage) + partial
        return result
    # Closed cleanly: the last batch was acknowledged even if its commit record did not survive.
    if bad_tail is not None:
        batch_damage.append(bad_tail)
    if batch or batch_damage:
        close_batch(limit, None)
    if len(buf) < sealed_size:
        missing = sealed_size - len(buf)
        result.damage.append(
            Damage(
                len(buf),
                0,
                f"the file is {missing} byte{'s' if missing != 1 else ''} shorter than at its "
                f"clean close ({sealed_size})",
                missing=missing,
            )
        )
    elif len(buf) > sealed_size:
        result.damage.append(
            Damage(sealed_size, len(buf) - sealed_size, "bytes after the clean close")
        )
    return result


def _commit_matches(body: bytes, buf: bytes, batch_start: int, pos: int, count: int) -> bool:
    if len(body) != COMMIT_BODY.size:
        return False
    start, records, crc = COMMIT_BODY.unpack(body)
    return bool(
        start == batch_start
        and records == count
        and zlib.crc32(memoryview(buf)[batch_start:pos]) == crc
    )


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
