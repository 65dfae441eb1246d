"""Disk space of the write journal: whether the disk can take a new entry, and the reserve, a
file of preallocated blocks held back for the journal's own needs (outcome records,
compaction), so that a full disk refuses new entries while the entries already accepted can
still be completed.

`journal.reserve` is kept as large as `reserve_bytes` plus the most that the outcomes of all
pending entries can take (an outcome is bounded: `codec.outcome_bound`, about 0.4 KiB). An entry
is taken only if the reserve can grow to cover its outcome and its own bytes can be written;
otherwise it is refused with JournalFull, nothing of it stays on disk, and the journal reports
itself full. Outcome records and compaction take their room from the reserve when the disk has
none, so every entry already accepted can be completed; when the journal is full, compaction
keeps no finished operations, which shrinks the file as the entries drain, and the journal takes
entries again once the reserve is whole and the disk has room.

Everything here but `DiskSpace.full` and its figures runs on the journal's I/O thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import Any, Final

import structlog

from proxy.store.journal.errors import JournalFull

_log = structlog.get_logger(__name__)

RESERVE_FILE: Final = "journal.reserve"

_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# fallocate(2) is missing on some filesystems; writing zeros allocates the blocks just as well.
_NO_FALLOCATE: Final = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
_ZEROS: Final = bytes(64 * 1024)

# The reserve grows in steps of up to this much (a quarter of `reserve_bytes` if less), so most
# batches need no allocation call.
_RESERVE_CHUNK_MAX: Final = 64 * 1024
# After a full disk, entries are taken again once the reserve is whole and this many blocks of
# the disk are free.
_FREE_BLOCKS_TO_RESUME: Final = 4
# Free space is sampled at most this often (seconds) for stats().
_FREE_SAMPLE_S: Final = 1.0


def is_space_error(exc: BaseException) -> bool:
    """The disk (or the quota) has no room: not an I/O fault, and it passes once space is freed."""
    return isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class Reserve:
    """A file whose blocks are allocated but hold nothing: shrinking it hands the blocks to the
    journal when the rest of the disk is full. It is kept across restarts, so a sidecar that
    restarts on a full disk still has its headroom."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.block = 4096
        self._fd = -1

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(self._fd)
        self.size = st.st_size
        self.block = max(512, st.st_blksize)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def ensure(self, target: int, chunk: int) -> None:
        """Hold at least `target` bytes, rounded up to `chunk` when the disk allows. Raises
        OSError (ENOSPC) when even `target` cannot be had; the size held then does not change."""
        if not self.is_open:
            self.open()  # it could not be created at start (no inode, no room): try again
        if self.size >= target:
            return
        rounded = round_up(target, chunk)
        try:
            self._allocate(rounded)
        except OSError as exc:
            if not is_space_error(exc) or rounded == target:
                raise
            self._allocate(target)

    def shrink_to(self, size: int) -> None:
        """Give back the blocks beyond `size` bytes."""
        size = max(0, size)
        if self.is_open and size < self.size:
            os.ftruncate(self._fd, size)
            self.size = size

    def _allocate(self, size: int) -> None:
        try:
            os.posix_fallocate(self._fd, 0, size)
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:
                # A partial allocation must not keep blocks the caller believes are still free.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
                raise
            self._write_zeros(size)
        self.size = size

    def _write_zeros(self, size: int) -> None:
        offset = self.size
        try:
            while offset < size:
                n = os.pwrite(self._fd, _ZEROS[: min(len(_ZEROS), size - offset)], offset)
                if n <= 0:
                    raise OSError(errno.EIO, "short write to the journal reserve")
                offset += n
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise


class DiskSpace:
    """Whether the journal takes new entries (`full`), and the reserve sized for the outcomes of
    those it took. `reserved` arguments are the room the outcomes of the pending entries need
    (the index's sum of `outcome_bound`); `depth` is how many entries are pending."""

    def __init__(self, directory: Path, *, reserve_bytes: int, journal: Path) -> None:
        self.directory = directory
        self.journal = journal  # named in the log lines
        self.base = reserve_bytes
        self.reserve = Reserve(directory / RESERVE_FILE)
        self.chunk = max(4096, min(_RESERVE_CHUNK_MAX, reserve_bytes // 4))
        self.full_since: float | None = None
        self.error: str | None = None
        self.free: int | None = None
        self._free_sampled = 0.0
        self.refused = 0

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def open_reserve(self) -> None:
        try:
            self.reserve.open()
        except OSError as exc:
            # Entries are refused until it can be made (see Reserve.ensure); outcomes go on.
            _log.warning("journal_reserve_unavailable", path=str(self.reserve.path), error=str(exc))

    def set_full(self, full: bool, depth: int) -> None:
        if full and self.full_since is None:
            self.full_since = time.time()
            _log.error(
                "journal_disk_full",
                path=str(self.journal),
                depth=depth,
                reserve_bytes=self.reserve.size,
                error=self.error,
            )
        elif not full and self.full_since is not None:
            _log.info(
                "journal_disk_ok",
                path=str(self.journal),
                full_for_s=round(time.time() - self.full_since, 3),
                refused=self.refused,
            )
            self.full_since = None

    def full_error(self, depth: int) -> JournalFull:
        return JournalFull(
            f"journal disk of {self.directory} is full: new entries are refused while its "
            f"{self.reserve.size} reserved bytes are kept for the outcomes of the {depth} "
            f"pending entries ({self.error})"
        )

    def note_error(self, exc: OSError) -> None:
        self.error = exc.strerror or str(exc)
        self.sample_free(force=True)

    def sample_free(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._free_sampled >= _FREE_SAMPLE_S:
            self._free_sampled = now
            with contextlib.suppress(OSError):
                self.free = free_bytes(self.directory)

    def hold(self, reserved: int, bounds: list[int]) -> int:
        """Grow the reserve to also cover the outcomes of new entries (the room each needs, in
        order); returns how many of them, from the first, it covers now."""
        try:
            self.reserve.ensure(self.base + reserved + sum(bounds), self.chunk)
            return len(bounds)
        except OSError as exc:
            if not is_space_error(exc):
                raise
            self.note_error(exc)
        # Take the entries (in order) whose outcomes still find room, refuse the rest.
        held = self.base + reserved
        for taken, bound in enumerate(bounds):
            try:
                self.reserve.ensure(held + bound, 1)
            except OSError as again:
                if not is_space_error(again):
                    raise
                return taken
            held += bound
        return len(bounds)

    def lend(self, need: int) -> None:
        """Give a write of `need` bytes the reserve's blocks (and a little more)."""
        self.reserve.shrink_to(self.reserve.size - need - 2 * self.reserve.block)

    def lend_all(self) -> None:
        self.reserve.shrink_to(0)

    def trim(self, reserved: int) -> None:
        """Give back what the reserve holds beyond its need (after a drain), in whole chunks."""
        target = self.base + reserved
        if self.reserve.size > target + 2 * self.chunk:
            with contextlib.suppress(OSError):
                self.reserve.shrink_to(round_up(target, self.chunk))

    def restore(self, reserved: int, depth: int) -> bool:
        """Grow the reserve back to its need; False (and full) when the disk has no room. Also
        clears `full` when the reserve is whole and the disk has room again."""
        try:
            self.reserve.ensure(self.base + reserved, self.chunk)
        except OSError as exc:
            if not is_space_error(exc):
                _log.warning("journal_reserve_failed", path=str(self.journal), error=str(exc))
                return False
            self.note_error(exc)
            self.set_full(True, depth)
            return False
        self.trim(reserved)
        self.sample_free(force=True)
        resume = max(_FREE_BLOCKS_TO_RESUME * self.reserve.block, self.chunk)
        if self.free is None or self.free >= resume:
            self.set_full(False, depth)
        return True

    def stats(self, reserved: int) -> dict[str, Any]:
        return {
            "full": self.full,
            "full_since": self.full_since,
            "entries_refused": self.refused,
            "free_bytes": self.free,
            "reserve_bytes": self.reserve.size,
            "reserve_needed_bytes": self.base + reserved,
            "last_error": self.error,
        }
