"""Chunks, directions and the bounded channel that joins toxic stages.

Toxiproxy's pipeline semantics (a stage blocks when the next one is full, closing a channel makes
the next stage see end-of-stream after the buffered chunks, a stage waits for input *or* an
interrupt) are those of Go channels. asyncio.Queue has no close and cannot be waited on together
with another event without a task per wait, so this is a small channel built on futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Callable

__all__ = ["Channel", "Chunk", "Direction", "park", "parse_direction", "wake"]


class Direction(enum.IntEnum):
    """Upstream is client to server, downstream is server to client (Go's order: up first)."""

    UPSTREAM = 0
    DOWNSTREAM = 1

    @property
    def label(self) -> str:
        return self.name.lower()


def parse_direction(stream: str) -> Direction | None:
    value = stream.lower()
    if value == "upstream":
        return Direction.UPSTREAM
    if value == "downstream":
        return Direction.DOWNSTREAM
    return None


class Chunk:
    """Bytes read from a socket in one read, stamped with the loop time of that read."""

    __slots__ = ("data", "timestamp")

    def __init__(self, data: bytes, timestamp: float) -> None:
        self.data = data
        self.timestamp = timestamp


def wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every coroutine :func:`park`-ed on ``waiters``; each re-checks what it waits for."""
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


async def park(waiters: list[asyncio.Future[None]]) -> None:
    """Wait for the next :func:`wake` of ``waiters`` (or a cancellation)."""
    fut = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    finally:
        waiters.remove(fut)


class Channel:
    """A Go-like channel of chunks.

    ``capacity`` 0 (Go's unbuffered channel) is treated as 1: a single slot keeps the hand-over
    semantics that matter here (backpressure, ordering) without a rendezvous protocol.
    ``on_space`` lets a non-coroutine producer (a socket reader) learn when to resume.
    """

    __slots__ = ("_buf", "_getters", "_putters", "capacity", "closed", "on_space")

    def __init__(self, capacity: int) -> None:
        self._buf: deque[Chunk] = deque()
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []
        self.capacity = max(1, capacity)
        self.closed = False
        self.on_space: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def full(self) -> bool:
        return len(self._buf) >= self.capacity

    def ready(self) -> bool:
        """A receive would not block: there is a chunk, or the channel is closed."""
        return bool(self._buf) or self.closed

    def take(self) -> Chunk | None:
        """Receive without blocking: a chunk, or None once closed and drained."""
        if not self._buf:
            return None
        item = self._buf.popleft()
        if self._putters:
            wake(self._putters)
        if self.on_space is not None and len(self._buf) < self.capacity:
            self.on_space()
        return item

    def push(self, item: Chunk) -> None:
        """Append without blocking, even beyond capacity (the caller throttles itself)."""
        if self.closed:
            return
        self._buf.append(item)
        if self._getters:
            wake(self._getters)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        wake(self._getters)
        wake(self._putters)

    def add_getter(self, fut: asyncio.Future[None]) -> None:
        self._getters.append(fut)

    def remove_getter(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._getters.remove(fut)

    async def put(self, item: Chunk) -> None:
        """Send, waiting while full. Sending on a closed channel drops the chunk."""
        while len(self._buf) >= self.capacity and not self.closed:
            await park(self._putters)
        self.push(item)

    async def put_within(self, item: Chunk, timeout: float) -> bool:
        """Send, giving up after ``timeout`` seconds; False if the chunk was dropped."""
        try:
            async with asyncio.timeout(timeout):
                await self.put(item)
        except TimeoutError:
            return False
        return True

    async def get(self) -> Chunk | None:
        """Receive, waiting for a chunk; None once closed and drained."""
        while not self.ready():
            await park(self._getters)
        return self.take()

    async def get_unless(self, other: asyncio.Future[bool]) -> Chunk | bool | None:
        """Receive, or stop waiting when ``other`` completes (then return False)."""
        while not self.ready():
            if other.done():
                return False
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)

            def wake(_: object, fut: asyncio.Future[None] = fut) -> None:
                if not fut.done():
                    fut.set_result(None)

            other.add_done_callback(wake)
            try:
                await fut
            finally:
                self.remove_getter(fut)
                other.remove_done_callback(wake)
        return self.take()
