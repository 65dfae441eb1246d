"""The server's outbox (answers made in one loop pass go out together, in order, on the next)
and the hand-over of an answer the front door made in the protocol's callback."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web

from proxy.http.server import Outbox, _Handover


class _Transport:
    """Records what is written; closing is a flag (pure bookkeeping, no socket)."""

    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self._log = log
        self._name = name
        self.closing = False

    def write(self, data: bytes) -> None:
        self._log.append((self._name, data))

    def is_closing(self) -> bool:
        return self.closing


def _sends(outbox: Outbox, *items: tuple[_Transport, bytes]) -> None:
    for transport, data in items:
        outbox.send(cast(Any, transport), data)


async def test_answers_of_one_pass_are_written_together_in_order_on_the_next() -> None:
    written: list[tuple[str, bytes]] = []
    outbox = Outbox(asyncio.get_running_loop())
    a, b = _Transport(written, "a"), _Transport(written, "b")
    _sends(outbox, (a, b"1"), (b, b"2"), (a, b"3"))
    assert written == []  # nothing before the loop's next pass
    await asyncio.sleep(0)
    assert written == [("a", b"1"), ("b", b"2"), ("a", b"3")]
    _sends(outbox, (b, b"4"))  # a later pass schedules its own flush
    await asyncio.sleep(0)
    assert written[-1] == ("b", b"4")


async def test_a_connection_closed_before_the_flush_is_written_nothing() -> None:
    written: list[tuple[str, bytes]] = []
    outbox = Outbox(asyncio.get_running_loop())
    gone, kept = _Transport(written, "gone"), _Transport(written, "kept")
    _sends(outbox, (gone, b"x"), (kept, b"y"))
    gone.closing = True
    await asyncio.sleep(0)
    assert written == [("kept", b"y")]


async def test_a_handed_over_answer_nobody_takes_is_closed_not_left_unawaited() -> None:
    async def answer() -> web.StreamResponse:
        return web.Response()

    pending = answer()
    _Handover(cast(Any, None), pending, cast(Any, None)).discard()
    assert pending.cr_frame is None  # closed: no "never awaited" warning when collected


async def test_the_hand_over_answers_once_then_gives_the_door_back() -> None:
    class _Protocol:
        _request_handler: Any = None

    async def answer() -> web.StreamResponse:
        return web.Response(status=404)

    async def door(request: Any) -> web.StreamResponse:
        return web.Response()

    protocol = _Protocol()
    handover = _Handover(cast(Any, protocol), answer(), door)
    protocol._request_handler = handover
    response = await handover(cast(Any, None))
    assert response.status == 404
    assert protocol._request_handler is door
