"""The set of proxies: create, replace, populate, reset, delete.

Semantics are Toxiproxy v2.12.0's: a duplicate name is refused before any bind; /populate keeps a
proxy whose resolved listen address and upstream are unchanged (toxics, connections and enabled
state included) and replaces one that differs; /reset re-enables every proxy and removes every
toxic, in random order, stopping at the first proxy that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from chaos.toxiproxy import errors
from chaos.toxiproxy.gojson import GoField, GoStruct, JsonSyntaxError, StructDecoder, decode_first
from chaos.toxiproxy.link import Link
from chaos.toxiproxy.proxy import Proxy

__all__ = ["PROXY_STRUCT", "PopulateError", "ProxyCollection"]

_LOGGER_STRUCT = GoStruct("Logger", "zerolog.Logger", ())

# The Go struct proxy bodies are decoded into (its name appears in error messages).
PROXY_STRUCT = GoStruct(
    "Proxy",
    "toxiproxy.Proxy",
    (
        GoField("name", "string", "string"),
        GoField("listen", "string", "string"),
        GoField("upstream", "string", "string"),
        GoField("enabled", "bool", "bool"),
        GoField("Logger", "ptr", "zerolog.Logger", _LOGGER_STRUCT),
    ),
)

_POPULATE_ITEM = 'struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }'
_POPULATE_STRUCT = GoStruct(
    "",
    _POPULATE_ITEM,
    (
        GoField("name", "string", "string"),
        GoField("listen", "string", "string"),
        GoField("upstream", "string", "string"),
        GoField("Logger", "ptr", "zerolog.Logger", _LOGGER_STRUCT),
        GoField("enabled", "ptr", "bool"),
    ),
)


class PopulateError(Exception):
    """A failed /populate: the error and the proxies applied before it."""

    def __init__(self, error: errors.ApiError, applied: list[Proxy]) -> None:
        super().__init__(error.message)
        self.error = error
        self.applied = applied


class ProxyCollection:
    def __init__(
        self,
        rng: random.Random | None = None,
        on_link_done: Callable[[Proxy, Link], None] | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()
        self._on_link_done = on_link_done

    def new_proxy(self, name: str, listen: str, upstream: str) -> Proxy:
        return Proxy(name, listen, upstream, self.rng, self._on_link_done)

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise errors.proxy_not_found()
        return proxy

    async def add(self, proxy: Proxy, start: bool) -> None:
        async with self._lock:
            if proxy.name in self.proxies:
                raise errors.proxy_exists()
            if start:
                await proxy.start()
            self.proxies[proxy.name] = proxy

    async def remove(self, name: str) -> None:
        async with self._lock:
            proxy = self.get(name)
            await proxy.stop()
            del self.proxies[name]

    async def add_or_replace(self, proxy: Proxy, start: bool) -> Proxy:
        existing = self.proxies.get(proxy.name)
        if existing is not None:
            if not await existing.differs(proxy.listen, proxy.upstream):
                return existing
            await existing.stop()
        if start:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    async def populate_json(self, body: bytes) -> list[Proxy]:
        """Apply a /populate body; raises PopulateError (with what was applied) on failure."""
        try:
            value = decode_first(body)
        except JsonSyntaxError as exc:
            raise PopulateError(errors.bad_request_body(str(exc)), []) from None
        decoder = StructDecoder()
        items = decoder.decode_slice(value, _POPULATE_STRUCT, "[]" + _POPULATE_ITEM)
        if decoder.error is not None:
            raise PopulateError(errors.bad_request_body(decoder.error), [])
        for number, item in enumerate(items, start=1):
            if not item.get("name"):
                raise PopulateError(errors.missing_field(f"name at proxy {number}"), [])
            if not item.get("upstream"):
                raise PopulateError(errors.missing_field(f"upstream at proxy {number}"), [])
        applied: list[Proxy] = []
        async with self._lock:
            for item in items:
                enabled = item.get("enabled")
                proxy = self.new_proxy(
                    str(item["name"]), str(item.get("listen", "")), str(item["upstream"])
                )
                try:
                    applied.append(await self.add_or_replace(proxy, enabled is not False))
                except errors.ApiError as exc:
                    raise PopulateError(exc, applied) from None
        return applied

    async def reset(self) -> None:
        """Re-enable every proxy and drop every toxic, in random order, as the real server."""
        proxies = list(self.proxies.values())
        self.rng.shuffle(proxies)
        for proxy in proxies:
            with contextlib.suppress(errors.ProxyAlreadyStarted):
                await proxy.start()
            await proxy.toxics.reset()

    async def close(self) -> None:
        """Stop every proxy (used when the server shuts down)."""
        for proxy in list(self.proxies.values()):
            await proxy.stop()
