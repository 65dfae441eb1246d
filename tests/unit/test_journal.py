"""The write journal against real files: durability, recovery, damage, a full disk, group commit,
compaction."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.store.journal import (
    JOURNAL_FILE,
    RESERVE_FILE,
    SEAL_FILE,
    Journal,
    JournalDamaged,
    JournalEntry,
    JournalError,
    JournalFull,
    OpStatus,
    codec,
    inspect_journal,
)
from tests.small_fs import small_filesystem


async def _append(journal: Journal, n: int, *, tenant: str = "t1", **extra: Any) -> JournalEntry:
    return await journal.append(
        op_id=f"op-{n}",
        kind="register",
        tenant=tenant,
        key=f"agent-{n}",
        payload={"n": n, **extra},
    )


def _op_ids(entries: list[JournalEntry]) -> list[str]:
    return [entry.op_id for entry in entries]


def _record(version: int, rtype: int, body: bytes) -> bytes:
    """A record framed by hand, to check the codec against the documented layout."""
    crc = zlib.crc32(body, zlib.crc32(struct.pack(">BBI", version, rtype, len(body))))
    return struct.pack(">2sBBII", b"RJ", version, rtype, len(body), crc) + body


def _crash(directory: Path) -> None:
    """Leave `directory` as a crash would: without the seal of a clean close."""
    (directory / SEAL_FILE).unlink(missing_ok=True)


def _spans(path: Path) -> list[tuple[int, int, int]]:
    """(offset, type, end) of every record of a sound journal file."""
    data = path.read_bytes()
    spans, offset = [], 0
    while offset < len(data):
        parsed = codec.parse(data, offset)
        assert not isinstance(parsed, str), (offset, parsed)
        spans.append((offset, parsed.rtype, parsed.end))
        offset = parsed.end
    return spans


def _last_entry(path: Path) -> tuple[int, int]:
    return next(
        (start, end) for start, rtype, end in reversed(_spans(path)) if rtype == codec.TYPE_ENTRY
    )


class FsyncCounter:
    """Wraps os.fsync to count calls (and the threads they run on), optionally failing some."""

    def __init__(self, fail: Callable[[int], bool] = lambda _n: False) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self._fail = fail
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self._fail(self.calls):
            raise OSError(errno.EIO, "injected fsync failure")
        self._real(fd)


# --------------------------------------------------------------------------- basics


async def test_append_complete_and_pending_order_survive_reopen(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j")
    entries = [await _append(journal, n, tenant="t1" if n % 2 else "t2") for n in range(6)]
    assert [e.seq for e in entries] == sorted({e.seq for e in entries})
    assert journal.depth == 6

    await journal.complete("op-1", OpStatus.APPLIED)
    await journal.complete("op-4", OpStatus.REJECTED, "agent id already taken")

    expected = ["op-0", "op-2", "op-3", "op-5"]
    assert _op_ids(journal.pending()) == expected
    assert _op_ids(journal.pending_for("t1")) == ["op-3", "op-5"]
    assert _op_ids(journal.pending_for("t2", key="agent-2")) == ["op-2"]
    assert journal.pending_for("nobody") == []
    assert journal.get("op-1") is None
    assert journal.get("op-2") == entries[2]
    assert journal.state("op-2") is OpStatus.PENDING
    assert journal.state("op-4") is OpStatus.REJECTED
    assert journal.state("never") is None
    await journal.close()

    reopened = await Journal.open(tmp_path / "j")
    try:
        assert _op_ids(reopened.pending()) == expected
        assert reopened.pending() == [entries[n] for n in (0, 2, 3, 5)]
        applied = reopened.outcome("op-1")
        rejected = reopened.outcome("op-4")
        assert applied is not None
        assert applied.status is OpStatus.APPLIED
        assert applied.reason is None
        assert rejected is not None
        assert rejected.status is OpStatus.REJECTED
        assert rejected.reason == "agent id already taken"
        assert reopened.outcome("op-2") is None
        later = await _append(reopened, 99)
        assert later.seq > max(e.seq for e in entries)
        assert reopened.stats()["torn_records_dropped"] == 0
    finally:
        await reopened.close()


async def test_directory_and_file_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "journal"
    journal = await Journal.open(directory)
    await journal.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / JOURNAL_FILE).stat().st_mode) == 0o600


async def test_payload_is_normalised_and_not_aliased(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        payload: dict[str, Any] = {"tags": ("a", "b"), "nested": {"x": 1}}
        entry = await journal.append(op_id="p", kind="k", tenant="t", key="k", payload=payload)
        payload["nested"]["x"] = 2
        assert entry.payload == {"tags": ["a", "b"], "nested": {"x": 1}}

        with pytest.raises(TypeError):
            await journal.append(op_id="bad", kind="k", tenant="t", key="k", payload={"x": {1}})
        assert journal.get("bad") is None
        with pytest.raises(ValueError):
            await journal.append(op_id="", kind="k", tenant="t", key="k", payload={})


async def test_stats_are_json_ready(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await _append(journal, 1)
        await _append(journal, 2)
        await journal.complete("op-1", OpStatus.APPLIED)
        stats = journal.stats()
        orjson.dumps(stats)
        assert stats["depth"] == 1
        assert stats["appends"] == 2
        assert stats["completions"] == 1
        assert stats["size_bytes"] == journal.size_bytes == (tmp_path / JOURNAL_FILE).stat().st_size
        assert stats["oldest_pending_age_s"] >= 0.0
        assert stats["path"] == str(tmp_path / JOURNAL_FILE)
        assert stats["torn_records_dropped"] == 0
        assert stats["writable"] is True
        assert stats["failed"] is None
        assert stats["disk"]["full"] is False
        assert stats["disk"]["reserve_bytes"] == (tmp_path / RESERVE_FILE).stat().st_size
        assert stats["disk"]["reserve_bytes"] >= stats["disk"]["reserve_needed_bytes"]
        assert stats["damage"] == {"on_damage": "refuse", "quarantined": [], "side_files": []}


async def test_complete_rules(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await _append(journal, 1)
        with pytest.raises(KeyError):
            await journal.complete("unknown", OpStatus.APPLIED)
        with pytest.raises(ValueError):
            await journal.complete("op-1", OpStatus.PENDING)
        await journal.complete("op-1", OpStatus.APPLIED)
        size = journal.size_bytes
        # The first outcome stands and nothing more is written.
        await journal.complete("op-1", OpStatus.REJECTED, "late")
        assert journal.size_bytes == size
        outcome = journal.outcome("op-1")
        assert outcome is not None
        assert outcome.status is OpStatus.APPLIED


# --------------------------------------------------------------------------- duplicates


async def test_duplicate_op_id_returns_existing_entry_without_new_record(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    first = await _append(journal, 1)
    size = journal.size_bytes
    again = await journal.append(op_id="op-1", kind="other", tenant="t9", key="x", payload={})
    assert again == first
    assert journal.size_bytes == size

    # Concurrent duplicates while the first is still in flight share its single record.
    racing = await asyncio.gather(*(_append(journal, 2) for _ in range(10)))
    assert len({entry.seq for entry in racing}) == 1
    assert journal.depth == 2

    await journal.complete("op-1", OpStatus.APPLIED)
    size = journal.size_bytes
    assert await _append(journal, 1) == first
    assert journal.size_bytes == size
    assert journal.state("op-1") is OpStatus.APPLIED
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        size = reopened.size_bytes
        assert await _append(reopened, 1) == first
        assert await _append(reopened, 2) == racing[0]
        assert reopened.size_bytes == size
        assert _op_ids(reopened.pending()) == ["op-2"]
    finally:
        await reopened.close()


async def test_a_finished_op_reopened_is_pending_again_and_stays_so(tmp_path: Path) -> None:
    """A write whose commit a failed-over primary lost is journaled again under its op id."""
    journal = await Journal.open(tmp_path)
    first = await _append(journal, 1)
    await journal.complete("op-1", OpStatus.APPLIED)
    again = await journal.append(
        op_id="op-1", kind="register", tenant="t", key="k", payload={"n": 2}, reopen=True
    )
    assert again.seq > first.seq and again.payload == {"n": 2}
    assert journal.state("op-1") is OpStatus.PENDING and journal.depth == 1
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        assert reopened.state("op-1") is OpStatus.PENDING
        assert [e.seq for e in reopened.pending()] == [again.seq]
        await reopened.complete("op-1", OpStatus.APPLIED)
        assert reopened.state("op-1") is OpStatus.APPLIED and reopened.depth == 0
    finally:
        await reopened.close()


# --------------------------------------------------------------------------- group commit


async def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = await Journal.open(tmp_path)
    counter = FsyncCounter()
    monkeypatch.setattr(os, "fsync", counter)
    try:
        entries = await asyncio.gather(*(_append(journal, n) for n in range(200)))
    finally:
        monkeypatch.undo()
    seqs = [entry.seq for entry in entries]
    assert len(set(seqs)) == 200
    assert seqs == sorted(seqs)
    assert journal.pending() == sorted(entries, key=lambda entry: entry.seq)
    assert 1 <= counter.calls <= 20
    # The disk work ran on the journal's thread, never on the event loop's.
    assert threading.get_ident() not in counter.threads
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        assert reopened.pending() == journal.pending()
    finally:
        await reopened.close()


async def test_fsync_disabled_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter()
    monkeypatch.setattr(os, "fsync", counter)
    journal = await Journal.open(tmp_path, fsync=False)
    await asyncio.gather(*(_append(journal, n) for n in range(20)))
    await journal.complete("op-3", OpStatus.APPLIED)
    await journal.close()
    assert counter.calls == 0
    monkeypatch.undo()
    reopened = await Journal.open(tmp_path)
    assert reopened.depth == 19
    await reopened.close()


# --------------------------------------------------------------------------- I/O failures


async def test_failed_fsync_is_an_error_and_leaves_nothing_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    size = journal.size_bytes
    counter = FsyncCounter(fail=lambda n: n == 1)
    monkeypatch.setattr(os, "fsync", counter)

    with pytest.raises(JournalError, match="injected fsync failure"):
        await _append(journal, 2)
    assert journal.get("op-2") is None
    assert journal.depth == 1
    assert journal.size_bytes == size
    assert (tmp_path / JOURNAL_FILE).stat().st_size == size
    assert not journal.failed

    # The rollback worked, so the journal keeps going and the op may be retried.
    retried = await _append(journal, 2)
    assert _op_ids(journal.pending()) == ["op-1", "op-2"]
    await journal.close()
    monkeypatch.undo()

    reopened = await Journal.open(tmp_path)
    try:
        assert reopened.pending()[-1] == retried
        assert reopened.depth == 2
    finally:
        await reopened.close()


async def test_persistent_fsync_failure_poisons_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    monkeypatch.setattr(os, "fsync", FsyncCounter(fail=lambda _n: True))
    with pytest.raises(JournalError):
        await _append(journal, 2)
    monkeypatch.undo()

    assert journal.failed
    assert journal.get("op-2") is None
    assert journal.stats()["failed"]
    with pytest.raises(JournalError):
        await _append(journal, 3)
    with pytest.raises(JournalError):
        await journal.complete("op-1", OpStatus.APPLIED)
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == ["op-1"]
    finally:
        await reopened.close()


async def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    real_pwrite = os.pwrite

    def disk_full(fd: int, data: Any, offset: int) -> int:
        # Part of the batch lands on disk before the device fills up.
        real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    results = await asyncio.gather(
        *(_append(journal, n) for n in range(2, 6)), return_exceptions=True
    )
    monkeypatch.undo()
    # A full disk is its own error, so that callers can say so.
    assert all(isinstance(result, JournalFull) for result in results)
    assert _op_ids(journal.pending()) == ["op-1"]
    assert journal.full

    await _append(journal, 6)
    assert not journal.full  # room again: the next entry was taken
    await journal.close()
    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == ["op-1", "op-6"]
        assert reopened.stats()["torn_records_dropped"] == 0
    finally:
        await reopened.close()


async def test_failed_completion_keeps_the_entry_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    monkeypatch.setattr(os, "fsync", FsyncCounter(fail=lambda n: n == 1))
    with pytest.raises(JournalError):
        await journal.complete("op-1", OpStatus.APPLIED)
    monkeypatch.undo()
    assert journal.state("op-1") is OpStatus.PENDING
    await journal.complete("op-1", OpStatus.APPLIED)
    assert journal.state("op-1") is OpStatus.APPLIED
    await journal.close()


# --------------------------------------------------------------------------- recovery


async def _journal_with_tail(directory: Path, last: str) -> tuple[int, int]:
    """Three entries (and one outcome when `last` is "outcome"); the last batch's span."""
    journal = await Journal.open(directory)
    await _append(journal, 1)
    await _append(journal, 2)
    before = journal.size_bytes
    await _append(journal, 3, note="x" * 40)
    if last == "outcome":
        before = journal.size_bytes
        await journal.complete("op-2", OpStatus.APPLIED, "done")
    after = journal.size_bytes
    await journal.close()
    return before, after


def test_record_layout_is_the_documented_one() -> None:
    body = b'{"next_seq":1}'
    assert codec.encode(ord("M"), body) == _record(2, ord("M"), body)


async def test_every_write_ends_with_a_commit_record(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await asyncio.gather(*(_append(journal, n) for n in range(5)))
        await journal.complete("op-1", OpStatus.APPLIED)
    spans = _spans(tmp_path / JOURNAL_FILE)
    assert spans[-1][1] == codec.TYPE_COMMIT
    assert spans[-1][2] - spans[-1][0] == codec.COMMIT_RECORD_SIZE
    # meta, then the batches of the five entries, then the outcome: each closed by a commit
    kinds = [chr(rtype) for _, rtype, _ in spans]
    assert kinds[:2] == ["M", "C"]
    assert kinds.count("E") == 5
    assert kinds[-2:] == ["O", "C"]


@pytest.mark.parametrize("last", ["entry", "outcome"])
async def test_torn_tail_past_the_last_commit_is_cut_at_every_point(
    tmp_path: Path, last: str
) -> None:
    source = tmp_path / "source"
    start, end = await _journal_with_tail(source, last)
    data = (source / JOURNAL_FILE).read_bytes()
    assert len(data) == end
    survivors = ["op-1", "op-2"] if last == "entry" else ["op-1", "op-2", "op-3"]
    record_end = end - codec.COMMIT_RECORD_SIZE

    # A crash during the last batch's write leaves any prefix of it: never acknowledged.
    for cut in range(1, end - start):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / JOURNAL_FILE).write_bytes(data[: start + cut])

        journal = await Journal.open(directory)
        assert _op_ids(journal.pending()) == survivors, cut
        assert journal.stats()["torn_records_dropped"] == 1, cut
        assert journal.stats()["torn_bytes_dropped"] == cut
        assert journal.size_bytes == start
        assert (directory / JOURNAL_FILE).stat().st_size == start
        if start + cut >= record_end:
            # The record is whole but its batch never got its commit record: still torn.
            assert journal.state("op-3" if last == "entry" else "op-2") is OpStatus.PENDING or (
                last == "entry"
            )
        await _append(journal, 4)
        await journal.close()

        reopened = await Journal.open(directory)
        assert _op_ids(reopened.pending()) == [*survivors, "op-4"], cut
        assert reopened.stats()["torn_records_dropped"] == 0
        await reopened.close()
        shutil.rmtree(directory)


async def test_whole_records_without_their_commit_record_are_a_torn_tail(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    end = journal.size_bytes
    await journal.close()
    _crash(tmp_path)
    # Two complete entries of a batch whose commit record never reached the disk.
    orphans = b"".join(
        codec.encode(
            codec.TYPE_ENTRY,
            orjson.dumps(
                {
                    "seq": 10 + n,
                    "op_id": f"orphan-{n}",
                    "kind": "register",
                    "tenant": "t1",
                    "key": "k",
                    "payload": {},
                    "created_at": 1.0,
                }
            ),
        )
        for n in range(2)
    )
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(orphans)
    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == ["op-1"]
        assert reopened.stats()["torn_records_dropped"] == 2
        assert reopened.stats()["torn_bytes_dropped"] == len(orphans)
        assert reopened.size_bytes == end
    finally:
        await reopened.close()


async def test_zero_filled_tail_after_a_crash_is_dropped(tmp_path: Path) -> None:
    _, end = await _journal_with_tail(tmp_path, "entry")
    _crash(tmp_path)
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(b"\0" * 4096)
    journal = await Journal.open(tmp_path)
    try:
        assert journal.depth == 3
        assert journal.size_bytes == end
        assert journal.stats()["torn_records_dropped"] == 1
    finally:
        await journal.close()


def _damage_last_entry(path: Path, how: str) -> tuple[int, bytes]:
    """Damage the last entry record (acknowledged: its commit record follows it); return its
    offset and the file as damaged."""
    start, end = _last_entry(path)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[end - 5] ^= 0xFF
    elif how == "length":
        length = int.from_bytes(data[start + 4 : start + 8], "big")
        data[start + 4 : start + 8] = (length + 3).to_bytes(4, "big")
    elif how == "shorter-length":
        length = int.from_bytes(data[start + 4 : start + 8], "big")
        data[start + 4 : start + 8] = (length - 1).to_bytes(4, "big")
    else:  # its last 7 bytes cut out; the commit record after it stays
        del data[end - 7 : end]
    path.write_bytes(bytes(data))
    return start, bytes(data)


@pytest.mark.parametrize("how", ["flip", "length", "shorter-length", "cut7"])
@pytest.mark.parametrize("closed", ["clean-close", "crash"])
async def test_damaged_last_acknowledged_record_refuses_to_open(
    tmp_path: Path, how: str, closed: str
) -> None:
    await _journal_with_tail(tmp_path, "entry")
    if closed == "crash":
        _crash(tmp_path)
    path = tmp_path / JOURNAL_FILE
    offset, damaged = _damage_last_entry(path, how)

    with pytest.raises(JournalDamaged) as refused:
        await Journal.open(tmp_path)
    message = str(refused.value)
    assert str(path) in message
    assert f"damaged at offset {offset} (" in message
    assert "acknowledged" in message
    assert "registry-proxy journal recover" in message
    assert "REGISTRY_PROXY_JOURNAL__ON_DAMAGE=quarantine" in message
    assert refused.value.damage[0].offset == offset
    # Nothing was repaired, nothing was dropped, and the failed open kept no lock.
    assert path.read_bytes() == damaged
    with pytest.raises(JournalDamaged):
        await Journal.open(tmp_path)
    report = inspect_journal(tmp_path)
    assert report["damage"][0]["offset"] == offset
    assert report["message"] == message


@pytest.mark.parametrize("cut", [1, 7, codec.COMMIT_RECORD_SIZE, codec.COMMIT_RECORD_SIZE + 7])
async def test_cleanly_closed_journal_cut_short_refuses_to_open(tmp_path: Path, cut: int) -> None:
    _, end = await _journal_with_tail(tmp_path, "entry")
    path = tmp_path / JOURNAL_FILE
    with path.open("r+b") as f:
        f.truncate(end - cut)
    with pytest.raises(JournalDamaged, match=rf"{cut} bytes? shorter than at its clean close"):
        await Journal.open(tmp_path)
    assert path.stat().st_size == end - cut


async def test_bytes_after_a_clean_close_refuse_to_open(tmp_path: Path) -> None:
    _, end = await _journal_with_tail(tmp_path, "entry")
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(JournalDamaged, match=f"offset {end} \\(bytes after the clean close"):
        await Journal.open(tmp_path)


async def test_record_missing_from_a_batch_refuses_to_open(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await asyncio.gather(*(_append(journal, n) for n in range(6)))
    await journal.close()
    _crash(tmp_path)
    path = tmp_path / JOURNAL_FILE
    spans = _spans(path)
    # Find a batch of several entries (group commit) and cut one whole record out of it.
    for i in range(len(spans) - 2):
        if spans[i][1] == spans[i + 1][1] == codec.TYPE_ENTRY:
            start, _, end = spans[i + 1]
            break
    else:
        pytest.skip("the appends did not share a batch")
    data = path.read_bytes()
    path.write_bytes(data[:start] + data[end:])
    with pytest.raises(JournalDamaged, match="commit record does not fit its batch"):
        await Journal.open(tmp_path)


@pytest.mark.parametrize("where", ["body", "length", "magic"])
async def test_corruption_in_the_middle_refuses_to_open(tmp_path: Path, where: str) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    middle = journal.size_bytes
    await _append(journal, 2)
    await _append(journal, 3)
    await journal.close()

    path = tmp_path / JOURNAL_FILE
    data = bytearray(path.read_bytes())
    if where == "body":
        data[middle + 20] ^= 0x01
    elif where == "length":
        data[middle + 4 : middle + 8] = (2**31).to_bytes(4, "big")
    else:
        data[middle] = ord("X")
    path.write_bytes(bytes(data))

    with pytest.raises(JournalError, match=f"offset {middle} "):
        await Journal.open(tmp_path)
    assert path.read_bytes() == bytes(data)
    # A failed open must not keep the directory locked.
    with pytest.raises(JournalError, match=f"offset {middle} "):
        await Journal.open(tmp_path)


async def test_quarantine_sets_damaged_bytes_aside_and_reports_them(tmp_path: Path) -> None:
    await _journal_with_tail(tmp_path, "entry")
    path = tmp_path / JOURNAL_FILE
    second = [span for span in _spans(path) if span[1] == codec.TYPE_ENTRY][1]
    data = bytearray(path.read_bytes())
    data[second[2] - 3] ^= 0x10
    path.write_bytes(bytes(data))
    bad = bytes(data[second[0] : second[2]])

    journal = await Journal.open(tmp_path, on_damage="quarantine")
    try:
        assert _op_ids(journal.pending()) == ["op-1", "op-3"]
        damage = journal.stats()["damage"]
        assert damage["on_damage"] == "quarantine"
        [event] = damage["quarantined"]
        assert event["bytes"] == len(bad)
        assert event["regions"] == [
            {
                "offset": second[0],
                "bytes": len(bad),
                "missing_bytes": 0,
                "reason": "checksum mismatch",
            }
        ]
        side = tmp_path / event["file"]
        assert side.name.startswith(JOURNAL_FILE + ".damaged-")
        assert side.read_bytes() == bad
        assert stat.S_IMODE(side.stat().st_mode) == 0o600
        manifest = orjson.loads(side.with_name(side.name + ".json").read_bytes())
        assert manifest["regions"] == event["regions"]
        assert damage["side_files"] == [{"file": side.name, "bytes": len(bad)}]
        assert journal.quarantine_files == 1
        # The journal was rewritten without the damage and goes on.
        await _append(journal, 4)
    finally:
        await journal.close()

    reopened = await Journal.open(tmp_path)  # the default again: nothing is damaged now
    try:
        assert _op_ids(reopened.pending()) == ["op-1", "op-3", "op-4"]
        damage = reopened.stats()["damage"]
        assert damage["quarantined"] == []
        assert damage["side_files"] == [{"file": side.name, "bytes": len(bad)}]
        assert reopened.quarantine_files == 1
    finally:
        await reopened.close()


async def test_quarantine_of_a_cut_clean_close_keeps_every_record(tmp_path: Path) -> None:
    _, end = await _journal_with_tail(tmp_path, "entry")
    path = tmp_path / JOURNAL_FILE
    fragment = path.read_bytes()[end - codec.COMMIT_RECORD_SIZE : end - 7]
    with path.open("r+b") as f:
        f.truncate(end - 7)
    journal = await Journal.open(tmp_path, on_damage="quarantine")
    try:
        # The seal says the last batch had been acknowledged; only its commit record is hurt.
        assert _op_ids(journal.pending()) == ["op-1", "op-2", "op-3"]
        [event] = journal.stats()["damage"]["quarantined"]
        assert event["missing_bytes"] == 7
        assert (tmp_path / event["file"]).read_bytes() == fragment
    finally:
        await journal.close()


async def test_seal_tells_a_clean_close(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    assert inspect_journal(tmp_path)["closed_cleanly"] is False  # in use
    await journal.close()
    report = inspect_journal(tmp_path)
    assert report["closed_cleanly"] is True
    assert report["size_bytes"] == (tmp_path / JOURNAL_FILE).stat().st_size
    assert report["damage"] == [] and report["message"] is None
    assert report["acknowledged_records"] == 2  # meta and the entry


async def test_version_1_journal_is_read_and_rewritten(tmp_path: Path) -> None:
    def v1(rtype: str, obj: dict[str, Any]) -> bytes:
        return _record(1, ord(rtype), orjson.dumps(obj))

    def entry(seq: int, op_id: str) -> dict[str, Any]:
        return {
            "seq": seq,
            "op_id": op_id,
            "kind": "register",
            "tenant": "t1",
            "key": op_id,
            "payload": {"n": seq},
            "created_at": 1.5,
        }

    torn = v1("E", entry(8, "op-c"))
    old = b"".join(
        [
            v1("M", {"format": 1, "next_seq": 5}),
            v1("E", entry(5, "op-a")),
            v1("E", entry(6, "op-b")),
            v1("O", {"op_id": "op-a", "status": "applied", "reason": None, "at": 2.0}),
            torn[:-3],  # the old rule still holds for a bad last record: a torn write
        ]
    )
    (tmp_path / JOURNAL_FILE).write_bytes(old)
    journal = await Journal.open(tmp_path)
    try:
        assert _op_ids(journal.pending()) == ["op-b"]
        outcome = journal.outcome("op-a")
        assert outcome is not None and outcome.status is OpStatus.APPLIED
        assert journal.stats()["torn_records_dropped"] == 1
        data = (tmp_path / JOURNAL_FILE).read_bytes()
        assert {data[offset + 2] for offset, _, _ in _spans(tmp_path / JOURNAL_FILE)} == {2}
        assert (await _append(journal, 9)).seq == 7
    finally:
        await journal.close()


async def test_record_of_a_newer_format_refuses_to_open(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    await journal.close()
    _crash(tmp_path)
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(_record(3, ord("E"), b"{}"))
    with pytest.raises(JournalError, match="format version 3"):
        await Journal.open(tmp_path)


async def test_outcomes_survive_restart(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    for n in range(5):
        await _append(journal, n)
    for n in range(5):
        await journal.complete(f"op-{n}", OpStatus.APPLIED if n % 2 else OpStatus.REJECTED, None)
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        assert reopened.depth == 0
        for n in range(5):
            outcome = reopened.outcome(f"op-{n}")
            assert outcome is not None
            assert outcome.status is (OpStatus.APPLIED if n % 2 else OpStatus.REJECTED)
    finally:
        await reopened.close()


# --------------------------------------------------------------------------- disk space


async def test_reserve_holds_room_for_the_outcome_of_every_pending_entry(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, reserve_bytes=4096) as journal:
        entries = [await _append(journal, n) for n in range(10)]
        need = 4096 + sum(codec.outcome_bound(entry.op_id) for entry in entries)
        disk = journal.stats()["disk"]
        assert disk["reserve_needed_bytes"] == need
        assert disk["reserve_bytes"] >= need
        assert (tmp_path / RESERVE_FILE).stat().st_size == disk["reserve_bytes"]
        # The longest reason still fits what was held back for it.
        await journal.complete("op-0", OpStatus.REJECTED, "why " * 500)
        outcome = journal.outcome("op-0")
        assert outcome is not None and outcome.reason is not None
        assert len(orjson.dumps(outcome.reason)) <= codec.REASON_MAX_BYTES
        assert outcome.reason.endswith("\u2026")
        assert journal.stats()["disk"]["reserve_needed_bytes"] == need - codec.outcome_bound("op-0")


async def test_no_room_for_the_reserve_refuses_entries_but_not_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path, reserve_bytes=4096)
    await _append(journal, 1)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    size = journal.size_bytes
    results = await asyncio.gather(
        *(_append(journal, n) for n in range(2, 400)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, JournalFull)]
    assert refused, "the reserve never had to grow"
    assert all(isinstance(r, JournalEntry | JournalFull) for r in results)
    assert "full" in str(refused[0])
    assert journal.full and not journal.writable
    assert journal.stats()["disk"]["full"] is True
    assert journal.stats()["disk"]["entries_refused"] == len(refused)
    assert journal.stats()["disk"]["last_error"] == "No space left on device"
    taken = [r.op_id for r in results if isinstance(r, JournalEntry)]
    assert _op_ids(journal.pending()) == ["op-1", *taken]
    assert journal.size_bytes >= size
    # Entries already taken can still be completed.
    for op_id in ["op-1", *taken]:
        await journal.complete(op_id, OpStatus.APPLIED)
    assert journal.depth == 0
    monkeypatch.undo()

    await _append(journal, 1000)
    assert not journal.full and journal.writable
    await journal.close()
    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == ["op-1000"]
    finally:
        await reopened.close()


async def test_full_disk_refuses_entries_then_completes_every_pending_one_and_compacts(
    tmp_path: Path,
) -> None:
    with small_filesystem(tmp_path / "disk", "128k") as disk:
        directory = disk / "journal"
        journal = await Journal.open(directory, reserve_bytes=8192, max_outcomes=1000)
        accepted: list[JournalEntry] = []
        refusal: JournalFull | None = None
        n = 0
        while refusal is None:
            # Bursts, so that batches of several entries meet the full disk too.
            results = await asyncio.gather(
                *(_append(journal, n + i, text="p" * 300) for i in range(8)),
                return_exceptions=True,
            )
            n += 8
            for result in results:
                if isinstance(result, JournalEntry):
                    accepted.append(result)
                elif isinstance(result, JournalFull):
                    refusal = result
                else:
                    raise AssertionError(result)
            assert n < 5000, "the disk never filled up"
        assert len(accepted) > 20
        assert journal.full and not journal.writable
        disk_stats = journal.stats()["disk"]
        assert disk_stats["full"] is True and disk_stats["entries_refused"] >= 1
        assert disk_stats["reserve_bytes"] >= disk_stats["reserve_needed_bytes"]
        assert "full" in str(refusal)
        # One at a time, what still fits is taken, then the refusals hold.
        for more in range(n, n + 100):
            try:
                accepted.append(await _append(journal, more, text="p" * 300))
            except JournalFull:
                break
        with pytest.raises(JournalFull):
            await _append(journal, 99_999, text="p" * 300)
        # No half-written record was left behind.
        assert (directory / JOURNAL_FILE).stat().st_size == journal.size_bytes
        assert _op_ids(journal.pending()) == _op_ids(accepted)
        full_size = journal.size_bytes

        # Every accepted entry can be completed, even with the longest reasons.
        for i, entry in enumerate(accepted):
            if i % 2:
                await journal.complete(entry.op_id, OpStatus.REJECTED, "conflict " * 200)
            else:
                await journal.complete(entry.op_id, OpStatus.APPLIED)
        assert journal.depth == 0
        stats = journal.stats()
        assert stats["compactions"] >= 1
        assert stats["failed"] is None
        assert journal.size_bytes < full_size
        assert not journal.full and journal.writable
        await journal.compact()  # and compaction can always run

        later = await _append(journal, 100_000, text="p" * 300)
        await journal.close()

        reopened = await Journal.open(directory, reserve_bytes=8192)
        try:
            assert reopened.pending() == [later]
            assert reopened.stats()["disk"]["full"] is False
        finally:
            await reopened.close()


async def test_restart_on_a_full_disk_keeps_the_reserve(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "96k") as disk:
        directory = disk / "journal"
        journal = await Journal.open(directory, reserve_bytes=8192)
        for n in range(5000):
            try:
                await _append(journal, n, text="q" * 400)
            except JournalFull:
                break
        else:
            raise AssertionError("the disk never filled up")
        depth = journal.depth
        await journal.close()

        reopened = await Journal.open(directory, reserve_bytes=8192)
        try:
            assert reopened.depth == depth
            disk_stats = reopened.stats()["disk"]
            assert disk_stats["reserve_bytes"] >= disk_stats["reserve_needed_bytes"]
            with pytest.raises(JournalFull):
                await _append(reopened, 99_999, text="q" * 400)
            for entry in reopened.pending():
                await reopened.complete(entry.op_id, OpStatus.APPLIED)
            assert reopened.depth == 0 and reopened.writable
        finally:
            await reopened.close()


# --------------------------------------------------------------------------- compaction


async def test_compaction_keeps_pending_entries_and_recent_outcomes(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, compact_bytes=4096, max_outcomes=5)
    for n in range(60):
        await _append(journal, n, text="y" * 100)
    completed = [n for n in range(60) if n % 10]
    for n in completed:
        await journal.complete(f"op-{n}", OpStatus.APPLIED, f"r{n}")
    assert journal.stats()["compactions"] >= 1
    await journal.compact()
    # Only the live state is left: six pending entries plus five remembered ops.
    assert journal.size_bytes < 4096
    content = (tmp_path / JOURNAL_FILE).read_bytes()
    assert len(content) == journal.size_bytes
    assert b'"op-1"' not in content
    assert b'"op-59"' in content
    pending = journal.pending()
    assert _op_ids(pending) == [f"op-{n}" for n in range(0, 60, 10)]
    recent = completed[-5:]
    for n in completed:
        outcome = journal.outcome(f"op-{n}")
        if n in recent:
            assert outcome is not None
            assert outcome.reason == f"r{n}"
        else:
            assert outcome is None
    await journal.close()
    assert not (tmp_path / (JOURNAL_FILE + ".compact")).exists()

    reopened = await Journal.open(tmp_path, compact_bytes=4096, max_outcomes=5)
    try:
        assert reopened.pending() == pending
        assert [reopened.outcome(f"op-{n}") for n in recent] == [
            journal.outcome(f"op-{n}") for n in recent
        ]
        assert reopened.outcome(f"op-{completed[0]}") is None
        # A finished op still remembered is not appended twice after the restart either.
        size = reopened.size_bytes
        assert (await _append(reopened, recent[-1])).seq == recent[-1] + 1
        assert reopened.size_bytes == size
        assert (await _append(reopened, 1000)).seq == 61
    finally:
        await reopened.close()


async def test_sequence_keeps_rising_after_compaction_empties_the_journal(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path, compact_bytes=1024, max_outcomes=0)
    for n in range(30):
        await _append(journal, n, text="z" * 50)
        await journal.complete(f"op-{n}", OpStatus.APPLIED)
    assert journal.stats()["compactions"] >= 1
    await journal.close()

    reopened = await Journal.open(tmp_path, compact_bytes=1024, max_outcomes=0)
    try:
        assert reopened.depth == 0
        assert (await _append(reopened, 100)).seq == 31
    finally:
        await reopened.close()


async def test_compaction_on_open_when_over_threshold(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    for n in range(40):
        await _append(journal, n, text="w" * 100)
        if n != 7:
            await journal.complete(f"op-{n}", OpStatus.APPLIED)
    big = journal.size_bytes
    await journal.close()

    reopened = await Journal.open(tmp_path, compact_bytes=1024, max_outcomes=2)
    try:
        assert reopened.stats()["compactions"] == 1
        assert reopened.size_bytes < big
        assert _op_ids(reopened.pending()) == ["op-7"]
        assert reopened.outcome("op-39") is not None
    finally:
        await reopened.close()


async def test_failed_compaction_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await Journal.open(tmp_path, compact_bytes=2048)

    def no_rename(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "injected rename failure")

    monkeypatch.setattr(os, "replace", no_rename)
    for n in range(40):
        await _append(journal, n, text="v" * 100)
    with pytest.raises(JournalError, match="compaction failed"):
        await journal.compact()
    monkeypatch.undo()
    assert journal.stats()["compaction_failures"] >= 1
    assert journal.stats()["compactions"] == 0
    assert not (tmp_path / (JOURNAL_FILE + ".compact")).exists()
    assert journal.depth == 40
    await journal.close()

    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == [f"op-{n}" for n in range(40)]
    finally:
        await reopened.close()


async def test_leftover_compaction_file_is_discarded(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    await journal.close()
    # A crash before the rename leaves a half-written side file next to the intact journal.
    (tmp_path / (JOURNAL_FILE + ".compact")).write_bytes(b"RJ\x01E\x00\x00")
    reopened = await Journal.open(tmp_path)
    try:
        assert _op_ids(reopened.pending()) == ["op-1"]
        assert not (tmp_path / (JOURNAL_FILE + ".compact")).exists()
    finally:
        await reopened.close()


# --------------------------------------------------------------------------- lifecycle


async def test_second_opener_is_refused(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    try:
        with pytest.raises(JournalError, match="is in use by another process"):
            await Journal.open(tmp_path)

        script = textwrap.dedent(
            """
            import asyncio, sys
            from pathlib import Path
            from proxy.store.journal import Journal, JournalError

            async def main() -> None:
                try:
                    await Journal.open(Path(sys.argv[1]))
                except JournalError as exc:
                    print(exc)

            asyncio.run(main())
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "is in use by another process" in result.stdout
    finally:
        await journal.close()

    again = await Journal.open(tmp_path)
    await again.close()


async def test_close_is_idempotent(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    appends = [asyncio.ensure_future(_append(journal, n)) for n in range(5)]
    await asyncio.gather(journal.close(), journal.close(), *appends)
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await _append(journal, 9)

    reopened = await Journal.open(tmp_path)
    try:
        assert reopened.depth == 5
    finally:
        await reopened.close()
        await reopened.close()


async def test_new_journal_on_a_full_disk_starts_refusing_entries(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "64k") as disk:
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 1024)
        os.close(fd)
        journal = await Journal.open(disk / "journal", reserve_bytes=4096)
        try:
            assert journal.full and not journal.writable
            assert journal.condition == "disk-full"
            with pytest.raises(JournalFull):
                await _append(journal, 1)
            filler.unlink()
            await _append(journal, 2)  # room again: taken, and the journal says so
            assert journal.writable and journal.condition == "ok"
            assert journal.stats()["disk"]["reserve_bytes"] >= 4096
        finally:
            await journal.close()
        reopened = await Journal.open(disk / "journal", reserve_bytes=4096)
        try:
            assert _op_ids(reopened.pending()) == ["op-2"]
        finally:
            await reopened.close()
