"""An event loop on a thread of its own, for the health probe.

The breaker's probe must not be timed by the sidecar's own event loop: under load that loop runs
late, and a probe of a healthy PostgreSQL would time out and keep the breaker open. So probes
run elsewhere. A new thread and loop per probe (`asyncio.run` in `asyncio.to_thread`) cost a
selector, a wake-up socket pair and an executor per probe, four times a second for as long as
PostgreSQL is away, paid by a process that is then answering every read from its replica; one
loop, started with the app and kept, runs every probe instead. A probe that outlives its caller's
timeout is cancelled there, on the loop it runs in; should it then fail in another way (a probe's
`close` timing out on its way out), nobody is left to hear it, and that failure is dropped rather
than reported later as "Task exception was never retrieved".

Written by hand: the standard library has the pieces (`run_coroutine_threadsafe`,
`wrap_future`) but no owner for a loop that outlives one call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


class SideLoop:
    def __init__(
        self, *, name: str, setup: Callable[[asyncio.AbstractEventLoop], None] | None = None
    ) -> None:
        self._loop = asyncio.new_event_loop()
        if setup is not None:
            setup(self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """`coro`'s result, run on the side loop; cancelling the caller cancels it there."""
        waiting: list[concurrent.futures.Future[T]] = []

        async def answered() -> T:
            try:
                return await coro
            except Exception:
                if waiting and waiting[0].cancelled():
                    # The caller gave up and was told so; this failure has no one to reach.
                    return cast(T, None)
                raise

        future = asyncio.run_coroutine_threadsafe(answered(), self._loop)
        # Set before this task can be cancelled: the future is cancelled only through it.
        waiting.append(future)
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        """Cancel what still runs there (its callers see it cancelled), then stop the loop and
        its thread."""
        loop = self._loop
        if loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(cancel_all(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(self._thread.join)
        loop.close()
