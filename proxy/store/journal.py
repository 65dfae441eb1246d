"""Durable local write journal: the record behind every `202 Accepted`.

While PostgreSQL is unreachable the sidecar still accepts writes, and promises (DESIGN.md, guarantee
2) that each one is on local disk before it answers and that it is applied exactly once, or
rejected with a reason, after the database returns, even if the sidecar restarts in between. This
module keeps that promise for opaque operations; it knows nothing about agents.

Why it is written here rather than taken from a library: what we need is small but exact. It must
(a) not answer before the bytes are fsynced, (b) share one fsync among all writers that arrive
while a flush is running, since fsync latency would otherwise cap the write rate at one operation
per disk flush, (c) keep the event loop free while the disk is busy, and (d) after a crash, cut off
a half-written last record without ever silently skipping a damaged record in the middle. SQLite
would give (a) and (d), but every commit blocks its thread and sharing commits among coroutines
is the very group-commit logic we would still have to write; the asyncio file wrappers only move
blocking calls to threads, with no record framing or recovery. No maintained package combines the
four, and the whole thing is one append-only file, one writer task and one I/O thread.

On-disk format (`journal.log`, big-endian): a sequence of records, each a 12-byte header
`magic b"RJ" | format version u8 | record type u8 | body length u32 | CRC-32 u32` followed by
the body, an orjson object. The CRC covers version, type, length and body. Types: `M` meta
(`next_seq`, so sequence numbers keep rising after compaction empties the file), `E` entry (a
`JournalEntry`), `O` outcome (an `Outcome`). An outcome after its entry means the operation has
left the journal.

Recovery reads the file front to back. A bad record with no valid record after it is a torn tail
from a crash mid-write: it is cut off and counted. A bad record followed by valid ones is damage,
not a crash artefact, and opening fails with the offset rather than lose what follows.

Compaction writes the live state (meta, pending entries, entries and outcomes of the most recent
finished operations) to `journal.log.compact`, fsyncs it, renames it over `journal.log` and fsyncs
the directory. A crash at any step leaves one complete file: the old one until the rename, the new
one after; a leftover `.compact` file is deleted on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeGuard, TypeVar

import orjson
import structlog

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "MAX_RECORD_BYTES",
    "Journal",
    "JournalEntry",
    "JournalError",
    "OpStatus",
    "Outcome",
]

_log = structlog.get_logger(__name__)

JOURNAL_FILE: Final = "journal.log"
LOCK_FILE: Final = "journal.lock"
_COMPACT_SUFFIX: Final = ".compact"

_MAGIC: Final = b"RJ"
_FORMAT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">2sBBII")
_TYPE_META: Final = ord("M")
_TYPE_ENTRY: Final = ord("E")
_TYPE_OUTCOME: Final = ord("O")
_KNOWN_TYPES: Final = frozenset({_TYPE_META, _TYPE_ENTRY, _TYPE_OUTCOME})

# A length field beyond this is treated as damage instead of an instruction to read gigabytes.
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024

_T = TypeVar("_T")


class OpStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    op_id: str
    kind: str
    tenant: str
    key: str
    payload: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    op_id: str
    status: OpStatus
    reason: str | None
    at: float


class JournalError(Exception):
    """The journal could not make a record durable (or cannot be opened); do not answer 202."""


# --------------------------------------------------------------------------- record codec


def _encode(rtype: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(struct.pack(">BBI", _FORMAT_VERSION, rtype, len(body))))
    return _HEADER.pack(_MAGIC, _FORMAT_VERSION, rtype, len(body), crc) + body


def _parse(buf: bytes, offset: int) -> tuple[int, int, bytes, int] | str:
    """(version, type, body, end offset) of the record at `offset`, or why it is not one."""
    if len(buf) - offset < _HEADER.size:
        return "truncated header"
    magic, version, rtype, length, crc = _HEADER.unpack_from(buf, offset)
    if magic != _MAGIC:
        return "bad magic"
    if length > MAX_RECORD_BYTES:
        return f"implausible length {length}"
    start = offset + _HEADER.size
    end = start + length
    if end > len(buf):
        return "truncated body"
    body = buf[start:end]
    if zlib.crc32(body, zlib.crc32(struct.pack(">BBI", version, rtype, length))) != crc:
        return "checksum mismatch"
    return version, rtype, body, end


def _next_valid_record(buf: bytes, start: int) -> int | None:
    # orjson escapes control characters, so the NUL-bearing header of a real record cannot hide
    # inside a JSON body; a match here is a genuine record, not a coincidence in someone's payload.
    pos = buf.find(_MAGIC, start)
    while pos != -1:
        if not isinstance(_parse(buf, pos), str):
            return pos
        pos = buf.find(_MAGIC, pos + 1)
    return None


def _entry_to_obj(entry: JournalEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "op_id": entry.op_id,
        "kind": entry.kind,
        "tenant": entry.tenant,
        "key": entry.key,
        "payload": entry.payload,
        "created_at": entry.created_at,
    }


def _outcome_to_obj(outcome: Outcome) -> dict[str, Any]:
    return {
        "op_id": outcome.op_id,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "at": outcome.at,
    }


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _entry_from_obj(obj: Any) -> JournalEntry:
    if not isinstance(obj, dict):
        raise ValueError("entry record is not an object")
    seq, created_at, payload = obj.get("seq"), obj.get("created_at"), obj.get("payload")
    strings = [obj.get(name) for name in ("op_id", "kind", "tenant", "key")]
    if not _is_int(seq) or not _is_number(created_at) or not isinstance(payload, dict):
        raise ValueError("entry record has a malformed seq, created_at or payload")
    op_id, kind, tenant, key = strings
    if not (
        isinstance(op_id, str)
        and isinstance(kind, str)
        and isinstance(tenant, str)
        and isinstance(key, str)
    ):
        raise ValueError("entry record has a non-string op_id, kind, tenant or key")
    return JournalEntry(
        seq=seq,
        op_id=op_id,
        kind=kind,
        tenant=tenant,
        key=key,
        payload=payload,
        created_at=float(created_at),
    )


def _outcome_from_obj(obj: Any) -> Outcome:
    if not isinstance(obj, dict):
        raise ValueError("outcome record is not an object")
    op_id, status, reason, at = (obj.get(name) for name in ("op_id", "status", "reason", "at"))
    if not isinstance(op_id, str) or not _is_number(at):
        raise ValueError("outcome record has a malformed op_id or time")
    if status not in (OpStatus.APPLIED.value, OpStatus.REJECTED.value):
        raise ValueError(f"outcome record has an unknown status {status!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("outcome record has a non-string reason")
    return Outcome(op_id=op_id, status=OpStatus(status), reason=reason, at=float(at))


# --------------------------------------------------------------------------- file helpers


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write to journal")
        done += n


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 8 * 1024 * 1024), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _fsync_dir(directory: Path) -> None:
    # A rename or a new file is only durable once the directory entry itself is flushed.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire_lock(directory: Path) -> int:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot prepare journal directory {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal directory {directory} is in use by another process") from None
    except OSError as exc:
        os.close(fd)
        raise JournalError(f"cannot lock journal directory {directory}: {exc}") from exc
    # The pid is only a hint for whoever investigates a held lock; the flock is what counts.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    # A caller cancelled while waiting must not turn a failed write into an "exception was never
    # retrieved" warning; the failure was already reported to whoever still listens.
    if not fut.cancelled():
        fut.exception()


@dataclass(slots=True)
class _Write:
    data: bytes
    future: asyncio.Future[Any]
    entry: JournalEntry | None = None
    outcome: Outcome | None = None
    compact: bool = False


# --------------------------------------------------------------------------- the journal


class Journal:
    """An fsynced, append-only operation log with group commit. Use `await Journal.open(dir)`.

    One instance per directory and process; all methods must be called from the event loop that
    opened it. Only the writer task mutates the in-memory state, and only after the bytes it
    describes are durable, so `pending()`, `get()` and `outcome()` never show an unacknowledged
    write.
    """

    def __init__(
        self,
        *,
        directory: Path,
        fsync: bool,
        max_outcomes: int,
        compact_bytes: int,
        lock_fd: int,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._dir = directory
        self._path = directory / JOURNAL_FILE
        self._compact_path = directory / (JOURNAL_FILE + _COMPACT_SUFFIX)
        self._fsync = fsync
        self._max_outcomes = max_outcomes
        self._compact_bytes = compact_bytes
        self._lock_fd = lock_fd
        self._executor = executor

        self._fd = -1
        self._size = 0
        self._next_seq = 1  # next seq handed out, including writes still in flight
        self._durable_next_seq = 1  # one past the highest seq that is on disk
        self._pending: dict[str, JournalEntry] = {}
        self._by_tenant: dict[str, dict[str, JournalEntry]] = {}
        self._finished: OrderedDict[str, tuple[Outcome, JournalEntry]] = OrderedDict()
        self._inflight_appends: dict[str, asyncio.Future[JournalEntry]] = {}
        self._inflight_completions: dict[str, asyncio.Future[None]] = {}

        self._queue: list[_Write] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._failed: JournalError | None = None
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

        self._compact_at = compact_bytes
        self._appends = 0
        self._completions = 0
        self._fsyncs = 0
        self._batches = 0
        self._compactions = 0
        self._compaction_failures = 0
        self._torn_records_dropped = 0
        self._torn_bytes_dropped = 0

    # ----------------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        fsync: bool = True,
        max_outcomes: int = 10_000,
        compact_bytes: int = 4 * 1024 * 1024,
    ) -> Journal:
        """Lock `directory`, recover the journal in it (creating both if missing)."""
        if max_outcomes < 0:
            raise ValueError("max_outcomes must be >= 0")
        if compact_bytes <= 0:
            raise ValueError("compact_bytes must be > 0")
        directory = Path(directory)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-io")

        def open_sync() -> Journal:
            lock_fd = _acquire_lock(directory)
            journal = cls(
                directory=directory,
                fsync=fsync,
                max_outcomes=max_outcomes,
                compact_bytes=compact_bytes,
                lock_fd=lock_fd,
                executor=executor,
            )
            try:
                journal._recover()
            except BaseException:
                journal._release_files()
                raise
            return journal

        fut = asyncio.get_running_loop().run_in_executor(executor, open_sync)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread finishes regardless; whatever it opened must not keep the lock forever.
            def discard(done: asyncio.Future[Journal]) -> None:
                if not done.cancelled() and done.exception() is None:
                    done.result()._release_files()
                executor.shutdown(wait=False)

            fut.add_done_callback(discard)
            raise
        except BaseException:
            executor.shutdown(wait=False)
            raise

    def _recover(self) -> None:
        """Runs in the I/O thread before the instance is visible to anyone."""
        try:
            with contextlib.suppress(FileNotFoundError):
                # Left by a compaction that crashed before its rename: the old file is complete.
                self._compact_path.unlink()
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            buf = _read_all(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot read journal {self._path}: {exc}") from exc

        good_end = self._scan(buf)
        try:
            if good_end < len(buf):
                self._torn_records_dropped += 1
                self._torn_bytes_dropped += len(buf) - good_end
                _log.warning(
                    "journal_torn_tail_dropped",
                    path=str(self._path),
                    offset=good_end,
                    bytes=len(buf) - good_end,
                )
                os.ftruncate(self._fd, good_end)
                if self._fsync:
                    os.fsync(self._fd)
            self._size = good_end
            self._durable_next_seq = self._next_seq
            if self._size == 0:
                meta = _encode(_TYPE_META, self._meta_body())
                _write_all(self._fd, meta, 0)
                if self._fsync:
                    os.fsync(self._fd)
                    _fsync_dir(self._dir)
                self._size = len(meta)
        except OSError as exc:
            raise JournalError(f"cannot repair journal {self._path}: {exc}") from exc

        self._compact_at = self._compact_bytes
        if self._size > self._compact_bytes:
            # Ran over the threshold before the last shutdown (or the threshold was lowered).
            entries, outcomes = self._live_state()
            try:
                new_fd, new_size = self._write_compacted(entries, outcomes)
            except OSError as exc:
                self._compaction_failed(exc)
            else:
                self._install_compacted(new_fd, new_size)
                try:
                    if self._fsync:
                        _fsync_dir(self._dir)
                except OSError as exc:
                    raise JournalError(f"cannot make compacted journal durable: {exc}") from exc

    def _scan(self, buf: bytes) -> int:
        """Load every record into memory; return the offset where valid data ends."""
        offset = 0
        while offset < len(buf):
            parsed = _parse(buf, offset)
            if isinstance(parsed, str):
                following = _next_valid_record(buf, offset + 1)
                if following is not None:
                    raise JournalError(
                        f"journal {self._path} is corrupt at offset {offset} ({parsed}) but a "
                        f"valid record follows at offset {following}; refusing to drop data. "
                        "Stop the sidecar, keep a copy of the file and repair or move it aside."
                    )
                return offset
            version, rtype, body, end = parsed
            if version != _FORMAT_VERSION or rtype not in _KNOWN_TYPES:
                raise JournalError(
                    f"journal {self._path} has a record of format version {version}, type "
                    f"{rtype} at offset {offset} that this version does not understand"
                )
            try:
                self._load_record(rtype, orjson.loads(body))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise JournalError(
                    f"journal {self._path} has an unreadable record at offset {offset}: {exc}"
                ) from exc
            offset = end
        return offset

    def _load_record(self, rtype: int, obj: Any) -> None:
        if rtype == _TYPE_META:
            next_seq = obj.get("next_seq") if isinstance(obj, dict) else None
            if not _is_int(next_seq):
                raise ValueError("meta record has no integer next_seq")
            self._next_seq = max(self._next_seq, next_seq)
        elif rtype == _TYPE_ENTRY:
            entry = _entry_from_obj(obj)
            self._next_seq = max(self._next_seq, entry.seq + 1)
            if entry.op_id in self._pending:
                _log.warning("journal_duplicate_entry_ignored", op_id=entry.op_id, seq=entry.seq)
                return
            # Mirrors `append`: an op_id whose outcome is still remembered is not appended again,
            # so seeing it here means the outcome had been forgotten; the new entry stands.
            self._finished.pop(entry.op_id, None)
            self._add_pending(entry)
        else:
            outcome = _outcome_from_obj(obj)
            if outcome.op_id not in self._pending:
                _log.warning("journal_outcome_without_entry_ignored", op_id=outcome.op_id)
                return
            self._finish(outcome)

    def _meta_body(self) -> bytes:
        return orjson.dumps(
            {"format": _FORMAT_VERSION, "next_seq": self._durable_next_seq, "at": time.time()}
        )

    # ----------------------------------------------------------------------- writing

    async def append(
        self, *, op_id: str, kind: str, tenant: str, key: str, payload: dict[str, Any]
    ) -> JournalEntry:
        """Durably record an operation; returns once it is fsynced (when fsync is enabled).

        An op_id already pending, in flight or recently finished returns the existing entry and
        writes nothing. Raises JournalError when the record did not reach the disk (the entry is
        then not pending), TypeError when the payload is not JSON-serialisable, ValueError for an
        empty op_id or an oversized record.
        """
        self._check_usable()
        if not op_id:
            raise ValueError("op_id must be a non-empty string")
        existing = self._pending.get(op_id)
        if existing is not None:
            return existing
        finished = self._finished.get(op_id)
        if finished is not None:
            return finished[1]
        inflight = self._inflight_appends.get(op_id)
        if inflight is not None:
            return await asyncio.shield(inflight)

        seq = self._next_seq
        record = {
            "seq": seq,
            "op_id": op_id,
            "kind": kind,
            "tenant": tenant,
            "key": key,
            "payload": payload,
            "created_at": time.time(),
        }
        body = orjson.dumps(record)
        if len(body) > MAX_RECORD_BYTES:
            raise ValueError(f"journal record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
        # Round-trip so the caller sees exactly what a restarted process would read back
        # (datetimes become strings, tuples lists), and holds no alias of its own dict.
        entry = _entry_from_obj(orjson.loads(body))
        self._next_seq = seq + 1

        fut: asyncio.Future[JournalEntry] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._inflight_appends[op_id] = fut
        self._enqueue(_Write(_encode(_TYPE_ENTRY, body), fut, entry=entry))
        return await asyncio.shield(fut)

    async def complete(self, op_id: str, status: OpStatus, reason: str | None = None) -> None:
        """Durably record that `op_id` left the journal as applied or rejected.

        Completing an op that is already finished is a no-op (the first outcome stands). Raises
        KeyError for an op_id the journal does not hold, JournalError when the outcome did not
        reach the disk (the entry then stays pending).
        """
        self._check_usable()
        status = OpStatus(status)
        if status is OpStatus.PENDING:
            raise ValueError("an operation cannot complete as pending")
        inflight = self._inflight_appends.get(op_id)
        if inflight is not None:
            await asyncio.shield(inflight)
        if op_id in self._finished:
            return
        completing = self._inflight_completions.get(op_id)
        if completing is not None:
            await asyncio.shield(completing)
            return
        if op_id not in self._pending:
            raise KeyError(op_id)
        self._check_usable()  # close() may have begun while we waited above

        outcome = Outcome(op_id=op_id, status=status, reason=reason, at=time.time())
        body = orjson.dumps(_outcome_to_obj(outcome))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._inflight_completions[op_id] = fut
        self._enqueue(_Write(_encode(_TYPE_OUTCOME, body), fut, outcome=outcome))
        await asyncio.shield(fut)

    async def compact(self) -> None:
        """Rewrite the file now with only the live state (it happens by itself past
        compact_bytes). Raises JournalError when the rewrite failed; the old file then stands."""
        self._check_usable()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._enqueue(_Write(b"", fut, compact=True))
        await asyncio.shield(fut)

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise JournalError(f"journal {self._path} is closed")
        if self._failed is not None:
            raise JournalError(str(self._failed)) from self._failed

    def _enqueue(self, write: _Write) -> None:
        # Callers check `_check_usable()` with no await in between, so a closed or failed
        # journal never gets here and no in-flight future is left without a writer.
        self._queue.append(write)
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="journal-flush"
            )

    async def _io(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _flush_loop(self) -> None:
        # Group commit: everything queued while the previous batch was on its way to the disk
        # goes out in the next single write + fsync.
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                if self._failed is not None:
                    self._fail(batch, self._failed)
                    continue
                data = b"".join(write.data for write in batch)
                start = self._size
                if data:
                    try:
                        await self._io(self._write_batch, data, start)
                    except OSError as exc:
                        error = JournalError(f"journal write to {self._path} failed: {exc}")
                        error.__cause__ = exc
                        await self._roll_back(start, exc)
                        self._fail(batch, error)
                        continue
                    self._size = start + len(data)
                    self._batches += 1
                self._commit(batch)
                requested = [write for write in batch if write.compact]
                if requested or self._size > self._compact_at:
                    compaction_error = await self._compact()
                    for write in requested:
                        if compaction_error is not None:
                            self._fail([write], compaction_error)
                        elif not write.future.done():
                            write.future.set_result(None)
        except asyncio.CancelledError:
            # Only loop shutdown cancels this task; the thread may still be writing, so the file
            # size is unknown and nothing more may be written by this instance.
            self._failed = JournalError(f"journal {self._path} writer was cancelled")
            self._fail(self._queue, self._failed)
            self._queue = []
            raise
        except Exception as exc:  # a bug must not leave callers waiting forever
            self._failed = JournalError(f"journal {self._path} writer failed: {exc!r}")
            self._fail(self._queue, self._failed)
            self._queue = []
            _log.exception("journal_writer_failed", path=str(self._path))
        finally:
            self._flushing = False

    def _write_batch(self, data: bytes, offset: int) -> None:
        _write_all(self._fd, data, offset)
        if self._fsync:
            os.fsync(self._fd)
            self._fsyncs += 1

    async def _roll_back(self, offset: int, cause: OSError) -> None:
        """Cut a failed batch off the file so its records cannot resurface after a restart."""

        def truncate() -> None:
            os.ftruncate(self._fd, offset)
            if self._fsync:
                os.fsync(self._fd)

        try:
            await self._io(truncate)
        except OSError as exc:
            self._failed = JournalError(
                f"journal {self._path} is unusable: a failed write ({cause}) could not be rolled "
                f"back ({exc}); restart the sidecar to recover"
            )
            _log.error("journal_failed", path=str(self._path), error=str(exc), cause=str(cause))
        else:
            _log.warning("journal_write_failed", path=str(self._path), error=str(cause))

    def _commit(self, batch: list[_Write]) -> None:
        for write in batch:
            if write.entry is not None:
                entry = write.entry
                self._add_pending(entry)
                self._durable_next_seq = max(self._durable_next_seq, entry.seq + 1)
                self._inflight_appends.pop(entry.op_id, None)
                self._appends += 1
                if not write.future.done():
                    write.future.set_result(entry)
            elif write.outcome is not None:
                self._finish(write.outcome)
                self._inflight_completions.pop(write.outcome.op_id, None)
                self._completions += 1
                if not write.future.done():
                    write.future.set_result(None)

    def _fail(self, batch: list[_Write], error: JournalError) -> None:
        for write in batch:
            if write.entry is not None:
                self._inflight_appends.pop(write.entry.op_id, None)
            elif write.outcome is not None:
                self._inflight_completions.pop(write.outcome.op_id, None)
            if not write.future.done():
                write.future.set_exception(error)

    def _add_pending(self, entry: JournalEntry) -> None:
        self._pending[entry.op_id] = entry
        self._by_tenant.setdefault(entry.tenant, {})[entry.op_id] = entry

    def _finish(self, outcome: Outcome) -> None:
        entry = self._pending.pop(outcome.op_id)
        tenant_ops = self._by_tenant[entry.tenant]
        del tenant_ops[outcome.op_id]
        if not tenant_ops:
            del self._by_tenant[entry.tenant]
        if self._max_outcomes == 0:
            return
        self._finished[outcome.op_id] = (outcome, entry)
        while len(self._finished) > self._max_outcomes:
            self._finished.popitem(last=False)

    # ----------------------------------------------------------------------- compaction

    def _live_state(self) -> tuple[list[JournalEntry], list[Outcome]]:
        finished = list(self._finished.values())
        entries = [*self._pending.values(), *(entry for _, entry in finished)]
        entries.sort(key=lambda entry: entry.seq)
        return entries, [outcome for outcome, _ in finished]

    def _write_compacted(
        self, entries: list[JournalEntry], outcomes: list[Outcome]
    ) -> tuple[int, int]:
        """Write the live state to the side file and rename it into place; runs in the thread."""
        parts = [_encode(_TYPE_META, self._meta_body())]
        parts.extend(_encode(_TYPE_ENTRY, orjson.dumps(_entry_to_obj(e))) for e in entries)
        parts.extend(_encode(_TYPE_OUTCOME, orjson.dumps(_outcome_to_obj(o))) for o in outcomes)
        data = b"".join(parts)
        fd = os.open(self._compact_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data, 0)
            if self._fsync:
                os.fsync(fd)
                self._fsyncs += 1
            os.replace(self._compact_path, self._path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                self._compact_path.unlink()
            raise
        return fd, len(data)

    def _install_compacted(self, new_fd: int, new_size: int) -> None:
        old_fd, self._fd, self._size = self._fd, new_fd, new_size
        with contextlib.suppress(OSError):
            os.close(old_fd)
        self._compactions += 1
        # Doubling keeps compaction amortised O(1) even when the live state itself is large.
        self._compact_at = max(self._compact_bytes, 2 * new_size)

    def _compaction_failed(self, exc: OSError) -> None:
        self._compaction_failures += 1
        self._compact_at = self._size + self._compact_bytes
        _log.warning("journal_compaction_failed", path=str(self._path), error=str(exc))

    async def _compact(self) -> JournalError | None:
        entries, outcomes = self._live_state()
        try:
            new_fd, new_size = await self._io(self._write_compacted, entries, outcomes)
        except OSError as exc:
            self._compaction_failed(exc)
            return JournalError(f"journal {self._path}: compaction failed: {exc}")
        self._install_compacted(new_fd, new_size)
        if not self._fsync:
            return None
        try:
            await self._io(_fsync_dir, self._dir)
        except OSError as exc:
            # The rename might be undone by a crash, taking later appends with it; stop taking any.
            self._failed = JournalError(
                f"journal {self._path} is unusable: compaction could not be made durable ({exc})"
            )
            _log.error("journal_failed", path=str(self._path), error=str(exc))
            return self._failed
        return None

    # ----------------------------------------------------------------------- reading

    def pending(self) -> list[JournalEntry]:
        """Durable entries without an outcome, in seq order."""
        return list(self._pending.values())

    def pending_for(self, tenant: str, key: str | None = None) -> list[JournalEntry]:
        """Pending entries of one tenant (and optionally one key), in seq order."""
        entries = self._by_tenant.get(tenant)
        if not entries:
            return []
        if key is None:
            return list(entries.values())
        return [entry for entry in entries.values() if entry.key == key]

    def get(self, op_id: str) -> JournalEntry | None:
        return self._pending.get(op_id)

    def outcome(self, op_id: str) -> Outcome | None:
        finished = self._finished.get(op_id)
        return finished[0] if finished is not None else None

    def state(self, op_id: str) -> OpStatus | None:
        """PENDING while journaled, the outcome's status once finished, None when unknown."""
        if op_id in self._pending:
            return OpStatus.PENDING
        finished = self._finished.get(op_id)
        return finished[0].status if finished is not None else None

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def path(self) -> Path:
        return self._path

    @property
    def failed(self) -> bool:
        """True after an I/O error the journal could not undo; it then refuses writes."""
        return self._failed is not None

    def stats(self) -> dict[str, Any]:
        oldest = next(iter(self._pending.values()), None)
        return {
            "path": str(self._path),
            "depth": len(self._pending),
            "size_bytes": self._size,
            "appends": self._appends,
            "completions": self._completions,
            "oldest_pending_age_s": (
                max(0.0, time.time() - oldest.created_at) if oldest is not None else 0.0
            ),
            "torn_records_dropped": self._torn_records_dropped,
            "torn_bytes_dropped": self._torn_bytes_dropped,
            "outcomes_retained": len(self._finished),
            "next_seq": self._next_seq,
            "fsync": self._fsync,
            "fsyncs": self._fsyncs,
            "write_batches": self._batches,
            "compactions": self._compactions,
            "compaction_failures": self._compaction_failures,
            "failed": str(self._failed) if self._failed is not None else None,
        }

    # ----------------------------------------------------------------------- closing

    async def close(self) -> None:
        """Drain queued writes, fsync, close the file and release the directory lock."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        elif self._close_task.done():
            return
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        if self._flush_task is not None:
            # wait() rather than await: the writer's own failure was already reported to callers.
            await asyncio.wait([self._flush_task])

        def final_sync() -> None:
            try:
                if self._fsync and self._failed is None and self._fd >= 0:
                    os.fsync(self._fd)
            finally:
                self._release_files()

        try:
            await self._io(final_sync)
        except OSError as exc:
            raise JournalError(f"journal {self._path}: final fsync failed: {exc}") from exc
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def _release_files(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the lock descriptor releases the flock
        self._fd = self._lock_fd = -1

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
