"""``slow_close``: data passes unchanged, but closing is delayed by ``delay`` ms after EOF."""

from __future__ import annotations

from chaos.toxiproxy.stream import Chunk
from chaos.toxiproxy.toxics.base import Attribute, Toxic, ToxicStub

__all__ = ["SlowCloseToxic"]


class SlowCloseToxic(Toxic):
    type_name = "slow_close"
    delay = Attribute("int64")

    async def pipe(self, stub: ToxicStub) -> None:
        while True:
            chunk = await stub.recv()
            if chunk is None:
                if await stub.sleep(self.delay / 1000):
                    stub.close()
                # Interrupted while delaying: the next toxic in this stage sees the end again.
                return
            if not isinstance(chunk, Chunk):
                return
            await stub.send(chunk)
