"""Connections kept out of asyncpg's pool between calls, for the next call to take at once.

An acquire and a release through asyncpg's pool cost about 35 us of CPU on this machine's
request path, more than a replica read's whole answer: a future and a proxy object per acquire,
a task per release (the pool shields it), a timeout scope around the reset, and an inactivity
timer cancelled and armed again. A call needs none of it when a connection that ended its
previous call cleanly is at hand. The lane keeps such connections, still checked out of the
pool, on a stack: a call takes the one put back last (the most recently used, so that the others
go idle when traffic falls), and gives it back to the lane if its call ended cleanly.

What the pool would have done on release still happens:

- a connection whose call failed, that is closed or that is inside a transaction is not kept:
  the caller releases it to the pool, whose reset and terminate run as before;
- `expire` (after `Pool.expire_connections`) empties the lane into the pool, which closes those
  connections for their old generation (in the background: a close is a round trip, and the
  caller is a request that met a moved primary); one taken before and finished after is not
  kept either;
- a connection left in the lane for `idle_s` goes back to the pool, whose inactivity timer then
  closes it like any idle connection beyond the pool's minimum (`Database` gives each half of
  its idle timeout);
- a connection that dies in the lane (the server ended it) is dropped when next seen: asyncpg
  already gave it back to the pool when its socket closed;
- `drain` empties the lane before the pool closes (which waits for every connection out).

Written by hand: asyncpg has no cheaper path for a connection reused at once, and what may be
reused without a reset is the sidecar's rule (`proxy.store.db._release` resets nothing else).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg


class Lane:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        idle_s: float,
        release_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._idle_s = idle_s
        self._release_timeout = release_timeout_s
        self._clock = clock
        # (when it was put back, connection), oldest first.
        self._held: list[tuple[float, asyncpg.Connection]] = []
        self.epoch = 0
        """Bumped by `expire`: a connection taken under an older epoch is not kept."""
        self._sweep: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._held)

    def take(self) -> asyncpg.Connection | None:
        """The connection put back last that is still open, or None."""
        held = self._held
        while held:
            _, conn = held.pop()
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:
                continue  # its socket closed and asyncpg took it back already
            conn.terminate()  # closed without the pool noticing: this returns it there
        return None

    def keep(self, conn: asyncpg.Connection, epoch: int) -> bool:
        """Keep ``conn``, whose call ended cleanly, for the next call; False if it must be
        released to the pool instead."""
        try:
            if epoch != self.epoch or conn.is_closed() or conn.is_in_transaction():
                return False
        except asyncpg.InterfaceError:
            return False  # its socket closed as the call ended: asyncpg took it back already
        self._held.append((self._clock(), conn))
        if self._sweep is None and self._idle_s > 0:  # 0: idle connections never close
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)
        return True

    def _swept(self) -> None:
        self._sweep = None
        cutoff = self._clock() - self._idle_s
        held = self._held
        stale = 0
        while stale < len(held) and held[stale][0] <= cutoff:
            stale += 1
        if stale:
            idle = [conn for _, conn in held[:stale]]
            del held[:stale]
            self._release_soon(idle)
        if held:
            wait = held[0][0] + self._idle_s - self._clock()
            self._sweep = asyncio.get_running_loop().call_later(max(wait, 0.0), self._swept)

    def _release_soon(self, conns: list[asyncpg.Connection]) -> None:
        task = asyncio.get_running_loop().create_task(self._release(conns))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, conns: list[asyncpg.Connection]) -> None:
        for conn in conns:
            # One the server ended meanwhile is back in the pool already.
            with contextlib.suppress(asyncpg.InterfaceError, OSError, TimeoutError):
                await self._pool.release(conn, timeout=self._release_timeout)

    def _take_all(self) -> list[asyncpg.Connection]:
        """Every kept connection, out of the lane, and no sweep left armed."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        conns = [conn for _, conn in self._held]
        self._held.clear()
        return conns

    def expire(self) -> None:
        """After `Pool.expire_connections`: every connection kept goes back to the pool (which
        closes it) in the background, and none out now is kept when its call ends."""
        self.epoch += 1
        conns = self._take_all()
        if conns:
            self._release_soon(conns)

    async def drain(self) -> None:
        """Release every kept connection to the pool, and wait for earlier such releases."""
        await self._release(self._take_all())
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
