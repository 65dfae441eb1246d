"""The write journal against real files: durability, recovery, group commit, compaction."""

from __future__ import annotations

import asyncio
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
    Journal,
    JournalEntry,
    JournalError,
    OpStatus,
)


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
    crc = zlib.crc32(body, zlib.crc32(struct.pack(">BBI", version, rtype, len(body))))
    return struct.pack(">2sBBII", b"RJ", version, rtype, len(body), crc) + body


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
    assert all(isinstance(result, JournalError) for result in results)
    assert _op_ids(journal.pending()) == ["op-1"]

    await _append(journal, 6)
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
    """Three entries (and one outcome when `last` is "outcome"); the last record's span."""
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


@pytest.mark.parametrize("last", ["entry", "outcome"])
async def test_torn_last_record_is_dropped_at_every_cut_point(tmp_path: Path, last: str) -> None:
    source = tmp_path / "source"
    start, end = await _journal_with_tail(source, last)
    data = (source / JOURNAL_FILE).read_bytes()
    assert len(data) == end
    survivors = ["op-1", "op-2"] if last == "entry" else ["op-1", "op-2", "op-3"]

    for cut in range(1, end - start):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / JOURNAL_FILE).write_bytes(data[: start + cut])

        journal = await Journal.open(directory)
        assert _op_ids(journal.pending()) == survivors, cut
        assert journal.stats()["torn_records_dropped"] == 1, cut
        assert journal.size_bytes == start
        assert (directory / JOURNAL_FILE).stat().st_size == start
        await _append(journal, 4)
        await journal.close()

        reopened = await Journal.open(directory)
        assert _op_ids(reopened.pending()) == [*survivors, "op-4"], cut
        assert reopened.stats()["torn_records_dropped"] == 0
        await reopened.close()
        shutil.rmtree(directory)


async def test_corrupt_last_record_is_dropped(tmp_path: Path) -> None:
    start, end = await _journal_with_tail(tmp_path, "entry")
    path = tmp_path / JOURNAL_FILE
    data = bytearray(path.read_bytes())
    data[end - 5] ^= 0xFF
    path.write_bytes(bytes(data))
    journal = await Journal.open(tmp_path)
    try:
        assert _op_ids(journal.pending()) == ["op-1", "op-2"]
        assert journal.stats()["torn_records_dropped"] == 1
        assert journal.size_bytes == start
    finally:
        await journal.close()


async def test_zero_filled_tail_is_dropped(tmp_path: Path) -> None:
    _, end = await _journal_with_tail(tmp_path, "entry")
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(b"\0" * 4096)
    journal = await Journal.open(tmp_path)
    try:
        assert journal.depth == 3
        assert journal.size_bytes == end
        assert journal.stats()["torn_records_dropped"] == 1
    finally:
        await journal.close()


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


async def test_record_of_a_newer_format_refuses_to_open(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    await _append(journal, 1)
    await journal.close()
    with (tmp_path / JOURNAL_FILE).open("ab") as f:
        f.write(_record(2, ord("E"), b"{}"))
    with pytest.raises(JournalError, match="format version 2"):
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
