"""The journal's byte format and recovery scan, exactly: record framing, every reason a record
does not read back, the seal, damage versus torn tail, and the bounds of an outcome record.

tests/unit/test_journal.py drives the same code through the Journal; these tests take the bytes
one rule at a time, so that a change in any constant or comparison of the format is caught."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest

from proxy.store.journal import codec as jf
from proxy.store.journal import scan as rs


def entry(body: bytes = b'{"e":1}', version: int = jf.FORMAT_VERSION) -> bytes:
    return jf.encode(jf.TYPE_ENTRY, body, version)


def batch(*records: bytes, start: int = 0) -> bytes:
    data = b"".join(records)
    return data + jf.encode_commit(start, len(records), data)


def test_constants_of_the_format() -> None:
    assert (jf.MAGIC, jf.FORMAT_VERSION, jf.LEGACY_VERSION) == (b"RJ", 2, 1)
    assert jf.HEADER.size == 12
    assert (jf.TYPE_META, jf.TYPE_ENTRY, jf.TYPE_OUTCOME, jf.TYPE_COMMIT) == (77, 69, 79, 67)
    assert jf.COMMIT_BODY.size == 16
    assert jf.COMMIT_RECORD_SIZE == 28
    assert jf.MAX_RECORD_BYTES == 16 * 1024 * 1024
    assert jf.REASON_MAX_BYTES == 256
    assert jf.SEAL.size == 17


def test_encode_frames_a_record() -> None:
    body = b"hello"
    record = jf.encode(jf.TYPE_ENTRY, body)
    magic, version, rtype, length, crc = jf.HEADER.unpack_from(record)
    assert (magic, version, rtype, length) == (b"RJ", 2, jf.TYPE_ENTRY, 5)
    # The checksum covers the version, the type and the length too, not the body alone.
    assert crc == zlib.crc32(body, zlib.crc32(struct.pack(">BBI", 2, jf.TYPE_ENTRY, 5)))
    assert record[12:] == body
    assert jf.parse(record, 0) == jf.Parsed(2, jf.TYPE_ENTRY, body, 17)


def test_encode_commit() -> None:
    data = entry() + entry(b"{}")
    commit = jf.encode_commit(40, 2, data)
    parsed = jf.parse(commit, 0)
    assert isinstance(parsed, jf.Parsed)
    assert parsed.rtype == jf.TYPE_COMMIT
    assert jf.COMMIT_BODY.unpack(parsed.body) == (40, 2, zlib.crc32(data))
    assert len(commit) == jf.COMMIT_RECORD_SIZE


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda r: r[:11], "truncated header"),
        (lambda r: b"XJ" + r[2:], "bad magic"),
        (lambda r: r[:-1], "truncated body"),
        (lambda r: r[:-1] + bytes([r[-1] ^ 1]), "checksum mismatch"),
        (lambda r: r[:2] + bytes([r[2] + 1]) + r[3:], "checksum mismatch"),
        (lambda r: r[:3] + bytes([jf.TYPE_OUTCOME]) + r[4:], "checksum mismatch"),
    ],
)
def test_why_a_record_does_not_read(mangle: object, reason: str) -> None:
    assert jf.parse(mangle(entry()), 0) == reason  # type: ignore[operator]


def test_lengths_at_and_past_the_bound() -> None:
    header = jf.HEADER.pack(jf.MAGIC, 2, jf.TYPE_ENTRY, jf.MAX_RECORD_BYTES + 1, 0)
    assert jf.parse(header, 0) == f"implausible length {jf.MAX_RECORD_BYTES + 1}"
    at_bound = jf.HEADER.pack(jf.MAGIC, 2, jf.TYPE_ENTRY, jf.MAX_RECORD_BYTES, 0)
    assert jf.parse(at_bound, 0) == "truncated body"


def test_parse_respects_the_limit_and_the_offset() -> None:
    buf = b"xx" + entry()
    assert isinstance(jf.parse(buf, 2), jf.Parsed)
    assert jf.parse(buf, 2, len(buf) - 1) == "truncated body"
    assert jf.parse(buf, 2, 2 + 11) == "truncated header"
    exact = jf.parse(buf, 2, len(buf))
    assert isinstance(exact, jf.Parsed) and exact.end == len(buf)


def test_next_valid_record_skips_false_magic() -> None:
    good = entry()
    buf = b"RJ garbage RJ" + good
    assert rs.next_valid_record(buf, 0) == 13
    assert rs.next_valid_record(buf, 14) is None
    assert rs.next_valid_record(buf, 0, len(buf) - 1) is None
    assert rs.next_valid_record(good, 0) == 0


def test_unsupported_record_message() -> None:
    exc = rs.UnsupportedRecord(12, 3, 77)
    assert exc.offset == 12
    assert str(exc) == (
        "record of format version 3, type 77 at offset 12 that this version does not understand"
    )
    with pytest.raises(rs.UnsupportedRecord):
        rs.scan(jf.encode(jf.TYPE_ENTRY, b"{}", version=3))
    with pytest.raises(rs.UnsupportedRecord):
        rs.scan(jf.encode(ord("Z"), b"{}"))
    with pytest.raises(rs.UnsupportedRecord):
        rs.scan(jf.encode(jf.TYPE_COMMIT, b"", version=1))


def test_damage_to_obj() -> None:
    assert rs.Damage(5, 7, "why", missing=2).to_obj() == {
        "offset": 5,
        "bytes": 7,
        "missing_bytes": 2,
        "reason": "why",
    }
    assert rs.Damage(5, 7, "why").missing == 0


def test_scan_of_committed_batches() -> None:
    first = batch(entry(b"1"), entry(b"2"))
    second = batch(entry(b"3"), start=len(first))
    result = rs.scan(first + second)
    assert [r.body for r in result.records] == [b"1", b"2", b"3"]
    assert [r.offset for r in result.records] == [0, 13, len(first)]
    assert result.end == len(first + second)
    assert (result.tail_records, result.damage, result.legacy) == (0, [], False)
    assert result.next_commit is None


def test_an_uncommitted_batch_is_a_torn_tail() -> None:
    committed = batch(entry(b"1"))
    torn = entry(b"2") + entry(b"3")
    result = rs.scan(committed + torn)
    assert [r.body for r in result.records] == [b"1"]
    assert result.end == len(committed)
    assert result.tail_records == 2


def test_a_partial_record_in_the_tail_counts_unless_it_is_the_commit() -> None:
    committed = batch(entry(b"1"))
    whole = entry(b"2")
    partial_entry = entry(b"3")[:8]
    assert rs.scan(committed + whole + partial_entry).tail_records == 2
    partial_commit = jf.encode_commit(len(committed), 1, whole)[:8]
    assert rs.scan(committed + whole + partial_commit).tail_records == 1
    # Only three bytes of a header: the type is unknown, so it is taken for the commit.
    assert rs.scan(committed + whole + b"RJ\x02").tail_records == 1
    # With no whole record before it, a partial record is one record of the tail.
    assert rs.scan(committed + b"RJ\x02").tail_records == 1
    assert rs.scan(committed + partial_commit).tail_records == 1


def test_bad_bytes_before_a_commit_are_damage() -> None:
    good = entry(b"1")
    bad = b"RJ\x02E\x00\x00\x00\x03zzzzzzz"  # a header whose checksum cannot match
    data = good + bad
    buf = data + jf.encode_commit(0, 2, data)
    result = rs.scan(buf)
    assert [r.body for r in result.records] == [b"1"]
    assert result.damage == [rs.Damage(13, len(bad), "checksum mismatch")]
    assert result.next_commit == len(data)
    assert result.end == len(buf)


def test_only_the_first_damage_sets_next_commit() -> None:
    bad = b"RJ\x02E\x00\x00\x00\x01zzzz"
    one = entry(b"1") + bad
    first = one + jf.encode_commit(0, 2, one)
    two = entry(b"2") + bad
    second = two + jf.encode_commit(len(first), 2, two)
    result = rs.scan(first + second)
    assert len(result.damage) == 2
    assert result.next_commit == len(one)


def test_a_commit_that_does_not_fit_its_batch() -> None:
    data = entry(b"1")
    for commit in (
        jf.encode_commit(1, 1, data),  # wrong start
        jf.encode_commit(0, 2, data),  # wrong count
        jf.encode_commit(0, 1, data + b"x"),  # wrong checksum
        jf.encode(jf.TYPE_COMMIT, b"short"),  # wrong size of body
    ):
        result = rs.scan(data + commit)
        assert result.damage == [
            rs.Damage(len(data), len(commit), "commit record does not fit its batch")
        ]
        assert result.next_commit == len(data)
        assert [r.body for r in result.records] == [b"1"]


def test_legacy_records_stand_alone() -> None:
    old = entry(b"1", version=1) + entry(b"2", version=1)
    result = rs.scan(old)
    assert result.legacy
    assert [r.version for r in result.records] == [1, 1]
    assert result.end == len(old)
    assert result.tail_records == 0


def test_a_clean_close_acknowledges_the_last_batch() -> None:
    committed = batch(entry(b"1"))
    unclosed = entry(b"2")
    buf = committed + unclosed
    result = rs.scan(buf, sealed_size=len(buf))
    assert [r.body for r in result.records] == [b"1", b"2"]
    assert result.end == len(buf)
    assert result.damage == []
    assert result.tail_records == 0


def test_a_clean_close_turns_a_bad_tail_into_damage() -> None:
    committed = batch(entry(b"1"))
    torn = entry(b"2222")[:-2]
    buf = committed + torn
    result = rs.scan(buf, sealed_size=len(buf))
    assert result.damage == [rs.Damage(len(committed), len(torn), "truncated body")]
    assert result.next_commit is None
    assert result.end == len(buf)


def test_a_file_shorter_or_longer_than_at_its_clean_close() -> None:
    buf = batch(entry(b"1"))
    shorter = rs.scan(buf, sealed_size=len(buf) + 1)
    assert shorter.damage == [
        rs.Damage(
            len(buf),
            0,
            f"the file is 1 byte shorter than at its clean close ({len(buf) + 1})",
            missing=1,
        )
    ]
    much_shorter = rs.scan(buf, sealed_size=len(buf) + 5)
    assert much_shorter.damage[-1].reason == (
        f"the file is 5 bytes shorter than at its clean close ({len(buf) + 5})"
    )
    assert much_shorter.damage[-1].missing == 5
    extra = b"more bytes"
    longer = rs.scan(buf + extra, sealed_size=len(buf))
    assert longer.damage == [rs.Damage(len(buf), len(extra), "bytes after the clean close")]
    assert [r.body for r in longer.records] == [b"1"]
    exact = rs.scan(buf, sealed_size=len(buf))
    assert exact.damage == []


def test_seal_round_trip() -> None:
    assert jf.decode_seal(jf.encode_seal(1234)) == 1234
    assert jf.decode_seal(jf.encode_seal(0)) == 0
    assert jf.decode_seal(jf.encode_seal(None)) is None
    sealed = jf.encode_seal(99)
    assert sealed[:4] == b"RJSL"
    assert len(sealed) == jf.SEAL.size
    assert jf.decode_seal(sealed[:-1]) is None
    assert jf.decode_seal(b"XJSL" + sealed[4:]) is None
    assert jf.decode_seal(sealed[:5] + bytes([sealed[5] ^ 1]) + sealed[6:]) is None
    # A seal with a trailing byte still reads (only the first SEAL.size bytes count).
    assert jf.decode_seal(sealed + b"\n") == 99


def test_number_guards() -> None:
    assert jf.is_int(3) and not jf.is_int(True) and not jf.is_int(3.0)
    assert jf.is_number(3) and jf.is_number(2.5)
    assert not jf.is_number(False) and not jf.is_number("3")


def test_fit_reason() -> None:
    assert jf.fit_reason(None) is None
    exact = "x" * (jf.REASON_MAX_BYTES - 2)  # the quotes make it exactly the bound
    assert jf.fit_reason(exact) == exact
    cut = jf.fit_reason(exact + "y")
    assert cut is not None and cut.endswith("\u2026")
    assert len(orjson.dumps(cut)) <= jf.REASON_MAX_BYTES
    assert cut == "x" * (jf.REASON_MAX_BYTES - 5) + "\u2026"  # the ellipsis takes three bytes
    wide = jf.fit_reason("\u00e9" * 500)
    assert wide is not None
    assert len(orjson.dumps(wide)) <= jf.REASON_MAX_BYTES
    assert len(orjson.dumps(wide + "\u00e9")) > jf.REASON_MAX_BYTES or wide.endswith("\u2026")


def test_outcome_bound_covers_the_largest_outcome() -> None:
    op_id = "tenant/" + "o" * 40
    largest = orjson.dumps(
        {
            "op_id": op_id,
            "status": "rejected",
            "reason": jf.fit_reason("r" * 10_000),
            "at": -1.2345678901234567e-300,
        }
    )
    record = jf.encode(jf.TYPE_OUTCOME, largest)
    assert len(record) + jf.COMMIT_RECORD_SIZE <= jf.outcome_bound(op_id)
    # And it is tight: a few bytes of slack at most.
    assert jf.outcome_bound(op_id) - (len(record) + jf.COMMIT_RECORD_SIZE) < 8
    assert jf.outcome_bound(op_id + "x") == jf.outcome_bound(op_id) + 1
