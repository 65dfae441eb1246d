"""``slicer``: splits each chunk into smaller pieces sent ``delay`` microseconds apart.

A chunk is halved recursively, the cut moved by a random offset in [-size_variation,
size_variation) when the variation is positive, until every piece is at most
``average_size + size_variation`` bytes. Pieces therefore fall between about half of that bound
and the bound itself. Two deliberate differences keep the server alive where Toxiproxy crashes:
the API refuses ``average_size <= 0`` (and a bound below 1 byte), and a random cut is kept inside
the piece being split instead of producing an out-of-range slice.
"""

from __future__ import annotations

import random

from chaos.toxiproxy.stream import Chunk
from chaos.toxiproxy.toxics.base import Attribute, Toxic, ToxicStub

__all__ = ["SlicerToxic"]


class SlicerToxic(Toxic):
    type_name = "slicer"
    average_size = Attribute("int")
    size_variation = Attribute("int")
    delay = Attribute("int")

    def validate(self) -> str | None:
        if self.average_size <= 0:
            return "average_size must be greater than 0"
        if self.average_size + self.size_variation <= 0:
            return "average_size + size_variation must be greater than 0"
        return None

    def pieces(self, size: int, rng: random.Random) -> list[tuple[int, int]]:
        """(start, end) offsets of the pieces of a ``size``-byte chunk, in order."""
        average, variation = self.average_size, self.size_variation
        out: list[tuple[int, int]] = []
        # Iterative on purpose: a recursion per split could hit Python's recursion limit.
        pending = [(0, size)]
        while pending:
            start, end = pending.pop()
            if (end - start) - average <= variation:
                out.append((start, end))
                continue
            mid = start + (end - start) // 2
            if variation > 0:
                mid += rng.randrange(variation * 2) - variation
            mid = min(max(mid, start + 1), end - 1)
            pending.append((mid, end))
            pending.append((start, mid))
        return out

    async def pipe(self, stub: ToxicStub) -> None:
        while (chunk := await stub.next_chunk()) is not None:
            data = chunk.data
            for start, end in self.pieces(len(data), stub.rng):
                await stub.send(Chunk(data[start:end], chunk.timestamp))
                if not await stub.sleep(self.delay / 1_000_000):
                    await stub.send(Chunk(data[end:], chunk.timestamp))
                    return
