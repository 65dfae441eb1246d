"""A proxy: its listener, enable/disable, and the connections it carries.

Behaviour follows Toxiproxy v2.12.0: every accepted client gets an upstream connection dialled
inside the accept loop with no timeout (so a black-holed upstream stalls further accepts), a failed
dial closes the client at once, and disabling closes the listener *and* every live socket of the
proxy while keeping its toxics. The listen address is replaced by the address actually bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable

from chaos.toxiproxy import errors
from chaos.toxiproxy.link import Endpoint, Link
from chaos.toxiproxy.netaddr import (
    AddrError,
    bind_listener,
    lookup_port,
    resolve_tcp_addr,
    split_host_port,
)
from chaos.toxiproxy.stream import Direction
from chaos.toxiproxy.toxic_collection import ToxicCollection

__all__ = ["Connection", "Proxy"]

_log = logging.getLogger("chaos.toxiproxy")

LinkObserver = Callable[["Proxy", Link], None]


class Connection:
    """A client socket, its upstream socket and the two links between them."""

    def __init__(self, proxy: Proxy, client: Endpoint, upstream: Endpoint) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.links: list[Link] = []
        self._live_links = 2

    def link_done(self, link: Link) -> None:
        self._live_links -= 1
        if self._live_links <= 0:
            self.proxy.forget(self)

    def abort(self) -> None:
        for link in self.links:
            link.kill()
        self.client.abort()
        self.upstream.abort()
        self.proxy.forget(self)


class Proxy:
    def __init__(
        self,
        name: str,
        listen: str,
        upstream: str,
        rng: random.Random,
        on_link_done: LinkObserver | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics = ToxicCollection(rng)
        self._lock = asyncio.Lock()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[Connection] = set()
        self._on_link_done = on_link_done

    def to_json(self) -> dict[str, object]:
        # Field order and the stray "Logger":{} are those of Toxiproxy 2.12.0's JSON.
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [w.to_json() for w in self.toxics.toxics()],
        }

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            await self._start()

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def _start(self) -> None:
        if self.enabled:
            raise errors.ProxyAlreadyStarted(self.name)
        try:
            sock, bound = await bind_listener(self.listen)
        except AddrError as exc:
            raise errors.server_error(str(exc)) from None
        self._listener = sock
        self.listen = bound
        self.enabled = True
        self._accept_task = asyncio.get_running_loop().create_task(self._serve(sock))
        _log.info("Started proxy", extra={"fields": {"name": self.name, "listen": bound}})

    async def _stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._connections):
            conn.abort()
        _log.info("Terminated proxy", extra={"fields": {"name": self.name}})

    async def differs(self, listen: str, upstream: str) -> bool:
        """Whether (listen, upstream) would make this a different proxy (Go's ``Differs``)."""
        try:
            resolved = str(await resolve_tcp_addr(listen))
        except AddrError as exc:
            raise errors.server_error(str(exc)) from None
        return self.listen != resolved or self.upstream != upstream

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        async with self._lock:
            if await self.differs(listen, upstream):
                # A new address or upstream always drops the live connections.
                await self._stop()
                self.listen = listen
                self.upstream = upstream
            if enabled != self.enabled:
                if enabled:
                    await self._start()
                else:
                    await self._stop()

    # --- connections ---------------------------------------------------------------------------

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _addr = await loop.sock_accept(listener)
            except OSError as exc:
                _log.warning(
                    "Error while accepting client",
                    extra={"fields": {"name": self.name, "error": str(exc)}},
                )
                return
            # Serially, as Toxiproxy does: the accept loop waits for the upstream dial.
            await self._handle(client)

    async def _dial(self, endpoint: Endpoint) -> None:
        host, port_text = split_host_port(self.upstream)
        port = lookup_port(port_text)
        loop = asyncio.get_running_loop()
        # An empty host means this machine, as for Go's Dial.
        await loop.create_connection(lambda: endpoint, host or "localhost", port)

    async def _handle(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        client_end, upstream_end = Endpoint(), Endpoint()
        try:
            await self._dial(upstream_end)
        except (OSError, AddrError) as exc:
            _log.error(
                "Unable to open connection to upstream",
                extra={"fields": {"name": self.name, "upstream": self.upstream, "error": str(exc)}},
            )
            client.close()
            return
        except BaseException:
            client.close()
            raise
        try:
            await loop.connect_accepted_socket(lambda: client_end, client)
        except BaseException:
            client.close()
            upstream_end.abort()
            raise
        conn = Connection(self, client_end, upstream_end)
        self._connections.add(conn)
        async with self.toxics.lock:
            if conn not in self._connections:
                # Aborted (proxy disabled) while waiting for the lock.
                return
            ends = [
                (Direction.UPSTREAM, client_end, upstream_end),
                (Direction.DOWNSTREAM, upstream_end, client_end),
            ]
            conn.links = self.toxics.start_links(ends, self._link_finished(conn))

    def _link_finished(self, conn: Connection) -> Callable[[Link], None]:
        def done(link: Link) -> None:
            conn.link_done(link)
            if self._on_link_done is not None:
                self._on_link_done(self, link)

        return done
