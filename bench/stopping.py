"""A run stopped with SIGTERM (`kill`, a CI job's timeout) cleans up like one stopped with Ctrl-C.

Python's default for SIGTERM ends the process at once, `finally` blocks unrun, so a benchmark or
soak killed that way left its sidecars and its PostgreSQL running. Here SIGTERM cancels the run's
main task instead: its `finally` blocks stop what it started, and the command exits with 143
(128 + SIGTERM), as a process killed by the signal would.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_TERMINATED = 128 + signal.SIGTERM


async def _cancelled_by_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run_until_terminated(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`; on SIGTERM, the run is cancelled and the process exits with 143."""
    try:
        return asyncio.run(_cancelled_by_sigterm(coro))
    except asyncio.CancelledError:
        sys.stderr.write("stopped by SIGTERM; what the run started is stopped\n")
        raise SystemExit(EXIT_TERMINATED) from None
