"""Reads a busy listener's notifications in batches instead of one wake-up each.

PostgreSQL sends every change notification on its own, so under a steady stream of writes the
listening connection's socket turns readable once per write, and the event loop wakes once per
write to read a few hundred bytes: tens of microseconds of CPU each time, most of it the wake-up
itself (the kernel, the loop, asyncpg's protocol), not the replica's work. After a notification
is heard, `NotifyWindow` stops reading the socket for a short window; what arrives meanwhile waits
in the kernel's buffer and is read in one go when the window ends. A notification heard after a
quiet spell is read at once, so the window delays only the ones that follow it closely, and by at
most the window.

Reading is paused through the connection's transport, which asyncpg does not expose: asyncpg
itself only pauses it while a COPY's consumer is slow, which the listener never runs, and no
library offers this for a LISTEN connection. A query on the connection (the ping, a catch-up)
reopens the socket first, so no answer waits for the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Readable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the window needs of the event loop (`asyncio.AbstractEventLoop` has it)."""

    def call_later(self, delay: float, _callback: Callable[[], object], /) -> Cancellable: ...


class NotifyWindow:
    """Pauses `transport` for `window_s` after each notification heard while it reads."""

    def __init__(self, transport: Readable, *, window_s: float, loop: Scheduler) -> None:
        self._transport = transport
        self._window_s = window_s
        self._loop = loop
        self._timer: Cancellable | None = None
        self._querying = 0
        self.windows = 0

    def heard(self) -> None:
        """A notification was read: hold the next ones back for the window."""
        if self._window_s <= 0 or self._timer is not None or self._querying:
            return
        self._transport.pause_reading()
        self._timer = self._loop.call_later(self._window_s, self._reopen)
        self.windows += 1

    def _drop_timer(self) -> bool:
        """Forget the window's timer; whether one was set (reading is paused exactly then)."""
        timer, self._timer = self._timer, None
        if timer is None:
            return False
        timer.cancel()  # a no-op when it is the timer that fired
        return True

    def _reopen(self) -> None:
        if self._drop_timer():
            self._transport.resume_reading()

    @contextmanager
    def querying(self) -> Iterator[None]:
        """Around a query on the connection: its answer is read as soon as it comes."""
        self._querying += 1
        self._reopen()
        try:
            yield
        finally:
            self._querying -= 1

    def close(self) -> None:
        """The connection is gone: drop the timer, leave the transport alone."""
        self._drop_timer()
