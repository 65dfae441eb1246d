"""CPU time of the processes under test, and CPU affinity for the profiler.

The machine is shared, so wall time says little; the CPU seconds a server spends per request,
read from the kernel per process (PostgreSQL: the postmaster and its backends), say more.
psutil is imported inside the functions: the load generator processes never need it.
"""

from __future__ import annotations

import contextlib
import os


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (PostgreSQL: the postmaster and its backends)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds of each process."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts whole)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` (affinity is per thread on Linux)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
