"""Connections: enable/disable, delete, dial failures, half-close, reset, populate, metrics."""

from __future__ import annotations

import asyncio

import pytest

from chaos.toxiproxy.server import ToxiproxyServer
from chaos.toxiproxy.testing import free_port

from .support import Api, Client, EchoServer, eventually, port_of

pytestmark = pytest.mark.timeout(60)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_plain_pass_through(api: Api, echo: EchoServer, clients: list[Client]) -> None:
    proxy = await api.create_proxy("p", echo.address)
    connected = [await Client.connect(port_of(proxy)) for _ in range(10)]
    clients.extend(connected)
    # Each comes back whole (roundtrip checks the echo) on its own connection.
    await asyncio.gather(*(c.roundtrip(b"hello %d" % i) for i, c in enumerate(connected)))


async def test_disable_closes_live_connections_and_refuses_new_ones(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    port = port_of(proxy)
    await api.add_toxic("p", type="latency", attributes={"latency": 200})
    client = await Client.connect(port)
    clients.append(client)
    assert await client.roundtrip(b"up") >= 0.2
    disabled = await api.set_enabled("p", False)
    assert disabled["enabled"] is False
    assert await client.ending() == ("eof", b"")
    assert await refused(port)
    # Toxics survive disable and apply to new connections once enabled again.
    assert [t["name"] for t in disabled["toxics"]] == ["latency_downstream"]
    enabled = await api.set_enabled("p", True)
    assert enabled["listen"] == proxy["listen"]
    again = await Client.connect(port)
    clients.append(again)
    assert await again.roundtrip(b"back") >= 0.2


async def test_disable_resets_links_that_had_reset_peer_at_creation(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    # Toxicity 0: the toxic never fires, but the link still sets SO_LINGER 0 on its sockets.
    await api.add_toxic("p", type="reset_peer", toxicity=0, attributes={"timeout": 0})
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    await client.roundtrip(b"fine")
    await api.set_enabled("p", False)
    assert (await client.ending())[0] == "reset"


async def test_delete_closes_connections_and_the_listener(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    await client.roundtrip(b"x")
    await api.json("DELETE", "/proxies/p", expect=204)
    assert await client.ending() == ("eof", b"")
    assert await refused(port_of(proxy))


async def test_upstream_change_drops_connections_even_when_enabled(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    await client.roundtrip(b"x")
    other = EchoServer()
    await other.start()
    try:
        updated = await api.json("PATCH", "/proxies/p", {"upstream": other.address})
        assert updated["enabled"] is True
        assert await client.ending() == ("eof", b"")
        fresh = await Client.connect(port_of(proxy))
        clients.append(fresh)
        await fresh.roundtrip(b"y")
        assert other.accepted == 1
    finally:
        await other.close()


async def test_failed_upstream_dial_closes_the_client(api: Api, clients: list[Client]) -> None:
    proxy = await api.create_proxy("p", f"127.0.0.1:{free_port()}")
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    assert await client.ending() == ("eof", b"")
    # The proxy keeps accepting.
    second = await Client.connect(port_of(proxy))
    clients.append(second)
    assert await second.ending() == ("eof", b"")


async def test_half_close_loses_the_response(api: Api, clients: list[Client]) -> None:
    slow = EchoServer(delay=0.1)
    await slow.start()
    try:
        proxy = await api.create_proxy("p", slow.address)
        client = await Client.connect(port_of(proxy))
        clients.append(client)
        client.send(b"bye")
        client.writer.write_eof()
        assert await client.ending() == ("eof", b"")
    finally:
        await slow.close()


async def test_reset_keeps_connections_but_closes_timeout_holds(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    plain = await api.create_proxy("plain", echo.address)
    held = await api.create_proxy("held", echo.address)
    await api.add_toxic("plain", type="latency", attributes={"latency": 100})
    await api.add_toxic("held", type="timeout", attributes={"timeout": 0})
    keep = await Client.connect(port_of(plain))
    hold = await Client.connect(port_of(held))
    clients.extend([keep, hold])
    assert await keep.roundtrip(b"a") >= 0.1
    hold.send(b"swallowed")
    await api.json("POST", "/reset", expect=204)
    assert await hold.ending() == ("eof", b"")
    assert await keep.roundtrip(b"b") < 0.1 + 0.4


async def test_populate_keeps_live_connections_of_unchanged_proxies(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    await client.roundtrip(b"x")
    body = [{"name": "p", "listen": proxy["listen"], "upstream": echo.address}]
    await api.json("POST", "/populate", body, expect=201)
    await client.roundtrip(b"still here")


async def test_proxy_metrics_count_bytes_when_links_end(
    toxi: ToxiproxyServer, api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    await client.roundtrip(b"12345")
    _, body, _ = await api.call("GET", "/metrics")
    assert b"toxiproxy_proxy_received_bytes_total{" not in body
    client.close()
    await eventually(lambda: toxi.collection.get("p").connection_count == 0)
    _, body, _ = await api.call("GET", "/metrics")
    labels = f'listener="{proxy["listen"]}",proxy="p",upstream="{echo.address}"'
    assert f'toxiproxy_proxy_received_bytes_total{{direction="upstream",{labels}}} 5.0' in (
        body.decode()
    )
    assert f'toxiproxy_proxy_sent_bytes_total{{direction="downstream",{labels}}} 5.0' in (
        body.decode()
    )


async def test_upstream_that_speaks_first_is_relayed(api: Api, clients: list[Client]) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    try:
        upstream = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        proxy = await api.create_proxy("p", upstream)
        client = await Client.connect(port_of(proxy))
        clients.append(client)
        assert await client.read_exactly(11) == b"220 ready\r\n"
        client.writer.write_eof()
        assert await client.ending() == ("eof", b"")
    finally:
        server.close()
        await server.wait_closed()


async def test_toxicity_is_drawn_per_connection(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    proxy = await api.create_proxy("p", echo.address)
    await api.add_toxic("p", type="latency", toxicity=0.5, attributes={"latency": 250})
    connected = [await Client.connect(port_of(proxy)) for _ in range(16)]
    clients.extend(connected)
    times = await asyncio.gather(*(c.roundtrip(b"t") for c in connected))
    slow = sum(1 for t in times if t >= 0.25)
    assert 0 < slow < len(times)
