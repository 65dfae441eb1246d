"""The probe's side loop runs a coroutine on its own thread and loop, gives back its result or
error, and cancels it there when the caller gives up or the loop closes."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from proxy.store.side_loop import SideLoop


async def test_a_coroutine_runs_on_the_side_thread_and_answers_the_caller() -> None:
    side = SideLoop(name="test-side")
    try:
        here = threading.get_ident()

        async def where() -> int:
            await asyncio.sleep(0)
            return threading.get_ident()

        assert await side.run(where()) != here

        async def fails() -> None:
            raise ConnectionRefusedError("no")

        with pytest.raises(ConnectionRefusedError):
            await side.run(fails())
    finally:
        await side.close()


async def test_a_caller_that_gives_up_cancels_the_coroutine_there() -> None:
    side = SideLoop(name="test-side")
    try:
        started, cancelled = threading.Event(), threading.Event()

        async def hangs() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await side.run(hangs())
        assert started.is_set()
        assert await asyncio.to_thread(cancelled.wait, 5)
    finally:
        await side.close()


async def test_close_cancels_what_still_runs_and_stops_the_thread() -> None:
    seen: list[asyncio.AbstractEventLoop] = []
    side = SideLoop(name="test-side", setup=seen.append)
    cancelled = threading.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pending = asyncio.ensure_future(side.run(hangs()))
    await asyncio.sleep(0.01)
    await side.close()
    assert cancelled.is_set() and seen and seen[0].is_closed()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await side.close()  # a second close does nothing


async def test_a_failure_after_the_caller_gave_up_is_not_reported_as_never_retrieved() -> None:
    # A probe cancelled by its timeout whose connection's close then times out: the side task
    # ends with that error, and no one is waiting for it any more.
    reported: list[dict[str, object]] = []
    side = SideLoop(
        name="test-side",
        setup=lambda loop: loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx)),
    )
    try:
        ended = threading.Event()

        async def fails_on_its_way_out() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise TimeoutError("close timed out") from None
            finally:
                ended.set()

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await side.run(fails_on_its_way_out())
        assert await asyncio.to_thread(ended.wait, 5)

        async def collected() -> None:
            # The report comes from the finished task's finalizer, on the side loop's thread.
            gc.collect()

        await side.run(collected())
        assert reported == []
    finally:
        await side.close()
