"""The event loop thread's wait for a core, read from the kernel (`runqueue`)."""

from __future__ import annotations

import sys
import threading

import pytest

from proxy.observability import runqueue
from proxy.observability.runqueue import RunQueueWait


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_it_reads_a_growing_wait_of_the_thread_that_opened_it() -> None:
    wait = RunQueueWait.open()
    assert wait is not None
    try:
        first = wait()
        assert first is not None and first >= 0
        # Other threads spinning make this one wait for a core at some point, on any machine.
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                pass

        spinners = [threading.Thread(target=spin) for _ in range(4)]
        for t in spinners:
            t.start()
        try:
            later = first
            for _ in range(2_000):
                later = wait() or later
                if later > first:
                    break
                sum(range(10_000))
        finally:
            stop.set()
            for t in spinners:
                t.join()
        assert later > first
    finally:
        wait.close()
        wait.close()  # a second close does nothing
    assert wait() is None  # closed: nothing to read


def test_without_the_file_there_is_nothing_to_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runqueue, "_PATH", "/nonexistent/schedstat")
    assert RunQueueWait.open() is None
