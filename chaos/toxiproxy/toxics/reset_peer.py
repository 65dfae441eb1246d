"""``reset_peer``: on the first chunk (or EOF) after the stage starts, waits ``timeout`` ms and
closes the connection; the chunk is dropped.

The close is a TCP RST only for connections opened while the toxic already existed on that
stream: the link sets SO_LINGER to (1, 0) on both of its sockets when it is created (see
``link.py``). Added to a live connection, the same close is an ordinary FIN. The wait is not
interruptible, so API calls that touch the link may wait for it, as with the real server.
"""

from __future__ import annotations

import asyncio

from chaos.toxiproxy.toxics.base import INTERRUPTED, Attribute, Toxic, ToxicStub

__all__ = ["ResetPeerToxic"]


class ResetPeerToxic(Toxic):
    type_name = "reset_peer"
    go_name = "ResetToxic"  # the Go struct is named unlike this class
    timeout = Attribute("int64")

    async def pipe(self, stub: ToxicStub) -> None:
        chunk = await stub.recv()
        if chunk is INTERRUPTED:
            return
        if self.timeout > 0:
            await asyncio.sleep(self.timeout / 1000)
        stub.close()
