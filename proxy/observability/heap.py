"""The C heap under the interpreter: what glibc's malloc keeps, and giving its free pages back.

Written by hand because no maintained library wraps these calls: they are `mallopt`,
`malloc_trim` and `mallinfo2` of the C library, reached through ctypes. Where the C library is not
glibc (musl in an Alpine image, macOS) every function here does nothing and says so.

Why a long-lived sidecar needs it. In a soak with an outage every minute, RSS rose in steps
after outages and journal compactions. glibc's own figures (`malloc_stats`) showed part of each
step as free memory it kept (0.5 to 0.9 MiB at a time, with what it had handed out flat), blocks
of 1.9 to 2.9 MiB allocated and freed, and one `malloc_trim` gave back 2.1 MiB of RSS. Two glibc
defaults are behind it:

- its mmap threshold follows the largest block freed (up to 32 MiB). After the first block of a
  few MiB (a journal compaction, a replica snapshot, a replay batch), blocks that large come from
  the heap instead of a mapping of their own, and a few long-lived small blocks placed beside them
  keep those pages resident once they are freed;
- free pages inside the heap, below its top, go back to the system only through `malloc_trim`.

So `tune` fixes the thresholds at start (fixing them also stops their adjustment) and the server
calls `trim` periodically, off the event loop. A trim of a heap of the sidecar's size (tens of
MiB) takes about half a millisecond on a worker thread.

Python's own small-object allocator (pymalloc) takes its arenas straight from mmap and returns an
arena when it is empty; nothing here touches it. `stats` reports both, so that an operator can
tell live data from memory the allocator keeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Final

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

# glibc's own initial values: fixed rather than left to grow with the largest block freed.
MMAP_THRESHOLD: Final = 128 * 1024
TRIM_THRESHOLD: Final = 128 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heaps (not mmapped blocks)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped blocks
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes handed out
            "fordblks",  # bytes free, kept in the heaps
            "keepcost",
        )
    ]


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.malloc_trim  # noqa: B018
        libc.mallinfo2  # noqa: B018 - glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallinfo2.restype = _MallInfo2
    return libc


def tune(*, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds; False where that is not possible."""
    libc = _glibc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    return bool(ok_mmap and ok_trim)


def trim() -> bool:
    """Give the heap's free pages back to the system; True when some were."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0) == 1)


def stats() -> dict[str, int | bool]:
    """Bytes glibc has handed out and keeps free, and the blocks pymalloc has handed out."""
    doc: dict[str, int | bool] = {"python_blocks": sys.getallocatedblocks()}
    libc = _glibc()
    if libc is None:
        doc["glibc"] = False
        return doc
    info = libc.mallinfo2()
    doc.update(
        glibc=True,
        c_in_use_bytes=info.uordblks + info.hblkhd,
        c_free_bytes=info.fordblks,
    )
    return doc
