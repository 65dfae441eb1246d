"""How long a thread has waited for a core: the kernel's run-queue delay, from schedstat.

A late event loop has one of two causes, and they call for different fixes. Either the loop ran
something long (a collection, a reload, a large answer), or it was ready and the kernel gave
its core to someone else: a neighbour on a busy node, or the pod's CPU limit (CFS throttling).
Linux keeps, per thread, the time it spent runnable but not running
(`/proc/thread-self/schedstat`, second field, nanoseconds), so the loop-lag sampler can tell
how much of each late timer was waiting for a core.

Written by hand: it is one read of one file; psutil gives CPU times but not the run-queue
delay. Read with `pread` on a descriptor opened once, about a microsecond, since the sampler
reads it every 25 ms. Where the file does not exist (not Linux, schedstat off) `open` gives
None and the sampler goes without.
"""

from __future__ import annotations

import os

__all__ = ["RunQueueWait"]

_PATH = "/proc/thread-self/schedstat"


class RunQueueWait:
    """Seconds the thread that opened it has waited for a core, cumulative; call to read."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls) -> RunQueueWait | None:
        """For the calling thread (the event loop's, when called from it); None if unknown."""
        try:
            fd = os.open(_PATH, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        wait = cls(fd)
        if wait() is None:
            wait.close()
            return None
        return wait

    def __call__(self) -> float | None:
        try:
            fields = os.pread(self._fd, 128, 0).split()
            return int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
