"""The two ways one generator process drives a server: closed loop and open loop.

Closed loop (saturation): every connection sends its next request as soon as the previous answer
is in. Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened before, and its
latency runs from that due time, so a slow answer shows in every request that waited behind it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from bench.loadgen_http import Client
from bench.tally import Tally


async def _open_connections(host: str, port: int, n: int, deadline: float) -> list[Client]:
    clients = [Client(host, port) for _ in range(n)]
    for c in clients:
        if time.monotonic() > deadline:
            raise TimeoutError("could not open the connections in time")
        await c.connect()
    return clients


async def closed_loop(
    host: str,
    port: int,
    build: Callable[[int], bytes],
    *,
    connections: int,
    warmup_s: float,
    duration_s: float,
    start_at: float | None,
) -> Tally:
    clients = await _open_connections(host, port, connections, time.monotonic() + 30)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    tally = Tally()
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    end = measure_from + duration_s
    counter = iter(range(1 << 62))
    lat = tally.latencies_us

    async def worker(client: Client) -> None:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            try:
                status = await client.request(build(next(counter)))
            except (ConnectionError, OSError):
                if started >= measure_from:
                    tally.errors += 1
                await asyncio.sleep(0.01)
                continue
            done = time.perf_counter()
            tally.answered_total += 1
            if measure_from <= done < end:
                lat.append(int((done - started) * 1e6))
                tally.status(status)

    tasks = [asyncio.create_task(worker(c)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + 10.0)
    for t in pending:
        t.cancel()
    tally.unfinished = len(pending)
    tally.window_s = duration_s
    for c in clients:
        c.close()
    return tally


async def open_loop(
    host: str,
    port: int,
    build: Callable[[int], bytes],
    *,
    rate: float,
    connections: int,
    warmup_s: float,
    duration_s: float,
    drain_s: float = 5.0,
    start_at: float | None = None,
    on_answer: Callable[[float, float, int], None] | None = None,
) -> Tally:
    """``on_answer(due, latency_s, status)`` for every measured answer (``due`` on
    ``time.perf_counter``'s clock), for a caller that needs each answer and not only the tally."""
    clients = await _open_connections(host, port, connections, time.monotonic() + 30)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    tally = Tally()
    interval = 1.0 / rate
    total = int(rate * (warmup_s + duration_s))
    measured_first = int(rate * warmup_s)
    queue: collections.deque[tuple[int, float]] = collections.deque()
    wake: asyncio.Queue[None] = asyncio.Queue()
    lat = tally.latencies_us
    lag = tally.send_lag_us
    t0 = time.perf_counter() + 0.005
    finished = asyncio.Event()
    last_done = 0.0

    async def worker(client: Client) -> None:
        nonlocal last_done
        while True:
            if not queue:
                if finished.is_set():
                    return
                await wake.get()
                continue
            i, due = queue.popleft()
            sent = time.perf_counter()
            try:
                status = await client.request(build(i))
            except (ConnectionError, OSError):
                if i >= measured_first:
                    tally.errors += 1
                continue
            tally.answered_total += 1
            if i >= measured_first:
                done = time.perf_counter()
                lat.append(int((done - due) * 1e6))
                lag.append(int((sent - due) * 1e6))
                tally.status(status)
                last_done = max(last_done, done)
                if on_answer is not None:
                    on_answer(due, done - due, status)

    tasks = [asyncio.create_task(worker(c)) for c in clients]
    i = 0
    while i < total:
        now = time.perf_counter()
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < total and t0 + i * interval <= now:
            queue.append((i, t0 + i * interval))
            wake.put_nowait(None)
            i += 1
    finished.set()
    for _ in tasks:
        wake.put_nowait(None)
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for t in pending:
        t.cancel()
    tally.unfinished = len(queue) + len(pending)
    tally.scheduled = total - measured_first
    tally.window_s = duration_s
    tally.span_s = max(0.0, last_done - (t0 + measured_first * interval))
    for c in clients:
        c.close()
    return tally
