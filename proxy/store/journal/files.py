"""The journal's files on disk and the system calls that make them durable. Everything here runs
on the journal's I/O thread (or before the journal is visible to anyone).

The directory holds `journal.log` (the records, see codec.py); `journal.lock`, the flock that
keeps a second process out (its content is the owner's pid, a hint only); `journal.seal`, which
records the journal's size at a clean close and is set back to "in use" before the journal
changes again; `journal.reserve`, preallocated blocks held back for the journal (space.py); and
after a quarantine `journal.log.damaged-<UTC time>` with the damaged bytes, one region after
another, described (offset, length, reason of each region) by
`journal.log.damaged-<UTC time>.json`. A rewrite goes through `journal.log.compact`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Any, Final

import structlog

from proxy.store.journal.codec import decode_seal, encode_commit, encode_seal
from proxy.store.journal.errors import JournalError
from proxy.store.journal.space import is_space_error

_log = structlog.get_logger(__name__)

JOURNAL_FILE: Final = "journal.log"
LOCK_FILE: Final = "journal.lock"
SEAL_FILE: Final = "journal.seal"
DAMAGED_PREFIX: Final = JOURNAL_FILE + ".damaged-"
COMPACT_SUFFIX: Final = ".compact"


class Unrecoverable(Exception):
    """A failed write could not be undone: the file's end is unknown."""

    def __init__(self, cause: OSError, error: OSError) -> None:
        super().__init__(f"{cause}; rolling it back failed: {error}")
        self.cause = cause
        self.error = error


def write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write to journal")
        done += n


def read_all(fd: int) -> bytes:
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


def fsync_dir(directory: Path) -> None:
    # A rename or a new file is only durable once the directory entry itself is flushed.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data, 0)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def side_files(directory: Path) -> list[dict[str, Any]]:
    """Damaged bytes set aside by earlier quarantines that are still in the directory."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(directory):
            if item.name.startswith(DAMAGED_PREFIX) and not item.name.endswith(".json"):
                with contextlib.suppress(OSError):
                    found.append({"file": item.name, "bytes": item.stat().st_size})
    return sorted(found, key=lambda side: str(side["file"]))


def acquire_lock(directory: Path) -> int:
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


def read_seal(path: Path) -> int | None:
    try:
        return decode_seal(path.read_bytes())
    except FileNotFoundError:
        return None


class LogFile:
    """`journal.log`: appended one batch at a time, each batch whole or not at all, and replaced
    whole by a rewrite. `size` is where the next batch goes; the writer moves it on the loop once
    a batch is durable."""

    def __init__(self, directory: Path, *, fsync: bool) -> None:
        self.path = directory / JOURNAL_FILE
        self.compact_path = directory / (JOURNAL_FILE + COMPACT_SUFFIX)
        self.fsync = fsync
        self.fd = -1
        self.size = 0
        self.fsyncs = 0

    def open(self) -> bytes:
        """Open the file (creating it) and return all of it."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return read_all(self.fd)

    def append(self, parts: list[bytes], start: int) -> int:
        """Write the records and their commit record at `start`, fsync; return the new end. On
        failure the file is cut back to `start` (raises Unrecoverable if that fails too)."""
        data = b"".join(parts)
        blob = data + encode_commit(start, len(parts), data)
        try:
            write_all(self.fd, blob, start)
            if self.fsync:
                os.fsync(self.fd)
                self.fsyncs += 1
        except OSError as exc:
            try:
                os.ftruncate(self.fd, start)
                if self.fsync:
                    os.fsync(self.fd)
            except OSError as rollback:
                raise Unrecoverable(exc, rollback) from exc
            raise
        return start + len(blob)

    def cut(self, end: int) -> None:
        """Drop what follows `end` (a torn tail)."""
        os.ftruncate(self.fd, end)
        if self.fsync:
            os.fsync(self.fd)

    def replace(self, data: bytes) -> int:
        """Make `data` the file: written to the side file, fsynced, renamed over this one. Returns
        the new file's descriptor; this one keeps the old descriptor until `install`."""
        fd = os.open(self.compact_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data, 0)
            if self.fsync:
                os.fsync(fd)
                self.fsyncs += 1
            os.replace(self.compact_path, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.compact_path.unlink()
            raise
        return fd

    def install(self, fd: int, size: int) -> None:
        old_fd, self.fd, self.size = self.fd, fd, size
        with contextlib.suppress(OSError):
            os.close(old_fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1


class Seal:
    """`journal.seal`: the size of a cleanly closed journal, so that the next open knows every
    byte of it was acknowledged and none may be missing; "in use" while the journal is open."""

    def __init__(self, directory: Path, *, fsync: bool) -> None:
        self.path = directory / SEAL_FILE
        self.fsync = fsync
        self.fd = -1

    def read(self) -> int | None:
        return read_seal(self.path)

    def mark_in_use(self) -> None:
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if existed or not is_space_error(exc):
                raise
            _log.warning("journal_seal_unavailable", path=str(self.path), error=str(exc))
            return
        try:
            write_all(fd, encode_seal(None), 0)
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            if existed or not is_space_error(exc):
                raise
            # A fresh seal on a full disk: without one, the next open applies the crash rules.
            with contextlib.suppress(OSError):
                self.path.unlink()
            _log.warning("journal_seal_unavailable", path=str(self.path), error=str(exc))
            return
        self.fd = fd

    def close_at(self, size: int) -> None:
        """Record a clean close at `size` bytes (when the seal could be made at open)."""
        if self.fd < 0:
            return
        try:
            write_all(self.fd, encode_seal(size), 0)
            os.fsync(self.fd)
        except OSError as exc:
            _log.warning("journal_seal_failed", path=str(self.path), error=str(exc))

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
