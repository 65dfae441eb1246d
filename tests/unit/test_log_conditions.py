"""Repeating conditions, request ids of background work, and asyncio's harmless report."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from proxy.observability.asyncio_noise import is_abandoned_tls_probe, quiet_abandoned_connects
from proxy.observability.conditions import (
    POOL_FLOOR,
    Condition,
    PoolFloorFilter,
    Repeats,
)
from proxy.observability.logging import REQUEST_ID, configure
from proxy.settings import unknown_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    yield stream
    configure(level="warning", fmt="json")


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_condition_is_logged_on_entry_summarised_once_a_minute_and_on_exit() -> None:
    clock, out = Clock(), Recorder()
    cond = Condition(out, "database not reachable yet", end_event="database reachable", clock=clock)
    for _ in range(241):  # two minutes of attempts every half second
        cond.occurred(error="ConnectionRefusedError: refused")
        clock.now += 0.5
    cond.ended()
    cond.ended()  # over already: nothing more
    events = [(level, event) for level, event, _ in out.lines]
    assert events == [
        ("warning", "database not reachable yet"),
        ("warning", "database not reachable yet"),
        ("warning", "database not reachable yet"),
        ("info", "database reachable"),
    ]
    first, second, third, end = (fields for _, _, fields in out.lines)
    assert first == {"error": "ConnectionRefusedError: refused"}
    assert second["repeated"] == 120 and second["for_s"] == 60.0
    assert third["repeated"] == 120 and third["for_s"] == 120.0
    assert end == {"for_s": 120.5, "occurrences": 241}
    assert not cond.active


def test_a_condition_begins_again_after_it_ended_and_may_name_its_entry() -> None:
    clock, out = Clock(), Recorder()
    cond = Condition(out, "replica listener lost", end_event="replica listener back", clock=clock)
    cond.occurred("replica listener cannot connect", error="x")
    cond.ended(agents=3)
    cond.occurred(error="y")
    assert [event for _, event, _ in out.lines] == [
        "replica listener cannot connect",
        "replica listener back",
        "replica listener lost",
    ]
    assert out.lines[1][2] == {"agents": 3, "for_s": 0.0, "occurrences": 1}


def test_repeats_folds_a_listed_event_and_the_ending_event_says_how_long() -> None:
    clock = Clock()
    fold = Repeats({"journal replay failed": "journal drained"}, clock=clock)
    written: list[dict[str, Any]] = []

    def log(event: dict[str, Any]) -> None:
        with contextlib.suppress(structlog.DropEvent):
            written.append(dict(fold(None, "error", event)))

    for _ in range(100):  # every two seconds for 200 s
        log({"event": "journal replay failed", "error": "boom"})
        clock.now += 2
    log({"event": "journal replay failed", "error": "boom", "request_id": "r"})  # a request's
    log({"event": "journal drained", "entries": 7})
    log({"event": "journal drained", "entries": 1})
    log({"event": "something else", "error": "boom"})
    log({"event": "something else", "error": "boom"})
    events = [line["event"] for line in written]
    assert events.count("journal replay failed") == 5  # 0 s, 60 s, 120 s, 180 s, the request's
    assert [line.get("repeated") for line in written[:4]] == [None, 29, 29, 29]
    drained = [line for line in written if line["event"] == "journal drained"]
    assert drained[0]["ends"] == "journal replay failed"
    assert drained[0]["occurrences"] == 100 and drained[0]["for_s"] == 200.0
    assert "ends" not in drained[1]
    assert events.count("something else") == 2


def test_asyncpgs_pool_floor_warning_becomes_one_line_without_traceback(
    captured: io.StringIO,
) -> None:
    POOL_FLOOR.ended()
    captured.seek(0)
    captured.truncate(0)
    logger = logging.getLogger("asyncpg.pool")
    assert any(isinstance(f, PoolFloorFilter) for f in logger.filters)
    for _ in range(5):
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError:
            logger.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    logger.warning("something else from the pool")
    POOL_FLOOR.ended()
    lines = _lines(captured)
    assert [line["event"] for line in lines] == [
        "database pool cannot restore its minimum connections",
        "something else from the pool",
        "database pool back at its minimum connections",
    ]
    assert lines[0]["error"] == "ConnectionRefusedError: [Errno 111] Connect call failed"
    assert lines[2]["occurrences"] == 5
    assert not any("exception" in line for line in lines)


async def test_a_task_started_during_a_request_does_not_carry_its_id(
    captured: io.StringIO,
) -> None:
    log = structlog.get_logger("test")

    async def background(step: str) -> None:
        log.info("background line", step=step)

    token = REQUEST_ID.set("req-1")
    try:
        log.info("request line")
        during = asyncio.create_task(background("during"), name="snapshotter")
        await during
        after = asyncio.create_task(background("after"))
    finally:
        REQUEST_ID.reset(token)
    await after
    log.info("after the request")
    lines = {line.get("step", line["event"]): line for line in _lines(captured)}
    assert lines["request line"]["request_id"] == "req-1"
    assert "request_id" not in lines["during"] and lines["during"]["task"] == "snapshotter"
    assert "request_id" not in lines["after"] and "task" not in lines["after"]  # "Task-n"
    assert "request_id" not in lines["after the request"]
    assert REQUEST_ID.get() is None


async def test_a_request_id_set_in_a_loop_callback_is_its_own_and_no_tasks(
    captured: io.StringIO,
) -> None:
    """`set_outside_tasks`, as a protocol's `data_received` uses it: lines of the callback carry
    the id, a task it starts does not."""
    log = structlog.get_logger("test")
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []
    ran = asyncio.Event()

    async def background() -> None:
        log.info("background line")

    def callback() -> None:
        token = REQUEST_ID.set_outside_tasks("req-3")
        try:
            log.info("callback line")
            started.append(loop.create_task(background()))
        finally:
            REQUEST_ID.reset(token)
        ran.set()

    loop.call_soon(callback)
    await ran.wait()
    await started[0]
    lines = {line["event"]: line for line in _lines(captured)}
    assert lines["callback line"]["request_id"] == "req-3"
    assert "request_id" not in lines["background line"]


def test_the_request_id_outside_a_loop() -> None:
    token = REQUEST_ID.set("req-2")
    try:
        assert REQUEST_ID.get() == "req-2"
    finally:
        REQUEST_ID.reset(token)
    assert REQUEST_ID.get() is None


def _unretrieved(exc: BaseException) -> dict[str, Any]:
    return {"message": "Future exception was never retrieved", "exception": exc}


def test_only_asyncpgs_abandoned_tls_probe_is_recognised() -> None:
    assert is_abandoned_tls_probe(
        _unretrieved(ConnectionError("unexpected connection_lost() call"))
    )
    assert not is_abandoned_tls_probe(_unretrieved(ConnectionError("something else")))
    assert not is_abandoned_tls_probe(
        _unretrieved(ConnectionResetError("unexpected connection_lost() call"))
    )
    raised: BaseException | None = None
    try:
        raise ConnectionError("unexpected connection_lost() call")
    except ConnectionError as exc:
        raised = exc
    assert not is_abandoned_tls_probe(_unretrieved(raised))
    assert not is_abandoned_tls_probe(
        {
            "message": "Task exception was never retrieved",
            "exception": ConnectionError("unexpected connection_lost() call"),
        }
    )


async def test_the_loop_drops_that_report_and_passes_on_the_others() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        quiet_abandoned_connects(loop)
        quiet_abandoned_connects(loop)  # idempotent: wraps once

        def lost(text: str) -> None:
            fut = loop.create_future()
            fut.set_exception(ConnectionError(text))
            del fut  # collected unretrieved: asyncio reports it to the loop's handler

        lost("unexpected connection_lost() call")
        lost("a real problem")
        gc.collect()
        assert [str(c["exception"]) for c in seen] == ["a real problem"]
    finally:
        loop.set_exception_handler(previous)


def test_the_status_commands_token_variables_are_no_stray_settings() -> None:
    env = {
        "REGISTRY_PROXY_STATUS_TOKEN": "x",
        "REGISTRY_PROXY_STATUS_TOKEN_FILE": "/t",
        "REGISTRY_PROXY_STATUS": "y",
    }
    assert [name for name, _ in unknown_env(env)] == ["REGISTRY_PROXY_STATUS"]
