"""The C heap helpers, on this machine's glibc (the test image and CI are Debian)."""

from __future__ import annotations

import asyncio
import os

import pytest

from proxy.observability import heap

pytestmark = pytest.mark.skipif(not heap.stats()["glibc"], reason="the C library is not glibc")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def test_stats_tell_the_c_heap_from_python_blocks() -> None:
    doc = heap.stats()
    assert doc["glibc"] is True
    assert isinstance(doc["c_in_use_bytes"], int) and doc["c_in_use_bytes"] > 0
    assert isinstance(doc["c_free_bytes"], int) and doc["c_free_bytes"] >= 0
    assert isinstance(doc["python_blocks"], int) and doc["python_blocks"] > 0


def test_a_trim_returns_free_pages_held_between_live_blocks() -> None:
    assert heap.tune()
    # 64 KiB blocks come from the heap (under the fixed 128 KiB mmap threshold); every tenth
    # stays alive, so the freed ones lie between live blocks, below the heap's top, where only
    # a trim can give their pages back.
    blocks = [bytearray(os.urandom(16)) * 4096 for _ in range(600)]
    kept = blocks[::10]
    del blocks
    freed = heap.stats()["c_free_bytes"]
    assert isinstance(freed, int) and freed > 20 * 2**20
    before = rss_bytes()
    assert heap.trim()
    assert before - rss_bytes() > 16 * 2**20
    assert len(kept) == 60


async def test_serve_trims_on_its_interval_and_not_at_all_at_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from proxy import cli

    assert cli._start_heap_trim(0) is None
    trimmed = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The trim runs on a worker thread.
    monkeypatch.setattr(heap, "trim", lambda: loop.call_soon_threadsafe(trimmed.set))
    task = cli._start_heap_trim(0.01)
    assert task is not None
    try:
        await asyncio.wait_for(trimmed.wait(), 10)
    finally:
        task.cancel()
