"""The listener's notification window, on a recording transport and a scheduler run by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy.store.notify_window import NotifyWindow


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.calls.append("resume")


class Timer:
    def __init__(self, delay: float, callback: Callable[[], object]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        """Runs the timers that are due, as the loop would once their delay has passed."""
        due, self.timers = self.timers, []
        for timer in due:
            if not timer.cancelled:
                timer.callback()


@pytest.fixture
def parts() -> tuple[Transport, Scheduler]:
    return Transport(), Scheduler()


def test_a_notification_stops_reading_for_the_window_then_reading_resumes(
    parts: tuple[Transport, Scheduler],
) -> None:
    transport, loop = parts
    window = NotifyWindow(transport, window_s=0.01, loop=loop)
    window.heard()
    assert not transport.reading
    assert [t.delay for t in loop.timers] == [0.01]
    # More notifications inside the window: nothing more to do.
    window.heard()
    window.heard()
    assert transport.calls == ["pause"] and len(loop.timers) == 1
    loop.fire()
    assert transport.reading
    assert transport.calls == ["pause", "resume"]
    assert window.windows == 1
    # What the window held back is read now; the next one heard opens a new window.
    window.heard()
    assert transport.calls == ["pause", "resume", "pause"] and window.windows == 2


def test_a_window_of_zero_never_stops_reading(parts: tuple[Transport, Scheduler]) -> None:
    transport, loop = parts
    window = NotifyWindow(transport, window_s=0, loop=loop)
    for _ in range(5):
        window.heard()
    assert transport.calls == [] and loop.timers == [] and window.windows == 0


def test_a_query_reopens_the_socket_at_once_and_no_window_opens_while_it_runs(
    parts: tuple[Transport, Scheduler],
) -> None:
    transport, loop = parts
    window = NotifyWindow(transport, window_s=0.01, loop=loop)
    window.heard()
    with window.querying():
        # The answer must not wait for the window: reading resumed, the timer dropped.
        assert transport.reading
        assert loop.timers[0].cancelled
        # Notifications read along with the answer do not close the socket under it.
        window.heard()
        assert transport.reading
    assert transport.calls == ["pause", "resume"]
    loop.fire()
    assert transport.calls == ["pause", "resume"], "a cancelled window resumed again"
    window.heard()
    assert not transport.reading


def test_nested_queries_keep_the_socket_open_until_the_last_ends(
    parts: tuple[Transport, Scheduler],
) -> None:
    transport, loop = parts
    window = NotifyWindow(transport, window_s=0.01, loop=loop)
    with window.querying():
        with window.querying():
            window.heard()
        window.heard()
        assert transport.reading
    window.heard()
    assert not transport.reading


def test_closing_drops_the_timer_and_leaves_the_transport_alone(
    parts: tuple[Transport, Scheduler],
) -> None:
    transport, loop = parts
    window = NotifyWindow(transport, window_s=0.01, loop=loop)
    window.heard()
    window.close()
    assert loop.timers[0].cancelled
    loop.fire()
    # The connection is going away: no resume on a transport being torn down.
    assert transport.calls == ["pause"]
