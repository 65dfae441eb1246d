"""Disk headroom of the write journal: a file of preallocated blocks held back for the journal's
own needs (outcome records, compaction), so that a full disk refuses new entries while the
entries already accepted can still be completed. Everything here runs on the journal's I/O
thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Final

RESERVE_FILE: Final = "journal.reserve"

_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# fallocate(2) is missing on some filesystems; writing zeros allocates the blocks just as well.
_NO_FALLOCATE: Final = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
_ZEROS: Final = bytes(64 * 1024)


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
