"""A proxy's toxics: one chain per direction, applied live to every link of the proxy.

Each chain starts with a hidden noop, as in Toxiproxy, so indexes line up with link stages. Every
change (add, update, remove, reset) and every new link happens under one lock, so a connection
opened during a change sees either the old chain or the new one, never half of it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable

from chaos.toxiproxy import errors
from chaos.toxiproxy.gojson import (
    GoField,
    GoStruct,
    JsonSyntaxError,
    JsonValue,
    StructDecoder,
    decode_first,
)
from chaos.toxiproxy.link import Endpoint, Link
from chaos.toxiproxy.stream import Direction, parse_direction
from chaos.toxiproxy.toxics import REGISTRY, Toxic, ToxicWrapper
from chaos.toxiproxy.toxics.noop import NoopToxic

__all__ = ["ToxicCollection"]

# The structs the real server decodes toxic bodies into; their names appear in error texts.
_NOOP_STRUCT = NoopToxic.go_struct()
_WRAPPER_STRUCT = GoStruct(
    "ToxicWrapper",
    "toxics.ToxicWrapper",
    (
        GoField("attributes", "struct", "toxics.NoopToxic", _NOOP_STRUCT),
        GoField("name", "string", "string"),
        GoField("type", "string", "string"),
        GoField("stream", "string", "string"),
        GoField("toxicity", "float32", "float32"),
    ),
)


def _attributes_struct(toxic: Toxic, with_toxicity: bool) -> GoStruct:
    fields = [GoField("attributes", "iface", f"toxics.{toxic.go_name}", toxic.go_struct())]
    type_string = 'struct { Attributes interface {} "json:\\"attributes\\"" }'
    if with_toxicity:
        fields.append(GoField("toxicity", "float32", "float32"))
        type_string = (
            'struct { Attributes interface {} "json:\\"attributes\\""; '
            'Toxicity float32 "json:\\"toxicity\\"" }'
        )
    return GoStruct("", type_string, tuple(fields))


def _parse(body: bytes) -> JsonValue:
    try:
        return decode_first(body)
    except JsonSyntaxError as exc:
        raise errors.bad_request_body(str(exc)) from None


def _configure(toxic: Toxic, decoded: dict[str, object]) -> None:
    """Set the decoded ``attributes`` on ``toxic``, refusing values the real server crashes on."""
    values = decoded.get("attributes")
    if isinstance(values, dict):
        toxic.set_attributes(values)
    problem = toxic.validate()
    if problem is not None:
        raise errors.invalid_attributes(problem)


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    # Links are edited concurrently, as Toxiproxy does, so one slow link does not hold the rest.
    await asyncio.gather(*calls)


class ToxicCollection:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.lock = asyncio.Lock()
        self._noop = ToxicWrapper(NoopToxic(), "", "noop", "", 0.0, Direction.UPSTREAM, 0)
        self.chains: dict[Direction, list[ToxicWrapper]] = {d: [self._noop] for d in Direction}
        self.links: set[Link] = set()

    # --- reading -------------------------------------------------------------------------------

    def toxics(self) -> list[ToxicWrapper]:
        """Every toxic, upstream chain first, each in insertion order."""
        return [w for d in Direction for w in self.chains[d][1:]]

    def find(self, name: str) -> ToxicWrapper | None:
        for wrapper in self.toxics():
            if wrapper.name == name:
                return wrapper
        return None

    def get(self, name: str) -> ToxicWrapper:
        wrapper = self.find(name)
        if wrapper is None:
            raise errors.toxic_not_found()
        return wrapper

    # --- links ---------------------------------------------------------------------------------

    def start_links(
        self,
        ends: list[tuple[Direction, Endpoint, Endpoint]],
        on_done: Callable[[Link], None],
    ) -> list[Link]:
        """Create links for (direction, source, dest) and start them with the current chains.

        The caller holds ``lock``. All links exist before any starts, so ``on_done`` sees the
        whole set even when a link ends during its own start.
        """

        def finished(link: Link) -> None:
            self.links.discard(link)
            on_done(link)

        links = [Link(d, source, dest, self._rng, finished) for d, source, dest in ends]
        self.links.update(links)
        for link in links:
            link.start(self.chains[link.direction])
        return links

    def _links(self, direction: Direction) -> list[Link]:
        return [link for link in self.links if link.direction is direction and not link.done]

    # --- changes -------------------------------------------------------------------------------

    async def add_json(self, body: bytes) -> ToxicWrapper:
        async with self.lock:
            value = _parse(body)
            decoder = StructDecoder()
            fields = decoder.decode(value, _WRAPPER_STRUCT)
            if decoder.error is not None:
                raise errors.bad_request_body(decoder.error)
            stream = str(fields.get("stream", "downstream"))
            direction = parse_direction(stream)
            if direction is None:
                raise errors.invalid_stream()
            type_name = str(fields.get("type", ""))
            name = str(fields.get("name", "")) or f"{type_name}_{stream}"
            toxic_cls = REGISTRY.get(type_name)
            if toxic_cls is None:
                raise errors.invalid_toxic_type()
            if self.find(name) is not None:
                raise errors.toxic_exists()
            toxic = toxic_cls()
            attrs = StructDecoder()
            decoded = attrs.decode(value, _attributes_struct(toxic, with_toxicity=False))
            if attrs.error is not None:
                raise errors.bad_request_body(attrs.error)
            _configure(toxic, decoded)
            toxicity = fields.get("toxicity", 1.0)
            assert isinstance(toxicity, float)
            wrapper = ToxicWrapper(toxic, name, type_name, stream, toxicity, direction)
            chain = self.chains[direction]
            wrapper.index = len(chain)
            chain.append(wrapper)
            await _all(link.add_toxic(wrapper, chain) for link in self._links(direction))
            return wrapper

    async def update_json(self, name: str, body: bytes) -> ToxicWrapper:
        async with self.lock:
            wrapper = self.get(name)
            value = _parse(body)
            decoder = StructDecoder()
            fields = decoder.decode(value, _attributes_struct(wrapper.toxic, with_toxicity=True))
            candidate = wrapper.toxic.copy()
            _configure(candidate, fields)
            # Go decodes straight into the live toxic: on a type error the attributes that did
            # decode are already applied, and running stages read them, but nothing restarts.
            wrapper.toxic.set_attributes(candidate.attributes())
            if decoder.error is not None:
                raise errors.bad_request_body(decoder.error)
            toxicity = fields.get("toxicity", wrapper.toxicity)
            assert isinstance(toxicity, float)
            wrapper.toxicity = toxicity
            direction = wrapper.direction
            await _all(link.update_toxic(wrapper) for link in self._links(direction))
            return wrapper

    async def remove(self, name: str) -> None:
        async with self.lock:
            await self._remove(self.get(name))

    async def reset(self) -> None:
        """Remove every toxic (what /reset does after re-enabling the proxy)."""
        async with self.lock:
            for direction in Direction:
                chain = self.chains[direction]
                while len(chain) > 1:
                    await self._remove(chain[1])

    async def _remove(self, wrapper: ToxicWrapper) -> None:
        chain = self.chains[wrapper.direction]
        del chain[wrapper.index]
        for i in range(wrapper.index, len(chain)):
            chain[i].index = i
        links = self._links(wrapper.direction)
        await _all(link.remove_toxic(wrapper, chain) for link in links)
        wrapper.index = -1
