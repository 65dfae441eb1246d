"""The toxic model: a toxic type, a toxic as configured through the API, and the per-link stage.

Mirrors Toxiproxy's own split. A *toxic* (subclass of :class:`Toxic`) holds the attributes and a
``pipe`` coroutine; one toxic object is shared by every connection, so an update to its attributes
is seen by all of them. A :class:`ToxicWrapper` is the API resource (name, stream, toxicity). A
:class:`ToxicStub` is one stage of one link: its input and output channels, per-connection state,
and the interrupt that lets the API swap or remove a toxic on a live connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from dataclasses import dataclass
from typing import ClassVar, overload

from chaos.toxiproxy.gojson import Float32, GoField, GoStruct
from chaos.toxiproxy.stream import Channel, Chunk, Direction

__all__ = [
    "INTERRUPTED",
    "TIMED_OUT",
    "Attribute",
    "Signal",
    "Toxic",
    "ToxicStub",
    "ToxicWrapper",
    "pass_through",
]

_log = logging.getLogger("chaos.toxiproxy")


class Signal(enum.Enum):
    """What a stage's wait returned instead of a chunk."""

    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed out"


INTERRUPTED = Signal.INTERRUPTED
TIMED_OUT = Signal.TIMED_OUT


class Attribute:
    """An attribute of a toxic type: an integer of a Go kind (``int64``, ``int``), named as in JSON.

    One declaration on the class (``rate = Attribute("int64")``) serves both sides: the code reads
    ``self.rate`` as an int, and the Go decoder and its error messages get the field, in
    declaration order. Each toxic stores its values on itself, zero until set, which hides the
    descriptor: reading ``self.rate`` per chunk is a plain attribute lookup.
    """

    __slots__ = ("kind", "name")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, toxic: None, owner: type | None = None) -> Attribute: ...
    @overload
    def __get__(self, toxic: Toxic, owner: type | None = None) -> int: ...
    def __get__(self, toxic: Toxic | None, owner: type | None = None) -> Attribute | int:
        if toxic is None:
            return self
        # Only reachable before Toxic.__init__ has stored the value.
        raise AttributeError(self.name)


class Toxic:
    """Base class of toxic types.

    Subclasses set ``type_name`` (the API name), declare their attributes as :class:`Attribute`
    and implement :meth:`pipe`. ``go_name``, the Go struct named in error messages, is the class
    name unless the class sets it.
    """

    type_name: ClassVar[str]
    go_name: ClassVar[str]
    # (JSON name, Go kind) of each Attribute, in declaration order; filled per subclass.
    attribute_kinds: ClassVar[tuple[tuple[str, str], ...]] = ()
    buffer_size: ClassVar[int] = 0
    stateful: ClassVar[bool] = False
    has_cleanup: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Toxic types are not subclassed further, so a class's attributes are the ones it declares.
        cls.attribute_kinds = tuple(
            (value.name, value.kind) for value in vars(cls).values() if isinstance(value, Attribute)
        )
        if "go_name" not in vars(cls):
            cls.go_name = cls.__name__

    def __init__(self) -> None:
        for name, _kind in self.attribute_kinds:
            setattr(self, name, 0)

    @classmethod
    def go_struct(cls) -> GoStruct:
        fields = tuple(GoField(name, kind, kind) for name, kind in cls.attribute_kinds)
        return GoStruct(cls.go_name, f"toxics.{cls.go_name}", fields)

    def attributes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name, _kind in self.attribute_kinds}

    def set_attributes(self, values: dict[str, object]) -> None:
        for name, _kind in self.attribute_kinds:
            if name in values:
                setattr(self, name, values[name])

    def copy(self) -> Toxic:
        clone = type(self)()
        clone.set_attributes(self.attributes())
        return clone

    def validate(self) -> str | None:
        """A reason to refuse these attributes, for values that crash the real server."""
        return None

    def new_state(self) -> object:
        """Per-connection state of a stateful toxic; it survives updates of the toxic."""
        return None

    def cleanup(self, stub: ToxicStub) -> None:
        """Called when the toxic is removed from a live link (only if ``has_cleanup``)."""

    async def pipe(self, stub: ToxicStub) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class ToxicWrapper:
    """A toxic as the API knows it."""

    toxic: Toxic
    name: str
    type: str
    stream: str
    toxicity: float
    direction: Direction
    index: int = -1

    @property
    def buffer_size(self) -> int:
        return self.toxic.buffer_size

    def to_json(self) -> dict[str, object]:
        # Go's field order: the embedded toxic (as "attributes") comes first.
        return {
            "attributes": self.toxic.attributes(),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": Float32(self.toxicity),
        }


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ToxicStub:
    """One stage of one link: input, output, state and the interrupt handshake.

    A stage's toxic waits through :meth:`recv` and :meth:`sleep`, which return early when the API
    interrupts the stage; :meth:`send` is not interruptible, as in Toxiproxy, so a stage holding a
    chunk always delivers it before it yields to an interrupt.
    """

    __slots__ = ("_interrupt", "_task", "_waker", "closed", "input", "output", "rng", "state")

    def __init__(self, input_: Channel, output: Channel, rng: random.Random) -> None:
        self.input = input_
        self.output = output
        self.rng = rng
        self.state: object = None
        self.closed = False
        self._interrupt = False
        self._waker: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- used by toxics ------------------------------------------------------------------------

    async def recv(self, deadline: float | None = None) -> Chunk | Signal | None:
        """Next chunk, None at end of stream, INTERRUPTED, or TIMED_OUT once ``deadline`` passes.

        The deadline is checked before the input so a busy stream cannot postpone it.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._take_interrupt():
                return INTERRUPTED
            if deadline is not None and loop.time() >= deadline:
                return TIMED_OUT
            channel = self.input
            if channel.ready():
                return channel.take()
            fut: asyncio.Future[None] = loop.create_future()
            self._waker = fut
            channel.add_getter(fut)
            timer = loop.call_at(deadline, _set, fut) if deadline is not None else None
            try:
                await fut
            finally:
                channel.remove_getter(fut)
                self._waker = None
                if timer is not None:
                    timer.cancel()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if interrupted first."""
        if self._take_interrupt():
            return False
        if seconds <= 0:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waker = fut
        timer = loop.call_later(seconds, _set, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waker = None
        return not self._take_interrupt()

    async def next_chunk(self) -> Chunk | None:
        """The next chunk, or None when the toxic must return: when interrupted, or at the end of
        the input, which this stage then passes on by closing its output.

        The loop of nearly every toxic; only those that act on the end of the input or on an
        interrupt themselves use :meth:`recv`.
        """
        chunk = await self.recv()
        if isinstance(chunk, Chunk):
            return chunk
        if chunk is None:
            self.close()
        return None

    def _take_interrupt(self) -> bool:
        pending = self._interrupt
        self._interrupt = False
        return pending

    async def send(self, chunk: Chunk) -> None:
        await self.output.put(chunk)

    def close(self) -> None:
        """End this stage's output: the stages after it see end of stream."""
        if not self.closed:
            self.closed = True
            self.output.close()

    # --- used by links -------------------------------------------------------------------------

    def run(self, wrapper: ToxicWrapper) -> None:
        """Start the stage; each start draws against the toxicity, as in Toxiproxy."""
        self._task = asyncio.get_running_loop().create_task(self._run(wrapper))

    async def _run(self, wrapper: ToxicWrapper) -> None:
        try:
            if self.rng.random() < wrapper.toxicity:
                await wrapper.toxic.pipe(self)
            else:
                await pass_through(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken stage must end its link rather than stall it.
            _log.exception("toxic %s failed", wrapper.name)
            self.close()

    async def interrupt(self) -> bool:
        """Stop the running toxic; False if the stage is closed (the link is going away)."""
        task = self._task
        if self.closed or task is None or task.done():
            return False
        self._interrupt = True
        if self._waker is not None:
            _set(self._waker)
        await asyncio.wait({task})
        delivered = not self._interrupt
        self._interrupt = False
        return delivered

    def kill(self) -> None:
        """Stop the stage for good when its link has ended."""
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def pass_through(stub: ToxicStub) -> None:
    """Forward chunks unchanged until interrupted or the input ends (the noop behaviour)."""
    while (chunk := await stub.next_chunk()) is not None:
        await stub.send(chunk)
