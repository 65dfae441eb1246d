"""Group commit: the one task that writes to the journal, and what a write that did not make it
means for those waiting on it.

Appends, outcomes and requested rewrites are queued; the writer takes everything queued while the
previous batch was on its way to the disk and writes it as the next single batch (one write, one
fsync, on the I/O thread), so all writers that arrive while a flush is running share one fsync
and the event loop stays free while the disk is busy. Only once a batch is durable does the
writer change the index and answer its futures. Between batches it runs the compactions that
are due.

An entry needs its own bytes plus room in the reserve for its outcome; entries the disk has no
room for are refused with JournalFull (after one rewrite without finished operations was tried).
A write that fails is cut back off the file; when even that fails, the file's end is unknown and
the writer refuses everything from then on (`failed`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from proxy.store.journal.codec import (
    COMMIT_RECORD_SIZE,
    TYPE_ENTRY,
    TYPE_OUTCOME,
    encode,
    outcome_bound,
)
from proxy.store.journal.compaction import Compactor
from proxy.store.journal.errors import JournalError
from proxy.store.journal.files import LogFile, Unrecoverable, fsync_dir
from proxy.store.journal.index import Index
from proxy.store.journal.model import JournalEntry, Outcome
from proxy.store.journal.space import DiskSpace, is_space_error

_log = structlog.get_logger(__name__)

_T = TypeVar("_T")


@dataclass(slots=True)
class _Write:
    data: bytes
    future: asyncio.Future[Any]
    entry: JournalEntry | None = None
    outcome: Outcome | None = None
    compact: bool = False
    bound: int = 0  # room the entry's outcome may take, held in the reserve
    retried: bool = False


@dataclass(slots=True)
class _BatchResult:
    end: int
    written: list[_Write] = field(default_factory=list)
    refused: list[_Write] = field(default_factory=list)  # entries the disk had no room for
    unwritten: list[_Write] = field(default_factory=list)  # others that failed with `failed`
    failed: OSError | None = None


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    # A caller cancelled while waiting must not turn a failed write into an "exception was never
    # retrieved" warning; the failure was already reported to whoever still listens.
    if not fut.cancelled():
        fut.exception()


class Writer:
    """Owns the queue, the writer task and the writes in flight. All methods but the `_write_batch`
    it hands to the I/O thread run on the event loop that opened the journal."""

    def __init__(
        self,
        *,
        directory: Path,
        file: LogFile,
        index: Index,
        space: DiskSpace,
        compactor: Compactor,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._dir = directory
        self._file = file
        self._path = file.path
        self._fsync = file.fsync
        self._index = index
        self._space = space
        self._compactor = compactor
        self._executor = executor

        self.inflight_appends: dict[str, asyncio.Future[JournalEntry]] = {}
        self.inflight_completions: dict[str, asyncio.Future[None]] = {}
        self._queue: list[_Write] = []
        self._flushing = False
        self.flush_task: asyncio.Task[None] | None = None
        self.failed: JournalError | None = None

        self.appends = 0
        self.completions = 0
        self.batches = 0

    # Each of these queues one write and returns the future it answers. Callers check that the
    # journal is usable (open, not failed) with no await in between, so a closed or failed
    # journal never gets here and no in-flight future is left without a writer.

    def append(self, entry: JournalEntry, body: bytes) -> asyncio.Future[JournalEntry]:
        fut: asyncio.Future[JournalEntry] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self.inflight_appends[entry.op_id] = fut
        write = _Write(encode(TYPE_ENTRY, body), fut, entry=entry, bound=outcome_bound(entry.op_id))
        self._enqueue(write)
        return fut

    def complete(self, outcome: Outcome, body: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self.inflight_completions[outcome.op_id] = fut
        self._enqueue(_Write(encode(TYPE_OUTCOME, body), fut, outcome=outcome))
        return fut

    def compact(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._enqueue(_Write(b"", fut, compact=True))
        return fut

    def _enqueue(self, write: _Write) -> None:
        self._queue.append(write)
        if not self._flushing:
            self._flushing = True
            self.flush_task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="journal-flush"
            )

    async def io(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _flush_loop(self) -> None:
        # Group commit: everything queued while the previous batch was on its way to the disk
        # goes out in the next single write + fsync.
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                if self.failed is not None:
                    self._fail(batch, self.failed)
                    continue
                records = [write for write in batch if not write.compact]
                if records:
                    await self._write_records(records)
                requested = [write for write in batch if write.compact]
                if requested or self._compactor.due():
                    compaction_error = await self._compact(shed=self._space.full)
                    for write in requested:
                        if compaction_error is not None:
                            self._fail([write], compaction_error)
                        elif not write.future.done():
                            write.future.set_result(None)
        except asyncio.CancelledError:
            # Only loop shutdown cancels this task; the thread may still be writing, so the file
            # size is unknown and nothing more may be written by this instance.
            self.failed = JournalError(f"journal {self._path} writer was cancelled")
            self._fail(self._queue, self.failed)
            self._queue = []
            raise
        except Exception as exc:  # a bug must not leave callers waiting forever
            self.failed = JournalError(f"journal {self._path} writer failed: {exc!r}")
            self._fail(self._queue, self.failed)
            self._queue = []
            _log.exception("journal_writer_failed", path=str(self._path))
        finally:
            self._flushing = False

    async def _write_records(self, records: list[_Write]) -> None:
        try:
            result = await self.io(
                self._write_batch, records, self._file.size, self._index.reserved
            )
        except Unrecoverable as exc:
            self.failed = JournalError(
                f"journal {self._path} is unusable: a failed write ({exc.cause}) could not be "
                f"rolled back ({exc.error}); restart the sidecar to recover"
            )
            self.failed.__cause__ = exc.cause
            _log.error(
                "journal_failed", path=str(self._path), error=str(exc.error), cause=str(exc.cause)
            )
            self._fail(records, self.failed)
            return
        except OSError as exc:
            error = JournalError(f"journal write to {self._path} failed: {exc}")
            error.__cause__ = exc
            _log.warning("journal_write_failed", path=str(self._path), error=str(exc))
            self._fail(records, error)
            return
        self._file.size = result.end
        if result.written:
            self.batches += 1
            self._commit(result.written)
            if any(write.entry is not None for write in result.written):
                self._space.set_full(False, self._index.depth)
        if result.failed is not None:
            # Not even the reserve gave enough room (something else filled the disk): these
            # outcomes stay pending, and the replay records them on a later round.
            error = JournalError(f"journal write to {self._path} failed: {result.failed}")
            error.__cause__ = result.failed
            _log.warning("journal_write_failed", path=str(self._path), error=str(result.failed))
            self._fail(result.unwritten, error)
        refused = result.refused
        if not refused:
            return
        self._space.set_full(True, self._index.depth)
        # Finished operations still take room in the file: a rewrite without them may make
        # enough. Try that once before refusing.
        if (
            self._compactor.sheddable > self._compactor.pressure_tried_at
            and not any(write.retried for write in refused)
            and await self._compact(shed=True) is None
        ):
            for write in refused:
                write.retried = True
            self._queue[:0] = refused
            return
        self._space.refused += len(refused)
        self._fail(refused, self._space.full_error(self._index.depth))

    def _write_batch(self, writes: list[_Write], start: int, reserved: int) -> _BatchResult:
        """I/O thread: append `writes` as one batch at `start`.

        An entry needs its own bytes plus room in the reserve for its outcome; when the disk
        cannot give that, the entries are refused and the rest of the batch is written. Outcome
        records may take their room from the reserve: that is what it is kept for.
        """
        chosen, refused = writes, []
        entries = [write for write in writes if write.entry is not None]
        new_bounds = sum(write.bound for write in entries)
        if new_bounds:
            taken = self._space.hold(reserved, [write.bound for write in entries])
            refused = entries[taken:]
            new_bounds = sum(write.bound for write in entries[:taken])
            out = {id(write) for write in refused}
            chosen = [write for write in writes if id(write) not in out]
        if not chosen:
            self._space.sample_free()
            return _BatchResult(end=start, refused=refused)
        try:
            end = self._file.append([write.data for write in chosen], start)
        except OSError as exc:
            if not is_space_error(exc):
                raise
            self._space.note_error(exc)
            refused += [write for write in chosen if write.entry is not None]
            chosen = [write for write in chosen if write.entry is None]
            if not chosen:
                self._space.sample_free()
                return _BatchResult(end=start, refused=refused)
            need = sum(len(write.data) for write in chosen) + COMMIT_RECORD_SIZE
            self._space.lend(need)
            try:
                end = self._file.append([write.data for write in chosen], start)
            except OSError as again:
                if not is_space_error(again):
                    raise
                self._space.note_error(again)
                self._space.sample_free()
                return _BatchResult(end=start, refused=refused, unwritten=chosen, failed=again)
        if not refused:
            self._space.trim(reserved + new_bounds)
        self._space.sample_free()
        return _BatchResult(end=end, written=chosen, refused=refused)

    def _commit(self, batch: list[_Write]) -> None:
        for write in batch:
            if write.entry is not None:
                entry = write.entry
                self._index.add_pending(entry)
                self._index.durable_next_seq = max(self._index.durable_next_seq, entry.seq + 1)
                self.inflight_appends.pop(entry.op_id, None)
                self.appends += 1
                if not write.future.done():
                    write.future.set_result(entry)
            elif write.outcome is not None:
                self._index.finish(write.outcome)
                self.inflight_completions.pop(write.outcome.op_id, None)
                self.completions += 1
                self._compactor.sheddable += 1
                if not write.future.done():
                    write.future.set_result(None)

    def _fail(self, batch: Iterable[_Write], error: JournalError) -> None:
        for write in batch:
            if write.entry is not None:
                self.inflight_appends.pop(write.entry.op_id, None)
            elif write.outcome is not None:
                self.inflight_completions.pop(write.outcome.op_id, None)
            if not write.future.done():
                write.future.set_exception(error)

    def _restore_reserve(self) -> bool:
        """I/O thread: the reserve back to its need (see DiskSpace.restore)."""
        return self._space.restore(self._index.reserved, self._index.depth)

    async def _compact(self, *, shed: bool = False) -> JournalError | None:
        entries, outcomes = self._index.live_state(shed=shed)
        try:
            new_fd, new_size, kept = await self.io(
                self._compactor.write_making_room, entries, outcomes
            )
        except OSError as exc:
            self._compactor.failed(exc)
            # Under pressure, the next try waits until there is more to leave out.
            self._compactor.pressure_tried_at = self._compactor.sheddable
            await self.io(self._restore_reserve)
            return JournalError(f"journal {self._path}: compaction failed: {exc}")
        self._compactor.install(new_fd, new_size, kept_outcomes=kept)
        if self._fsync:
            try:
                await self.io(fsync_dir, self._dir)
            except OSError as exc:
                # The rename might be undone by a crash, taking later appends with it; stop
                # taking any.
                self.failed = JournalError(
                    f"journal {self._path} is unusable: compaction could not be made durable "
                    f"({exc})"
                )
                _log.error("journal_failed", path=str(self._path), error=str(exc))
                return self.failed
        await self.io(self._restore_reserve)
        return None
