"""``noop``: passes data through unchanged. It is also the hidden first stage of every chain."""

from __future__ import annotations

from chaos.toxiproxy.toxics.base import Toxic, ToxicStub, pass_through

__all__ = ["NoopToxic"]


class NoopToxic(Toxic):
    type_name = "noop"

    async def pipe(self, stub: ToxicStub) -> None:
        await pass_through(stub)
