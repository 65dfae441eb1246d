"""structlog setup: JSON lines for machines, a console renderer when a person watches a TTY.

Every line written by the task handling a request carries its request id (set by the HTTP
middleware), and its trace id beside it when tracing is on (set with the request id). Lines
of background work carry none, even from a task created while a request ran: they name their
task instead, when it has a name. The standard library's loggers (asyncpg, aiohttp) are routed
through the same renderer, so the log stays one JSON object per line.
Conditions that repeat are logged on entry, summarised at a bounded rate and logged on exit
(`proxy.observability.conditions`). Secrets never reach a log line: settings are logged masked,
tokens only by id, and aiohttp's reports of requests its HTTP parser refused are reduced to the
error's class, because their text quotes the raw request line or header, which may hold a bearer
token.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import Any, cast

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from proxy.observability.conditions import Repeats, install_pool_floor_filter

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


if sys.version_info < (3, 12):
    # 3.11's `asyncio.current_task` is Python (the running loop, then this dict's entry for
    # it), and every request asks it once; the same two steps without its frames and the
    # exception for "no loop" cost half as much.
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    def _current_task() -> asyncio.Task[Any] | None:
        loop = asyncio._get_running_loop()
        return None if loop is None else cast("asyncio.Task[Any] | None", _current_tasks.get(loop))

else:

    def _current_task() -> asyncio.Task[Any] | None:
        try:
            return asyncio.current_task()
        except RuntimeError:  # no running loop
            return None


# The value, the task that set it, the trace id.
_Held = tuple[str, asyncio.Task[Any] | None, int | None]


class RequestIdVar:
    """The id of the request the current task is handling: a ContextVar's `set`/`get`/`reset`.

    Set once per request by the HTTP middleware (a plain ContextVar costs a fraction of
    structlog's bind/unbind of contextvars). The value is held with the task that set it, and
    `get` answers it to that task only. A task created while the request runs (a snapshot on a
    breaker transition, a journal flush, the pool's maintenance, a replay woken up) copies the
    request's context with the id in it, but it is not the request's work and mostly outlives
    it: its lines must not carry an unrelated request's id. This holds for tasks created by any
    code, ours or a library's, without each creator having to start them from a clean context.

    With tracing on, the request's trace id is held with its id, as a number: one variable set
    per request either way, and the hex is written only for a line that is logged.
    """

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[_Held | None] = ContextVar(name, default=None)

    def set(self, value: str | None, trace_id: int | None = None) -> Token[str | None]:
        held = None if value is None else (value, _current_task(), trace_id)
        return cast("Token[str | None]", self._var.set(held))

    def set_outside_tasks(self, value: str) -> Token[str | None]:
        """`set` from a callback the loop runs outside any task (a protocol's `data_received`):
        no task is there to ask for, and on Python 3.11 asking costs a system call (`getpid`,
        in `asyncio._get_running_loop`): about 1.5 us of a replica read's 24 where the
        benchmarks run."""
        return cast("Token[str | None]", self._var.set((value, None, None)))

    def reset(self, token: Token[str | None]) -> None:
        self._var.reset(cast("Token[_Held | None]", token))

    def get(self) -> str | None:
        held = self._var.get()
        if held is None or held[1] is not _current_task():
            return None
        return held[0]

    def trace_id(self) -> str | None:
        """The trace id set with the value, in hex; None for this task as for `get`."""
        held = self._var.get()
        if held is None or held[1] is not _current_task() or held[2] is None:
            return None
        return f"{held[2]:032x}"


REQUEST_ID = RequestIdVar("request_id")


def _add_request_id(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
        trace_id = REQUEST_ID.trace_id()
        if trace_id is not None:
            event.setdefault("trace_id", trace_id)
        return event
    task = _current_task()
    if task is not None:
        name = task.get_name()
        # asyncio names unnamed tasks "Task-<n>": a number that says nothing to a reader.
        if not name.startswith("Task-"):
            event.setdefault("task", name)
    return event


# Loops that log the same error on every round, in code that keeps no condition of its own,
# with the event that says the condition is over.
REPEATING_EVENTS: dict[str, str | None] = {"journal replay failed": "journal drained"}


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class _ScrubParserErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "HTTP parser refused a request (%s, status %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


def configure(*, level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            Repeats(REPEATING_EVENTS),
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                _add_request_id,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(_ScrubParserErrors())
    install_pool_floor_filter()
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS[level])
