"""``bandwidth``: limits a direction to ``rate`` KB/s (1 KB = 1000 bytes).

Each chunk costs ``len * 1ms / rate``; the rounding error of every sleep is carried into the next.
Chunks larger than ``rate * 100`` bytes go out as ``rate * 100``-byte pieces every 100 ms. A rate of
0 stalls the stream for good, as in Toxiproxy; a negative rate is refused by the API (the real
server crashes on it).
"""

from __future__ import annotations

import asyncio

from chaos.toxiproxy.stream import Chunk
from chaos.toxiproxy.toxics.base import Attribute, Toxic, ToxicStub

__all__ = ["BandwidthToxic"]

_PIECE_INTERVAL = 0.1
_NS_PER_MS = 1_000_000
_NS_PER_PIECE_INTERVAL = 100_000_000


class BandwidthToxic(Toxic):
    type_name = "bandwidth"
    rate = Attribute("int64")

    def validate(self) -> str | None:
        if self.rate < 0:
            return "rate must not be negative"
        return None

    async def pipe(self, stub: ToxicStub) -> None:
        loop = asyncio.get_running_loop()
        # Nanoseconds owed, in integers as Go's time.Duration, so rounding matches.
        owed = 0
        while (chunk := await stub.next_chunk()) is not None:
            rate = self.rate
            if rate <= 0:
                owed = 0
            else:
                owed += len(chunk.data) * _NS_PER_MS // rate
            data = chunk.data
            piece = max(rate, 0) * 100
            while len(data) > piece:
                if not await stub.sleep(_PIECE_INTERVAL):
                    await stub.send(Chunk(data, chunk.timestamp))
                    return
                await stub.send(Chunk(data[:piece], chunk.timestamp))
                data = data[piece:]
                owed -= _NS_PER_PIECE_INTERVAL
            started = loop.time()
            if not await stub.sleep(owed / 1e9):
                await stub.send(Chunk(data, chunk.timestamp))
                return
            owed -= int((loop.time() - started) * 1e9)
            await stub.send(Chunk(data, chunk.timestamp))
