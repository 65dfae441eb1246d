"""The database brought to the same state before each target of a write step.

A write step measures its targets one after another on one PostgreSQL. Without this, each
target inherits what the one before it left: tens of thousands of dead row versions in
``agents``, index entries still to clean, tables whose autovacuum threshold was crossed a
moment ago. Cleaning that up (autovacuum, or the next writes themselves) falls inside the next
target's minutes, on the same two cores, and the target measured last (the sidecar) pays for
the others: registrations through the sidecar went from 2,021 to 2,478 req/s, and PostgreSQL's
CPU per registration from 356 to 289 us, when every target started from the state this leaves
(`docs/performance.md`).

So before each target's run of a write workload, the written tables are vacuumed and analysed,
a checkpoint is taken (so every target starts with the same share of full-page writes ahead of
it), and any autovacuum worker still busy is waited for.

Written here: it is three statements and a poll; no library does the choosing of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

# Every table a write of the registry touches, the sidecar's and the baselines' alike.
WRITTEN_TABLES = ("agents", "performance_events", "operations", "audit_log")
AUTOVACUUM_BUSY = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"


async def quiesce(dsn: str, *, wait_s: float = 30.0, poll_s: float = 0.1) -> dict[str, Any]:
    """Vacuum and analyse the written tables, checkpoint, and wait for autovacuum to be idle
    (up to `wait_s`). What it found and how long it took, for the result file."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(WRITTEN_TABLES)}")
        await conn.execute("CHECKPOINT")
        deadline = time.monotonic() + wait_s
        busy = await conn.fetchval(AUTOVACUUM_BUSY)
        while busy and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            busy = await conn.fetchval(AUTOVACUUM_BUSY)
    finally:
        await conn.close()
    return {"seconds": round(time.monotonic() - started, 3), "autovacuum_still_busy": busy}
