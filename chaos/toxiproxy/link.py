"""One direction of one proxied connection, running that direction's toxic chain.

A link reads its *source* socket and writes its *destination* socket. With no toxics it copies
bytes straight from the reader callback into the destination transport (no task, no queue, no
per-chunk allocation beyond the bytes themselves) with ordinary transport flow control. As soon as
the chain holds a toxic it becomes a pipeline like Toxiproxy's: a hidden noop stage followed by one
stage per toxic, each an asyncio task joined by channels, and a writer task at the end. When the
last toxic is removed the pipeline drains and the link returns to the direct copy.

Toxiproxy semantics reproduced here: toxics are added to, updated on and removed from live links
(``add_toxic``/``update_toxic``/``remove_toxic`` follow Toxiproxy's interrupt protocol, so the
preceding stage restarts and re-draws its toxicity); a link created while a ``reset_peer`` toxic
exists sets SO_LINGER (1, 0) on both sockets so that closing them sends RST; when the source ends
the chain is flushed and the destination is *fully* closed (no half-close).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
from collections.abc import Callable, Sequence
from typing import cast

from chaos.toxiproxy.stream import Channel, Chunk, Direction, park, wake
from chaos.toxiproxy.toxics.base import ToxicStub, ToxicWrapper

__all__ = ["Endpoint", "Link"]

_log = logging.getLogger("chaos.toxiproxy")

_LINGER_RESET = struct.pack("ii", 1, 0)
# Toxiproxy gives up forwarding a chunk left in a removed stage after this long.
_FLUSH_TIMEOUT = 5.0


class Endpoint(asyncio.Protocol):
    """One socket of a connection. Its ``reader`` link consumes it, its ``writer`` link feeds it.

    Data or EOF that arrive before the links are attached are held back and replayed.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: Link | None = None
        self.writer: Link | None = None
        self.lost = False
        self.write_paused = False
        self._early: list[bytes] = []
        self._early_eof = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have the same interface.
        self.transport = cast(asyncio.Transport, transport)
        if self.reader is None:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            self.reader.on_data(data)
        else:
            self._early.append(data)
            if self.transport is not None and self.transport.is_reading():
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.reader is not None:
            self.reader.on_source_end()
        else:
            self._early_eof = True
        # Keep the socket open: the other direction may still have data to flush to it.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        wake(self._drain_waiters)
        if self.reader is not None:
            self.reader.on_source_end()
        else:
            self._early_eof = True
        if self.writer is not None:
            self.writer.on_dest_writable()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.writer is not None:
            self.writer.on_dest_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        wake(self._drain_waiters)
        if self.writer is not None:
            self.writer.on_dest_writable()

    # --- used by links -------------------------------------------------------------------------

    def attach_reader(self, link: Link) -> None:
        self.reader = link
        early, self._early = self._early, []
        for data in early:
            link.on_data(data)
        if self._early_eof:
            link.on_source_end()

    def set_reading(self, reading: bool) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        if reading and not transport.is_reading():
            transport.resume_reading()
        elif not reading and transport.is_reading():
            transport.pause_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.lost and not transport.is_closing():
            transport.write(data)

    async def drained(self) -> None:
        """Wait until the transport accepts more data (or the socket is gone)."""
        while self.write_paused and not self.lost:
            await park(self._drain_waiters)

    def set_linger_reset(self) -> None:
        """Make the eventual close of this socket an RST."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)

    def close(self) -> None:
        """Close after pending writes are flushed (the link's normal end)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data (proxy disabled or deleted)."""
        if self.transport is not None and not self.lost:
            self.transport.abort()


class _Mode(enum.Enum):
    DIRECT = "direct"
    PIPELINE = "pipeline"
    DRAINING = "draining"
    DONE = "done"


class Link:
    """One direction of a connection: source endpoint -> toxic chain -> destination endpoint."""

    def __init__(
        self,
        direction: Direction,
        source: Endpoint,
        dest: Endpoint,
        rng: random.Random,
        on_done: Callable[[Link], None],
    ) -> None:
        self.direction = direction
        self.source = source
        self.dest = dest
        self.received = 0
        self.sent = 0
        self._rng = rng
        self._on_done = on_done
        self._mode = _Mode.DIRECT
        self._stubs: list[ToxicStub] = []
        self._input: Channel | None = None
        self._output: Channel | None = None
        self._writer: asyncio.Task[None] | None = None
        self._source_ended = False
        # Set when a toxic's cleanup closed a stage: the link is ending, chain edits stop here.
        self._dying = False
        self._direct_again: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return self._mode is _Mode.DONE

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, chain: Sequence[ToxicWrapper]) -> None:
        """Begin copying with ``chain`` (the collection's chain: hidden noop first)."""
        if any(w.type == "reset_peer" for w in chain):
            self.source.set_linger_reset()
            self.dest.set_linger_reset()
        self.dest.writer = self
        if len(chain) > 1:
            self._build_pipeline(chain)
        self.source.attach_reader(self)
        self._update_reading()

    def _build_pipeline(self, chain: Sequence[ToxicWrapper]) -> None:
        first = Channel(0)
        first.on_space = self._update_reading
        previous = first
        stubs: list[ToxicStub] = []
        for i in range(len(chain)):
            following = Channel(chain[i + 1].buffer_size if i + 1 < len(chain) else 0)
            stubs.append(ToxicStub(previous, following, self._rng))
            previous = following
        self._stubs = stubs
        self._input = first
        self._output = previous
        self._mode = _Mode.PIPELINE
        for stub, wrapper in zip(stubs, chain, strict=True):
            if wrapper.toxic.stateful:
                stub.state = wrapper.toxic.new_state()
            stub.run(wrapper)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def kill(self) -> None:
        """End the link at once (its sockets are being closed by the proxy)."""
        if self._mode is _Mode.DONE:
            return
        self._finish()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()

    def _finish(self) -> None:
        self._mode = _Mode.DONE
        for stub in self._stubs:
            stub.kill()
        if self._input is not None:
            self._input.on_space = None
        if self._direct_again is not None and not self._direct_again.done():
            self._direct_again.set_result(None)
        self._on_done(self)

    # --- events from the endpoints -------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        self.received += len(data)
        mode = self._mode
        if mode is _Mode.DIRECT:
            self.dest.write(data)
            self.sent += len(data)
            if self.dest.write_paused:
                self.source.set_reading(False)
        elif mode is not _Mode.DONE:
            assert self._input is not None
            self._input.push(Chunk(data, asyncio.get_running_loop().time()))
            if self._input.full:
                self.source.set_reading(False)

    def on_source_end(self) -> None:
        if self._source_ended:
            return
        self._source_ended = True
        mode = self._mode
        if mode is _Mode.DIRECT:
            self.dest.close()
            self._finish()
        elif mode is not _Mode.DONE:
            assert self._input is not None
            self._input.close()

    def on_dest_paused(self) -> None:
        if self._mode is _Mode.DIRECT:
            self.source.set_reading(False)

    def on_dest_writable(self) -> None:
        if self._mode is _Mode.DIRECT:
            self._update_reading()

    def _update_reading(self) -> None:
        if self._source_ended or self._mode is _Mode.DONE:
            return
        if self._mode is _Mode.DIRECT:
            self.source.set_reading(not self.dest.write_paused)
        else:
            assert self._input is not None
            self.source.set_reading(not self._input.full)

    # --- the writer at the end of the pipeline -------------------------------------------------

    async def _write_loop(self) -> None:
        dest = self.dest
        while True:
            output = self._output
            assert output is not None
            if self._mode is _Mode.DRAINING and not output.ready():
                self._become_direct()
                return
            chunk = await output.get()
            if chunk is None:
                break
            if chunk.data:
                dest.write(chunk.data)
                self.sent += len(chunk.data)
                if dest.write_paused:
                    await dest.drained()
        dest.close()
        if self._mode is not _Mode.DONE:
            self._finish()

    def _become_direct(self) -> None:
        self._mode = _Mode.DIRECT
        self._stubs = []
        if self._input is not None:
            self._input.on_space = None
        self._input = self._output = None
        self._writer = None
        if self._direct_again is not None and not self._direct_again.done():
            self._direct_again.set_result(None)
        self._direct_again = None
        self._update_reading()

    # --- live chain edits (called by the toxic collection, under its lock) ---------------------

    async def _settled(self) -> bool:
        """Wait out a return to direct mode; False if the link cannot take chain edits."""
        while self._mode is _Mode.DRAINING and self._direct_again is not None:
            await asyncio.shield(self._direct_again)
        return self._mode is not _Mode.DONE and not self._dying

    async def add_toxic(self, wrapper: ToxicWrapper, chain: Sequence[ToxicWrapper]) -> None:
        if not await self._settled():
            return
        if self._mode is _Mode.DIRECT:
            # The chain (already holding the new toxic) starts fresh on this live connection.
            # No SO_LINGER here: a reset_peer added to a live connection closes with FIN.
            self._build_pipeline(chain)
            self._update_reading()
            return
        index = len(self._stubs)
        previous = self._stubs[index - 1]
        stub = ToxicStub(Channel(wrapper.buffer_size), previous.output, self._rng)
        self._stubs.append(stub)
        if await previous.interrupt():
            previous.output = stub.input
            if wrapper.toxic.stateful:
                stub.state = wrapper.toxic.new_state()
            stub.run(wrapper)
            previous.run(chain[index - 1])
        else:
            stub.output = stub.input
            stub.close()

    async def update_toxic(self, wrapper: ToxicWrapper) -> None:
        if not await self._settled() or self._mode is not _Mode.PIPELINE:
            return
        if wrapper.index >= len(self._stubs):
            return
        stub = self._stubs[wrapper.index]
        if await stub.interrupt():
            stub.run(wrapper)

    async def remove_toxic(self, wrapper: ToxicWrapper, chain: Sequence[ToxicWrapper]) -> None:
        if not await self._settled() or self._mode is not _Mode.PIPELINE:
            return
        index = wrapper.index
        if not 0 < index < len(self._stubs):
            return
        stub = self._stubs[index]
        if not await stub.interrupt():
            return
        if wrapper.toxic.has_cleanup:
            wrapper.toxic.cleanup(stub)
            if stub.closed:
                self._dying = True
                return
        previous = self._stubs[index - 1]
        stopping = asyncio.ensure_future(previous.interrupt())
        # While the previous stage winds down it may be blocked sending into this stage: keep
        # moving this stage's input to its output so it can finish.
        while True:
            if not stopping.done():
                item = await stub.input.get_unless(stopping)
                if item is False:
                    continue
            elif stopping.result():
                break
            else:
                # The previous stage is closed: its end of stream is on its way, pass it on.
                item = await stub.input.get()
            if item is None:
                stub.close()
                await stopping
                self._dying = True
                return
            assert isinstance(item, Chunk)
            await stub.output.put_within(item, _FLUSH_TIMEOUT)
        while len(stub.input):
            item = stub.input.take()
            assert item is not None
            await stub.output.put_within(item, _FLUSH_TIMEOUT)
        previous.output = stub.output
        del self._stubs[index]
        previous.run(chain[index - 1])
        if len(self._stubs) == 1:
            await self._drain_to_direct()

    async def _drain_to_direct(self) -> None:
        """Only the hidden noop is left: stop it and let the writer empty the pipeline."""
        noop = self._stubs[0]
        if not await noop.interrupt():
            return
        first, last = self._input, self._output
        assert first is not None
        assert last is not None
        while len(first):
            item = first.take()
            assert item is not None
            last.push(item)
        if first.closed:
            last.close()
        first.on_space = None
        self._stubs = []
        self._input = last
        last.on_space = self._update_reading
        self._mode = _Mode.DRAINING
        self._direct_again = asyncio.get_running_loop().create_future()
        writer = self._writer
        if not last.ready() and writer is not None and not writer.done():
            # Nothing is in flight: the writer is idle on an empty channel, switch right away.
            writer.cancel()
            await asyncio.wait({writer})
            if self._mode is not _Mode.DRAINING:
                return
            if last.ready():
                # Data arrived meanwhile: let a writer deliver it before going direct.
                self._writer = asyncio.get_running_loop().create_task(self._write_loop())
            else:
                self._become_direct()
        else:
            self._update_reading()
