"""The sidecar's footprint over a soak: RSS, descriptors and threads, with its own status.

A leak shows as growth after the warm-up, so the footprint is sampled on a fixed period through
the run and again when it is idle at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from bench.reporting import logger
from bench.servers import Server
from bench.status import status_of

_MIB = 1024 * 1024
_log = logger("soak")


def folder_bytes(path: Path | None) -> int | None:
    """Bytes of the files in a folder, as the disk holds them now; None when it is not there."""
    if path is None or not path.is_dir():
        return None
    total = 0
    for child in path.iterdir():
        try:
            total += child.stat().st_size
        except FileNotFoundError:
            continue  # compaction replaced it meanwhile
    return total


async def sample(
    server: Server,
    token: str,
    proc: Any,
    start: float,
    journal_dir: Path | None = None,
    admin: str | None = None,
) -> dict[str, Any]:
    mem = proc.memory_info()
    row: dict[str, Any] = {
        "t_s": round(time.monotonic() - start, 1),
        "rss_mib": round(mem.rss / _MIB, 2),
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "cpu_percent": proc.cpu_percent(None),
        # From the disk, not the status document: a tenant's token does not see the file size.
        "journal_disk_bytes": folder_bytes(journal_dir),
    }
    try:
        doc = await status_of(server, token)
    except (OSError, RuntimeError) as exc:
        row["status_error"] = str(exc)[:200]
        return row
    row.update(
        breaker=doc["breaker"]["state"],
        journal_depth=doc["journal"]["depth"],
        journal_bytes=doc["journal"].get("size_bytes"),
        journal_outcomes_retained=doc["journal"].get("outcomes_retained"),
        replica_agents=doc["replica"]["agents"],
        replica_pending=doc["replica"].get("pending_writes"),
        replica_age_s=doc["replica"]["age_seconds"],
    )
    if admin is not None:
        # Only an admin sees the heap: live C memory, what glibc keeps free, Python's blocks.
        with contextlib.suppress(OSError, RuntimeError, KeyError):
            heap = (await status_of(server, admin))["memory"]
            row["python_blocks"] = heap["python_blocks"]
            if heap.get("glibc"):
                row["c_in_use_mib"] = round(heap["c_in_use_bytes"] / _MIB, 2)
                row["c_free_mib"] = round(heap["c_free_bytes"] / _MIB, 2)
    return row


async def sampler(
    server: Server,
    token: str,
    proc: Any,
    start: float,
    every_s: float,
    until: float,
    journal_dir: Path | None = None,
    admin: str | None = None,
) -> list[dict[str, Any]]:
    rows = []
    next_at = time.monotonic()
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        row = await sample(server, token, proc, start, journal_dir, admin)
        rows.append(row)
        if len(rows) % max(1, round(30 / every_s)) == 0:
            _log(
                f"t={row['t_s']}s rss={row['rss_mib']}MiB fds={row['fds']} "
                f"breaker={row.get('breaker')} journal={row.get('journal_depth')}"
            )
        next_at += every_s
    return rows


def slope_per_hour(rows: list[dict[str, Any]], key: str) -> float | None:
    """The least-squares slope of `key` over time, per hour: a leak is a trend, which two end
    points can miss or invent."""
    points = [(r["t_s"], r[key]) for r in rows if r.get(key) is not None]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return round(float(cov / var_t) * 3600, 4)
