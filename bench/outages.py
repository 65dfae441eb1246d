"""PostgreSQL taken away from the sidecar and given back, and waiting for the sidecar to notice.

Each run makes its outage its own way: the benchmark stops PostgreSQL once and trips the breakers
before it measures, the soak stops and starts it on a schedule, and the pressure run cuts it off
behind the Toxiproxy-compatible proxy while the load goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlparse

from bench.client import http
from bench.servers import HOST, Server
from bench.status import status_of


async def trip_breakers(servers: list[Server], token: str, agent: str, timeout_s: float) -> None:
    """Send reads until each sidecar's breaker is open (PostgreSQL is already stopped)."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        for server in servers:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                doc = await status_of(server, token)
                if doc["breaker"]["state"] == "open":
                    break
                for _ in range(10):
                    with contextlib.suppress(OSError):
                        await http(
                            f"{server.url}/v1/agents/{agent}", token=token, session=s, timeout_s=5
                        )
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{server.name}: breaker did not open within {timeout_s}s")


async def recover(
    sidecars: list[Server], direct: Server, token: str, agent: str, timeout_s: float
) -> None:
    """After PostgreSQL is back: until each breaker is closed and each replica listens again,
    and the direct asyncpg baseline answers again."""
    end = time.monotonic() + timeout_s
    for server in sidecars:
        while True:
            doc = await status_of(server, token)
            # With read_mode=replica, reads never reach PostgreSQL while the replica is fresh, so
            # no trial call closes a half-open breaker: half_open counts as recovered.
            state = doc["breaker"]["state"]
            if state in ("closed", "half_open") and doc["replica"].get("connected", True):
                break
            if time.monotonic() > end:
                raise RuntimeError(
                    f"{server.name} did not recover within {timeout_s}s: breaker {state}, "
                    f"replica connected {doc['replica'].get('connected')}"
                )
            with contextlib.suppress(OSError):
                await http(f"{server.url}/v1/agents/{agent}", token=token, timeout_s=5)
            await asyncio.sleep(0.2)
    ok = 0
    while ok < 10:
        if time.monotonic() > end:
            raise RuntimeError(f"{direct.name} did not recover within {timeout_s}s")
        try:
            status, _ = await http(f"{direct.url}/v1/agents/{agent}", timeout_s=5)
        except OSError:
            status = 0
        ok = ok + 1 if status == 200 else 0
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def behind_toxiproxy(pg: Any) -> AsyncIterator[tuple[Any, str]]:
    """PostgreSQL started behind the Toxiproxy-compatible server (``python -m chaos.toxiproxy``):
    the proxy to disable (the cut) and enable again (the heal), and a DSN through it."""
    from toxiproxy import Toxiproxy

    from chaos.toxiproxy.testing import toxiproxy_process

    with toxiproxy_process() as toxi_url:
        await asyncio.to_thread(pg.start)
        parsed = urlparse(toxi_url)
        toxiproxy = Toxiproxy()
        toxiproxy.update_api_consumer(parsed.hostname, parsed.port)
        pg_proxy = await asyncio.to_thread(
            toxiproxy.create, upstream=f"{HOST}:{pg.port}", name="pg", listen=f"{HOST}:0"
        )
        port = pg_proxy.listen.rpartition(":")[2]
        yield pg_proxy, f"postgresql://postgres@{HOST}:{port}/postgres"
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg_proxy.destroy)


def toxiproxy_pids() -> list[int]:
    """The Toxiproxy-compatible server among this process's children: its CPU time is the
    outage machinery's, not the sidecar's."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chaos.toxiproxy" in " ".join(child.cmdline()):
                pids.append(child.pid)
    return pids


async def stop_start(
    pg: Any,
    *,
    start: float,
    first_s: float,
    every_s: float,
    down_s: float,
    until: float,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Stop and start PostgreSQL on a schedule (a clean ``pg_ctl stop -m fast``); none starts
    too close to `until`."""
    events: list[dict[str, Any]] = []
    at = start + first_s
    while at + down_s <= until:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        log("outage: stopping PostgreSQL")
        t_stop = time.monotonic()
        await asyncio.to_thread(pg.stop, "fast")
        await asyncio.sleep(max(0.0, t_stop + down_s - time.monotonic()))
        await asyncio.to_thread(pg.start)
        log("outage: PostgreSQL started again")
        events.append(
            {
                "stopped_at_s": round(t_stop - start, 1),
                "down_s": round(time.monotonic() - t_stop, 1),
            }
        )
        at += every_s
    return events
