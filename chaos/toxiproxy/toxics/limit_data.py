"""``limit_data``: forwards at most ``bytes`` bytes per connection in its direction, then closes.

The count is per link and survives updates of the toxic (it is the stage's state). With
``bytes`` <= 0 the first chunk closes the connection and nothing is forwarded.
"""

from __future__ import annotations

from chaos.toxiproxy.toxics.base import Attribute, Toxic, ToxicStub

__all__ = ["LimitDataToxic"]


class _Transmitted:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class LimitDataToxic(Toxic):
    type_name = "limit_data"
    bytes = Attribute("int64")
    stateful = True

    def new_state(self) -> object:
        return _Transmitted()

    async def pipe(self, stub: ToxicStub) -> None:
        state = stub.state
        if not isinstance(state, _Transmitted):
            state = stub.state = _Transmitted()
        remaining = self.bytes - state.count
        while (chunk := await stub.next_chunk()) is not None:
            remaining = max(remaining, 0)
            if remaining < len(chunk.data):
                chunk.data = chunk.data[:remaining]
            if chunk.data:
                await stub.send(chunk)
                state.count += len(chunk.data)
                remaining = self.bytes - state.count
            if remaining <= 0:
                stub.close()
                return
