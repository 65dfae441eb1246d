"""Where the primary's write-ahead log stands, and how far its standbys have taken it.

Read by the failover guard (`proxy.service.failover_guard`) every second or so: a commit that
no standby holds yet can vanish if the primary fails over before it replicates (asynchronous
replication), and a new timeline is how a promoted standby shows that it took over.

No privilege beyond connecting is needed for the timeline and the position: the timeline is the
first part of the name of the WAL file being written. A standby's position in
``pg_stat_replication`` is shown only to superusers and members of ``pg_read_all_stats``
(``pg_monitor``); without it `flushed` is None and the guard falls back to holding commits for a
while (docs/fleet.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Physical standbys only: a logical subscriber is never promoted, and a base backup in progress
# (state 'backup') is not a standby yet. A walsender without a slot is physical.
_POSITION = """
SELECT
  pg_is_in_recovery() AS in_recovery,
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint END AS lsn,
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  END AS timeline,
  count(r.pid) AS standbys,
  count(r.flush_lsn) AS visible,
  (min(r.flush_lsn) - '0/0'::pg_lsn)::bigint AS flushed
FROM (
  SELECT r.pid, r.flush_lsn
  FROM pg_stat_replication r
  LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
  WHERE r.state <> 'backup' AND coalesce(s.slot_type, 'physical') = 'physical'
) r
"""


@dataclass(frozen=True, slots=True)
class WalPosition:
    in_recovery: bool
    """The server is a standby: writes cannot have reached it, there is nothing to read."""
    timeline: int | None
    lsn: int | None
    """Bytes into the WAL: every transaction committed before the read is at or below it."""
    standbys: int
    flushed: int | None
    """The least WAL position any standby has flushed (a standby replays all of it before it
    is promoted); None when there is no standby or their positions are not visible."""

    @property
    def positions_visible(self) -> bool:
        return self.standbys > 0 and self.flushed is not None


async def read_wal_position(conn: asyncpg.Connection, timeout: float) -> WalPosition:
    row = await conn.fetchrow(_POSITION, timeout=timeout)
    assert row is not None
    visible = row["visible"] == row["standbys"]
    return WalPosition(
        in_recovery=row["in_recovery"],
        timeline=row["timeline"],
        lsn=row["lsn"],
        standbys=row["standbys"],
        flushed=row["flushed"] if visible else None,
    )
