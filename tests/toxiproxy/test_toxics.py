"""Each toxic's effect on real traffic through the proxy, measured on a local echo server.

Lower bounds on delays are tight (a toxic must delay at least that long); upper bounds are generous
because the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from chaos.toxiproxy.toxics.slicer import SlicerToxic

from .support import SLACK, Api, Client, EchoServer, port_of

pytestmark = pytest.mark.timeout(60)


async def proxied(api: Api, echo: EchoServer, clients: list[Client]) -> tuple[int, Client]:
    proxy = await api.create_proxy("p", echo.address)
    client = await Client.connect(port_of(proxy))
    clients.append(client)
    return port_of(proxy), client


async def connect(port: int, clients: list[Client]) -> Client:
    client = await Client.connect(port)
    clients.append(client)
    return client


# --- latency ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
async def test_latency_delays_each_round_trip(
    api: Api, echo: EchoServer, clients: list[Client], stream: str
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", stream=stream, attributes={"latency": 300})
    client = await connect(port, clients)
    for _ in range(2):
        elapsed = await client.roundtrip(b"ping")
        assert 0.3 <= elapsed < 0.3 + SLACK


async def test_latency_jitter_stays_in_range(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", attributes={"latency": 200, "jitter": 100})
    client = await connect(port, clients)
    for _ in range(3):
        elapsed = await client.roundtrip(b"j")
        assert 0.1 <= elapsed < 0.3 + SLACK


async def test_chained_latencies_add_up(api: Api, echo: EchoServer, clients: list[Client]) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", name="a", attributes={"latency": 150})
    await api.add_toxic("p", type="latency", name="b", attributes={"latency": 150})
    client = await connect(port, clients)
    elapsed = await client.roundtrip(b"twice")
    assert 0.3 <= elapsed < 0.3 + SLACK


async def test_latency_pipelines_a_burst(api: Api, echo: EchoServer, clients: list[Client]) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", stream="upstream", attributes={"latency": 300})
    client = await connect(port, clients)
    loop = asyncio.get_running_loop()
    start = loop.time()
    # Separate writes, each its own chunk: measured from read time they overlap.
    for i in range(5):
        client.send(bytes([65 + i]) * 10)
        await client.writer.drain()
        await asyncio.sleep(0.02)
    data = await client.read_exactly(50)
    elapsed = loop.time() - start
    assert data == b"".join(bytes([65 + i]) * 10 for i in range(5))
    assert 0.3 <= elapsed < 0.3 + 5 * 0.02 + SLACK


async def test_live_toxics_apply_to_open_connections(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    # Delays far apart, so a loaded machine cannot make a direct round trip look delayed.
    _, client = await proxied(api, echo, clients)
    assert await client.roundtrip(b"before") < SLACK
    await api.add_toxic("p", type="latency", attributes={"latency": 800})
    assert await client.roundtrip(b"during") >= 0.8
    await api.json(
        "PATCH", "/proxies/p/toxics/latency_downstream", {"attributes": {"latency": 1300}}
    )
    assert await client.roundtrip(b"updated") >= 1.3
    await api.remove_toxic("p", "latency_downstream")
    assert await client.roundtrip(b"after") < SLACK


async def test_removing_a_toxic_mid_stream_loses_nothing(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    _, client = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", stream="upstream", attributes={"latency": 200})
    await api.add_toxic("p", type="latency", name="down", attributes={"latency": 50})
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(4096))
    for offset in range(0, len(payload), 256):
        client.send(payload[offset : offset + 256])
        await client.writer.drain()
    await api.remove_toxic("p", "latency_upstream")
    client.send(b"tail")
    await api.remove_toxic("p", "down")
    received = await client.read_exactly(len(payload) + 4)
    assert received == payload + b"tail"
    assert await client.roundtrip(b"direct again") < SLACK


async def test_toxicity_zero_never_applies(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="latency", toxicity=0, attributes={"latency": 1000})
    client = await connect(port, clients)
    assert await client.roundtrip(b"fast") < 0.5


# --- bandwidth ----------------------------------------------------------------------------------


async def test_bandwidth_limits_throughput(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="bandwidth", attributes={"rate": 10})
    client = await connect(port, clients)
    elapsed = await client.roundtrip(b"x" * 5000, timeout=10)
    assert 0.5 <= elapsed < 0.5 + SLACK


async def test_bandwidth_zero_stalls_until_removed(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="bandwidth", attributes={"rate": 0})
    client = await connect(port, clients)
    client.send(b"stuck")
    assert await client.nothing_for(0.4)
    await api.remove_toxic("p", "bandwidth_downstream")
    assert await client.read_exactly(5) == b"stuck"


# --- slow_close ---------------------------------------------------------------------------------


async def test_slow_close_delays_the_close(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="slow_close", attributes={"delay": 700})
    client = await connect(port, clients)
    assert await client.roundtrip(b"data") < 0.5
    loop = asyncio.get_running_loop()
    start = loop.time()
    client.writer.write_eof()
    outcome, rest = await client.ending()
    assert (outcome, rest) == ("eof", b"")
    assert 0.7 <= loop.time() - start < 0.7 + SLACK


# --- timeout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
async def test_timeout_drops_data_then_closes(
    api: Api, echo: EchoServer, clients: list[Client], stream: str
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="timeout", stream=stream, attributes={"timeout": 500})
    client = await connect(port, clients)
    loop = asyncio.get_running_loop()
    start = loop.time()
    client.send(b"lost")
    assert await client.ending() == ("eof", b"")
    assert 0.5 <= loop.time() - start < 0.5 + SLACK


async def test_timeout_zero_hangs_until_removed_and_never_delivers(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="timeout", attributes={"timeout": 0})
    client = await connect(port, clients)
    client.send(b"swallowed")
    assert await client.nothing_for(0.4)
    await api.remove_toxic("p", "timeout_downstream")
    assert await client.ending() == ("eof", b"")


async def test_timeout_added_to_a_live_connection_counts_from_then(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    _, client = await proxied(api, echo, clients)
    assert await client.roundtrip(b"ok") < 0.5
    loop = asyncio.get_running_loop()
    start = loop.time()
    await api.add_toxic("p", type="timeout", attributes={"timeout": 300})
    assert await client.ending() == ("eof", b"")
    assert 0.3 <= loop.time() - start < 0.3 + SLACK


# --- reset_peer ---------------------------------------------------------------------------------


async def test_reset_peer_sends_rst_to_new_connections(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="reset_peer", attributes={"timeout": 0})
    client = await connect(port, clients)
    client.send(b"boom")
    assert (await client.ending())[0] == "reset"


async def test_reset_peer_waits_its_timeout(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="reset_peer", attributes={"timeout": 300})
    client = await connect(port, clients)
    # Nothing happens on an idle connection.
    assert await client.nothing_for(0.4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    client.send(b"boom")
    assert (await client.ending())[0] == "reset"
    assert 0.3 <= loop.time() - start < 0.3 + SLACK


async def test_reset_peer_upstream_resets_both_sides(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="reset_peer", stream="upstream", attributes={"timeout": 0})
    client = await connect(port, clients)
    await echo.wait_for(lambda: echo.accepted == 2)
    client.send(b"boom")
    assert (await client.ending())[0] == "reset"
    # The upstream server saw an RST too (the first client is still connected).
    await echo.wait_for(lambda: len(echo.outcomes) == 1)
    assert echo.outcomes == ["reset"]


async def test_reset_peer_on_a_live_connection_is_a_plain_close(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    _, client = await proxied(api, echo, clients)
    assert await client.roundtrip(b"ok") < 0.5
    await api.add_toxic("p", type="reset_peer", attributes={"timeout": 0})
    client.send(b"boom")
    assert await client.ending() == ("eof", b"")


# --- slicer -------------------------------------------------------------------------------------


def test_slicer_halves_until_pieces_fit() -> None:
    toxic = SlicerToxic()
    toxic.average_size = 100
    pieces = toxic.pieces(1000, random.Random(0))
    sizes = [end - start for start, end in pieces]
    assert len(sizes) == 16
    assert set(sizes) == {62, 63}
    assert pieces[0][0] == 0
    assert pieces[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))


def test_slicer_variation_bounds_piece_sizes() -> None:
    toxic = SlicerToxic()
    toxic.average_size, toxic.size_variation = 100, 30
    pieces = toxic.pieces(5000, random.Random(7))
    sizes = [end - start for start, end in pieces]
    assert sum(sizes) == 5000
    assert all(1 <= size <= 130 for size in sizes)
    toxic.size_variation = 200
    assert toxic.pieces(250, random.Random(7)) == [(0, 250)]


def test_slicer_random_cut_never_leaves_the_piece() -> None:
    toxic = SlicerToxic()
    toxic.average_size, toxic.size_variation = 1, 1000
    rng = random.Random(3)
    for size in (1002, 1500, 3000):
        pieces = toxic.pieces(size, rng)
        assert sum(end - start for start, end in pieces) == size
        assert all(end > start for start, end in pieces)


async def test_slicer_delivers_everything_with_delays(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic(
        "p", type="slicer", attributes={"average_size": 100, "size_variation": 0, "delay": 20000}
    )
    client = await connect(port, clients)
    payload = bytes(range(256)) * 4
    elapsed = await client.roundtrip(payload)
    # At least 15 gaps of 20 ms between the 16 pieces of a 1024-byte chunk.
    assert 0.3 <= elapsed < 0.35 + SLACK


# --- limit_data ---------------------------------------------------------------------------------


async def test_limit_data_truncates_then_closes(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="limit_data", attributes={"bytes": 5})
    client = await connect(port, clients)
    client.send(b"0123456789")
    assert await client.ending() == ("eof", b"01234")


async def test_limit_data_counts_across_chunks_and_updates(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="limit_data", attributes={"bytes": 8})
    client = await connect(port, clients)
    assert await client.roundtrip(b"abcde") < 0.5
    # The count (5 so far) survives the update: 5 more bytes may pass.
    await api.json(
        "PATCH", "/proxies/p/toxics/limit_data_downstream", {"attributes": {"bytes": 10}}
    )
    client.send(b"fghijklmn")
    assert await client.ending() == ("eof", b"fghij")


async def test_limit_data_zero_closes_on_first_chunk_only(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    port, _ = await proxied(api, echo, clients)
    await api.add_toxic("p", type="limit_data", stream="upstream", attributes={"bytes": 0})
    client = await connect(port, clients)
    assert await client.nothing_for(0.3)
    client.send(b"x")
    assert await client.ending() == ("eof", b"")


# --- noop and the pipeline itself ---------------------------------------------------------------


async def test_bulk_transfer_through_a_pipeline(
    api: Api, echo: EchoServer, clients: list[Client]
) -> None:
    _, client = await proxied(api, echo, clients)
    await api.add_toxic("p", type="noop", stream="upstream")
    await api.add_toxic("p", type="noop")
    payload = random.Random(5).randbytes(2 * 1024 * 1024)

    async def send() -> None:
        for offset in range(0, len(payload), 65536):
            client.send(payload[offset : offset + 65536])
            await client.writer.drain()

    sender = asyncio.create_task(send())
    received = await client.read_exactly(len(payload), timeout=30)
    await sender
    assert received == payload
