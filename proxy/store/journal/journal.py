"""The journal as its callers use it: `Journal` composes the log file (files.py), the in-memory
index (index.py), disk space (space.py), compaction (compaction.py) and the group-committing
writer (writer.py), opens through recovery (recovery.py), and checks each call before it queues
anything.

While PostgreSQL is unreachable the sidecar still accepts writes, and promises (the `202` row of
the README's table of answers) that each one is on local disk before it answers `202` and that it
is applied exactly once, or rejected with a reason, after the database returns, even if the
sidecar restarts in between. The journal keeps that promise for opaque operations; it knows
nothing about agents.

Why it is written here rather than taken from a library: what we need is small but exact. It must
(a) not answer before the bytes are fsynced, (b) share one fsync among all writers that arrive
while a flush is running, since fsync latency would otherwise cap the write rate at one operation
per disk flush, (c) keep the event loop free while the disk is busy, (d) after a crash, cut off
a half-written last batch without ever silently dropping a record that was acknowledged, and (e)
keep working when its disk fills up. SQLite would give (a) and (d), but every commit blocks its
thread and sharing commits among coroutines is the very group-commit logic we would still have to
write; the asyncio file wrappers only move blocking calls to threads, with no record framing or
recovery. No maintained package combines these, and the whole thing is one append-only file, one
writer task and one I/O thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from proxy.store.journal.codec import (
    MAX_RECORD_BYTES,
    entry_from_obj,
    fit_reason,
    outcome_to_obj,
)
from proxy.store.journal.compaction import Compactor
from proxy.store.journal.errors import JournalError
from proxy.store.journal.files import LogFile, Seal, acquire_lock
from proxy.store.journal.index import Index
from proxy.store.journal.model import JournalEntry, OpStatus, Outcome
from proxy.store.journal.recovery import OnDamage, Recovered, recover
from proxy.store.journal.space import DiskSpace
from proxy.store.journal.writer import Writer

__all__ = ["Journal"]


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
        reserve_bytes: int,
        on_damage: OnDamage,
        lock_fd: int,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._dir = directory
        self._file = LogFile(directory, fsync=fsync)
        self._seal = Seal(directory, fsync=fsync)
        self._path = self._file.path
        self._fsync = fsync
        self._on_damage = on_damage
        self._lock_fd = lock_fd
        self._executor = executor
        self._space = DiskSpace(directory, reserve_bytes=reserve_bytes, journal=self._file.path)

        self._index = Index(max_outcomes)
        self._compactor = Compactor(
            self._file, self._index, self._space, compact_bytes=compact_bytes
        )
        self._writer = Writer(
            directory=directory,
            file=self._file,
            index=self._index,
            space=self._space,
            compactor=self._compactor,
            executor=executor,
        )
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

        self._recovered = Recovered()

    # ----------------------------------------------------------------------- opening

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        fsync: bool = True,
        max_outcomes: int = 10_000,
        compact_bytes: int = 4 * 1024 * 1024,
        reserve_bytes: int = 256 * 1024,
        on_damage: OnDamage | str = OnDamage.REFUSE,
    ) -> Journal:
        """Lock `directory`, recover the journal in it (creating both if missing).

        Raises JournalDamaged when acknowledged records do not read back and `on_damage` is
        "refuse"; with "quarantine" they are set aside and reported instead.
        """
        if max_outcomes < 0:
            raise ValueError("max_outcomes must be >= 0")
        if compact_bytes <= 0:
            raise ValueError("compact_bytes must be > 0")
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must be >= 0")
        policy = OnDamage(on_damage)
        directory = Path(directory)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-io")

        def open_sync() -> Journal:
            lock_fd = acquire_lock(directory)
            journal = cls(
                directory=directory,
                fsync=fsync,
                max_outcomes=max_outcomes,
                compact_bytes=compact_bytes,
                reserve_bytes=reserve_bytes,
                on_damage=policy,
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
        self._recovered = recover(
            directory=self._dir,
            file=self._file,
            seal=self._seal,
            index=self._index,
            space=self._space,
            compactor=self._compactor,
            on_damage=self._on_damage,
        )

    # ----------------------------------------------------------------------- writing

    async def append(
        self,
        *,
        op_id: str,
        kind: str,
        tenant: str,
        key: str,
        payload: dict[str, Any],
        trace: str | None = None,
        reopen: bool = False,
    ) -> JournalEntry:
        """Durably record an operation; returns once it is fsynced (when fsync is enabled).

        ``trace`` is the span context of the request it came from, when tracing is on. An op_id
        already pending, in flight or recently finished returns the existing entry and writes
        nothing; with ``reopen``, one recently finished is journaled again (its commit may have
        been lost with a primary that failed over). Raises JournalFull when the disk has no room
        for it (with its outcome), JournalError when the record did not reach the disk (the
        entry is then not pending), TypeError when the payload is not JSON-serialisable,
        ValueError for an empty op_id or an oversized record.
        """
        self._check_usable()
        if not op_id:
            raise ValueError("op_id must be a non-empty string")
        existing = self._index.pending.get(op_id)
        if existing is not None:
            return existing
        finished = self._index.finished.get(op_id)
        if finished is not None and not reopen:
            return finished[1]
        inflight = self._writer.inflight_appends.get(op_id)
        if inflight is not None:
            return await asyncio.shield(inflight)

        seq = self._index.next_seq
        record = {
            "seq": seq,
            "op_id": op_id,
            "kind": kind,
            "tenant": tenant,
            "key": key,
            "payload": payload,
            "created_at": time.time(),
        }
        if trace is not None:
            record["trace"] = trace
        body = orjson.dumps(record)
        if len(body) > MAX_RECORD_BYTES:
            raise ValueError(f"journal record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
        # Round-trip so the caller sees exactly what a restarted process would read back
        # (datetimes become strings, tuples lists), and holds no alias of its own dict.
        entry = entry_from_obj(orjson.loads(body))
        self._index.next_seq = seq + 1

        return await asyncio.shield(self._writer.append(entry, body))

    async def complete(self, op_id: str, status: OpStatus, reason: str | None = None) -> None:
        """Durably record that `op_id` left the journal as applied or rejected.

        Completing an op that is already finished is a no-op (the first outcome stands). A
        reason longer than 256 encoded bytes is cut. Raises KeyError for an op_id the journal
        does not hold, JournalError when the outcome did not reach the disk (the entry then stays
        pending).
        """
        self._check_usable()
        status = OpStatus(status)
        if status is OpStatus.PENDING:
            raise ValueError("an operation cannot complete as pending")
        inflight = self._writer.inflight_appends.get(op_id)
        if inflight is not None:
            await asyncio.shield(inflight)
        if op_id in self._index.finished:
            return
        completing = self._writer.inflight_completions.get(op_id)
        if completing is not None:
            await asyncio.shield(completing)
            return
        if op_id not in self._index.pending:
            raise KeyError(op_id)
        self._check_usable()  # close() may have begun while we waited above

        outcome = Outcome(op_id=op_id, status=status, reason=fit_reason(reason), at=time.time())
        body = orjson.dumps(outcome_to_obj(outcome))
        await asyncio.shield(self._writer.complete(outcome, body))

    async def compact(self) -> None:
        """Rewrite the file now with only the live state (it happens by itself past
        compact_bytes). Raises JournalError when the rewrite failed; the old file then stands."""
        self._check_usable()
        await asyncio.shield(self._writer.compact())

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise JournalError(f"journal {self._path} is closed")
        if self._writer.failed is not None:
            raise JournalError(str(self._writer.failed)) from self._writer.failed

    # ----------------------------------------------------------------------- reading

    def pending(self) -> list[JournalEntry]:
        """Durable entries without an outcome, in seq order."""
        return list(self._index.pending.values())

    def pending_for(self, tenant: str, key: str | None = None) -> list[JournalEntry]:
        """Pending entries of one tenant (and optionally one key), in seq order."""
        return self._index.pending_for(tenant, key)

    def get(self, op_id: str) -> JournalEntry | None:
        return self._index.pending.get(op_id)

    def outcome(self, op_id: str) -> Outcome | None:
        return self._index.outcome(op_id)

    def state(self, op_id: str) -> OpStatus | None:
        """PENDING while journaled, the outcome's status once finished, None when unknown."""
        return self._index.state(op_id)

    @property
    def depth(self) -> int:
        return len(self._index.pending)

    @property
    def size_bytes(self) -> int:
        return self._file.size

    @property
    def path(self) -> Path:
        return self._path

    @property
    def failed(self) -> bool:
        """True after an I/O error the journal could not undo; it then refuses writes."""
        return self._writer.failed is not None

    @property
    def full(self) -> bool:
        """True while the disk has no room for new entries (they get JournalFull)."""
        return self._space.full

    @property
    def writable(self) -> bool:
        """Whether a new entry can be taken now: open, not failed, disk not full."""
        return not (self._closing or self._closed or self.failed or self.full)

    @property
    def condition(self) -> str:
        """One word for probes: ok, disk-full, failed or closed."""
        if self._closing or self._closed:
            return "closed"
        if self.failed:
            return "failed"
        return "disk-full" if self.full else "ok"

    @property
    def quarantine_files(self) -> int:
        """Side files of damaged records in the directory (found at open or written by it)."""
        return len(self._recovered.side_files)

    def stats(self) -> dict[str, Any]:
        oldest = next(iter(self._index.pending.values()), None)
        return {
            "path": str(self._path),
            "depth": len(self._index.pending),
            "size_bytes": self._file.size,
            "appends": self._writer.appends,
            "completions": self._writer.completions,
            "oldest_pending_age_s": (
                max(0.0, time.time() - oldest.created_at) if oldest is not None else 0.0
            ),
            "torn_records_dropped": self._recovered.torn_records_dropped,
            "torn_bytes_dropped": self._recovered.torn_bytes_dropped,
            "outcomes_retained": len(self._index.finished),
            "next_seq": self._index.next_seq,
            "fsync": self._fsync,
            "fsyncs": self._file.fsyncs,
            "write_batches": self._writer.batches,
            "compactions": self._compactor.compactions,
            "compaction_failures": self._compactor.failures,
            "writable": self.writable,
            "failed": str(self._writer.failed) if self._writer.failed is not None else None,
            "disk": self._space.stats(self._index.reserved),
            "damage": {
                "on_damage": self._on_damage.value,
                "quarantined": list(self._recovered.quarantined),
                "side_files": list(self._recovered.side_files),
            },
        }

    # ----------------------------------------------------------------------- closing

    async def close(self) -> None:
        """Drain queued writes, fsync, seal, close the file and release the directory lock."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        elif self._close_task.done():
            return
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        if self._writer.flush_task is not None:
            # wait() rather than await: the writer's own failure was already reported to callers.
            await asyncio.wait([self._writer.flush_task])

        def final_sync() -> None:
            try:
                if self._fsync and self._writer.failed is None and self._file.fd >= 0:
                    os.fsync(self._file.fd)
                    self._seal.close_at(self._file.size)
            finally:
                self._release_files()

        try:
            await self._writer.io(final_sync)
        except OSError as exc:
            raise JournalError(f"journal {self._path}: final fsync failed: {exc}") from exc
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def _release_files(self) -> None:
        self._space.reserve.close()
        self._file.close()
        self._seal.close()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the lock descriptor releases the flock
        self._lock_fd = -1

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
