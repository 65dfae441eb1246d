"""Reading a journal file back: which records were acknowledged, which bytes are damage and
which are a torn tail. Pure functions over bytes; opening the journal and `journal check` act on
what they find (recovery.py).

The file is read front to back. A version 2 record counts, was acknowledged, only once a commit
record closes its batch: bytes after the last valid commit record are a torn tail, the batch that
was being written when the process stopped and was never acknowledged. Bad bytes before a valid
commit record belong to acknowledged writes: that is damage. After a clean close (the seal gives
the size) every byte had been acknowledged, so a bad last record, a missing commit record, a file
shorter than the seal says or bytes beyond it are damage too. The one case the scan cannot tell:
after a crash (no seal), damage to the commit record of the last batch, or the file's end cut off
into it, looks exactly like a torn write, and that batch is cut as such.

Version 1 journals, written before commit records existed, are still read: there each complete
record counts by itself, and a bad last record is taken for a torn write as that format cannot
tell. A record of a later version stops the scan with UnsupportedRecord.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from proxy.store.journal.codec import (
    COMMIT_BODY,
    DATA_TYPES,
    FORMAT_VERSION,
    LEGACY_VERSION,
    MAGIC,
    TYPE_COMMIT,
    parse,
)


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
        if version == LEGACY_VERSION and rtype in DATA_TYPES:
            result.legacy = True
            batch.append(Record(pos, version, rtype, body))
            close_batch(end, pos)
        elif version == FORMAT_VERSION and rtype in DATA_TYPES:
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
