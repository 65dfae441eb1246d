"""``timeout``: swallows all data; closes the connection ``timeout`` ms after the stage started.

With ``timeout`` <= 0 the connection stays open (and silent) for ever. Removing the toxic closes
the connections it was holding, as Toxiproxy does.
"""

from __future__ import annotations

import asyncio

from chaos.toxiproxy.stream import Chunk
from chaos.toxiproxy.toxics.base import INTERRUPTED, Attribute, Toxic, ToxicStub

__all__ = ["TimeoutToxic"]


class TimeoutToxic(Toxic):
    type_name = "timeout"
    timeout = Attribute("int64")
    has_cleanup = True

    async def pipe(self, stub: ToxicStub) -> None:
        deadline = None
        if self.timeout > 0:
            deadline = asyncio.get_running_loop().time() + self.timeout / 1000
        while True:
            chunk = await stub.recv(deadline)
            if isinstance(chunk, Chunk):
                # Data is dropped on the floor, and stays dropped after the toxic goes.
                continue
            if chunk is INTERRUPTED:
                return
            # End of input, or the timeout expired.
            stub.close()
            return

    def cleanup(self, stub: ToxicStub) -> None:
        stub.close()
