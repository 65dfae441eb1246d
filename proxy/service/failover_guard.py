"""No acknowledged write lost when an asynchronously replicated primary fails over.

With asynchronous replication (PostgreSQL's default, and Patroni's) a commit is acknowledged
before any standby has it. If the primary dies in that moment and a standby is promoted, the
commit is gone, although this sidecar answered 201 for it. The guard closes that window for the
writes this sidecar committed (directly, or by replaying its journal):

- each one is kept in memory, with what the journal would need to apply it again;
- every `check_interval_ms` the primary's WAL position is read (`proxy.store.wal_position`);
  every write kept before the read began is at or below that position, and is released once
  every standby has flushed past it (a promoted standby replays all the WAL it flushed);
- a new timeline is a promotion: the writes not yet released are handed back, to be journaled
  again under their own op ids. The replay applies them through the operations ledger, so one
  the new primary holds already is not applied twice.

When standbys' positions are not visible (the role is not in ``pg_monitor``), a write is kept
for `hold_ms` instead. With no standby ever seen there is nothing to fail over to, and a write
is released at the first read after it. At most `max_writes` are kept, the oldest released first
(counted as `dropped`).

Not covered: this sidecar and the primary lost together (nothing is left to apply it again),
and writes other clients made. Written by hand: it is the registry's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from proxy.resilience import SYSTEM_CLOCK, Clock
from proxy.store.wal_position import WalPosition

log = structlog.get_logger(__name__)

# With no write kept, the position is read this rarely (seconds).
IDLE_READ_S = 30.0


@dataclass(slots=True)
class Committed:
    """A write PostgreSQL acknowledged, as the journal would take it to apply it again."""

    op_id: str
    """The journal id (tenant and op id)."""
    kind: str
    tenant: str
    key: str
    record: bytes
    """The journal's payload for it, encoded (`Committed.of`). A write is kept about a check
    interval, long enough for the request's tree of dicts and lists to outlive the young
    collections and be freed from a cold cache: one bytes object costs the collector nothing
    and is freed in one step. It is decoded only for a write applied again."""
    seq: int = 0
    kept_at: float = 0.0
    lsn: int | None = None
    """A WAL position at or past its commit, once a read has begun after it."""

    @classmethod
    def of(cls, op_id: str, kind: str, tenant: str, key: str, payload: dict[str, Any]) -> Committed:
        return cls(op_id, kind, tenant, key, orjson.dumps(payload))

    @property
    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.record)
        return decoded


@dataclass
class GuardStats:
    kept: int = 0
    released: int = 0
    held_out: int = 0
    """Released by `hold_ms` or `max_writes`, not by a standby's position."""
    reapplied: int = 0
    promotions: int = 0
    timeline: int | None = None
    standbys: int = 0
    positions_visible: bool = False
    last_error: str | None = None


class FailoverGuard:
    def __init__(
        self,
        *,
        hold_ms: int = 10_000,
        max_writes: int = 50_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.hold_s = hold_ms / 1000
        self.max_writes = max_writes
        self.clock = clock
        self.stats = GuardStats()
        self._covered: deque[Committed] = deque()  # a position at or past them is known
        self._uncovered: deque[Committed] = deque()  # no read has begun after them yet
        self._seq = 0
        self._timeline: int | None = None
        self._lsn: int | None = None
        self._seen_standbys = False

    def __len__(self) -> int:
        return len(self._covered) + len(self._uncovered)

    def committed(self, write: Committed) -> None:
        if self.max_writes == 0:
            return
        self._seq += 1
        write.seq = self._seq
        write.kept_at = self.clock.monotonic()
        self._uncovered.append(write)
        self.stats.kept += 1
        while len(self) > self.max_writes:
            (self._covered or self._uncovered).popleft()
            self.stats.held_out += 1

    def read_begins(self) -> int:
        """Call just before reading the position; pass what it returns to `observe`."""
        return self._seq

    def observe(self, position: WalPosition, begun_after: int) -> list[Committed]:
        """Take in a position whose read began once write `begun_after` was kept; returns the
        writes to apply again when the primary is a new one (oldest first), else none."""
        if position.in_recovery or position.timeline is None or position.lsn is None:
            return []  # a standby answered: nothing to learn until the primary is found
        stats = self.stats
        stats.standbys = position.standbys
        stats.positions_visible = position.positions_visible
        moved = self._timeline is not None and (
            position.timeline > self._timeline
            # Same timeline, yet behind where it was: another cluster, or one restored.
            or (
                position.timeline == self._timeline
                and self._lsn is not None
                and position.lsn < self._lsn
            )
        )
        self._timeline, self._lsn = position.timeline, position.lsn
        stats.timeline = position.timeline
        if moved:
            # Every write not yet released, those after the read began too: whichever of them
            # the new primary lacks is applied again, the others are found in its ledger.
            again = [*self._covered, *self._uncovered]
            self._covered.clear()
            self._uncovered.clear()
            stats.promotions += 1
            stats.reapplied += len(again)
            return again
        while self._uncovered and self._uncovered[0].seq <= begun_after:
            w = self._uncovered.popleft()
            w.lsn = position.lsn
            self._covered.append(w)
        if position.standbys:
            self._seen_standbys = True
        self._release(position)
        return []

    def _release(self, position: WalPosition) -> None:
        covered = self._covered
        now = self.clock.monotonic()
        flushed = position.flushed
        while covered:
            w = covered[0]
            assert w.lsn is not None
            if flushed is not None and w.lsn <= flushed:
                self.stats.released += 1
            elif not self._seen_standbys:
                self.stats.released += 1  # no standby to fail over to
            elif flushed is None and now - w.kept_at >= self.hold_s:
                self.stats.held_out += 1
            else:
                break
            covered.popleft()

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "enabled": True,
            "unconfirmed": len(self),
            "timeline": s.timeline,
            "standbys": s.standbys,
            "positions_visible": s.positions_visible,
            "released": s.released,
            "released_unconfirmed": s.held_out,
            "promotions": s.promotions,
            "reapplied": s.reapplied,
            "last_error": s.last_error,
        }

    async def watch(
        self,
        *,
        read: Callable[[], Awaitable[WalPosition]],
        reapply: Callable[[list[Committed]], Awaitable[None]],
        interval_s: float,
        wake: asyncio.Event,
        idle_s: float = IDLE_READ_S,
    ) -> None:
        """Read the position every `interval_s` (+/- 20%), or at once when `wake` is set
        (the breaker closed: the primary may be a new one), until cancelled. With no write
        kept, only every `idle_s`: there is nothing to protect, and a fleet of idle sidecars
        should not cost PostgreSQL a query per second each. A promotion missed meanwhile shows
        at the next read after a write, which then goes back to the journal needlessly but
        harmlessly (the ledger has it)."""
        # The first read at once, and soon again until one succeeds: a promotion is only seen
        # as one once the timeline before it is known.
        pause = 0.0
        last_read = -math.inf
        while True:
            if pause:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await wake.wait()
            wake.clear()
            known = self._timeline is not None
            pause = interval_s * random.uniform(0.8, 1.2) if known else min(interval_s, 0.2)
            now = self.clock.monotonic()
            if known and not len(self) and now - last_read < idle_s:
                continue
            last_read = now
            begun_after = self.read_begins()
            try:
                position = await read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the primary may be away; the next round tries again
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                continue
            self.stats.last_error = None
            again = self.observe(position, begun_after)
            if again:
                log.warning(
                    "new primary: writes it may lack applied again through the ledger",
                    timeline=position.timeline,
                    writes=len(again),
                )
                await reapply(again)
