"""``latency``: holds each chunk until ``latency`` ms (+/- ``jitter``) after it was read.

The delay is measured from the moment the chunk was read from the socket, so a burst is pipelined
rather than serialised; the stage has a 1024-chunk buffer so the reader keeps reading meanwhile.
"""

from __future__ import annotations

import asyncio

from chaos.toxiproxy.toxics.base import Attribute, Toxic, ToxicStub

__all__ = ["LatencyToxic"]


class LatencyToxic(Toxic):
    type_name = "latency"
    latency = Attribute("int64")
    jitter = Attribute("int64")
    buffer_size = 1024

    def _delay(self, stub: ToxicStub) -> float:
        delay = self.latency
        jitter = self.jitter
        if jitter > 0:
            # Uniform integer in [-jitter, +jitter), drawn per chunk.
            delay += stub.rng.randrange(jitter * 2) - jitter
        return delay / 1000

    async def pipe(self, stub: ToxicStub) -> None:
        loop = asyncio.get_running_loop()
        while (chunk := await stub.next_chunk()) is not None:
            wait = self._delay(stub) - (loop.time() - chunk.timestamp)
            if not await stub.sleep(wait):
                # Interrupted (update or removal): release the held chunk at once.
                await stub.send(chunk)
                return
            # Later latency stages measure from here, so chained latencies add up.
            chunk.timestamp += wait
            await stub.send(chunk)
