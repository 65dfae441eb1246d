"""Log lines for conditions that repeat: one on entry, a bounded summary, one on exit.

A dependency that is down makes a retry loop fail every fraction of a second for as long as it
stays down. One line per failure is thousands of lines an hour of the same words, and buries the
lines that matter (the breaker's transitions, a write rejected on replay). A `Condition` turns
them into what a person on call needs:

- the first occurrence is logged at once, with its error: the condition has begun;
- later ones are counted, and while they go on, a summary line (the same event, `repeated`:
  occurrences since the last line, `for_s`: how long the condition has lasted, and the latest
  error) is written at most once per `every_s`;
- when the code sees the condition end, one line says so, with how long it lasted and how many
  occurrences it had.

No traceback: these are expected conditions (a refused connection, a timeout), and their error
text says all there is to say. Genuinely unexpected errors are logged where they happen, with
their traceback, by the code that catches them.

`Repeats` does the same for a few events logged by code that has no condition of its own: a
structlog processor that folds a listed event repeating with the same error into a summary line
at most once per interval.

`PoolFloorFilter` routes asyncpg's own "Failed to restore the pool connection floor" warning
(logged with a traceback every time its maintenance task retries, from one second up to a
minute apart, and restarted by every connection released during an outage) through the
`POOL_FLOOR` condition; the store ends that condition when it sees its pool at its floor again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_Clock = Callable[[], float]


def describe_error(exc: BaseException, *, limit: int = 200) -> str:
    """`Type: message` on one line, bounded: the whole story of an expected failure."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Condition:
    """One repeating condition of one component (not thread-safe: use it from one loop).

    ``occurred(**fields)`` on every occurrence, ``ended(**fields)`` when the component sees it
    is over (a no-op when it was not on). The entry line is `event` at `level`, with the fields
    of the first occurrence; summaries are `event` again with ``repeated`` and ``for_s`` added;
    the exit line is `end_event` at `end_level`, with ``for_s`` and ``occurrences``.
    """

    __slots__ = (
        "_clock",
        "_count",
        "_last_line",
        "_log",
        "_since_line",
        "_started",
        "end_event",
        "end_level",
        "event",
        "every_s",
        "level",
    )

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        end_event: str,
        level: str = "warning",
        end_level: str = "info",
        every_s: float = 60.0,
        clock: _Clock = time.monotonic,
    ) -> None:
        self._log = logger
        self.event = event
        self.end_event = end_event
        self.level = level
        self.end_level = end_level
        self.every_s = every_s
        self._clock = clock
        self._started: float | None = None
        self._last_line = 0.0
        self._count = 0
        self._since_line = 0

    @property
    def active(self) -> bool:
        return self._started is not None

    def occurred(self, event: str | None = None, **fields: Any) -> None:
        """One more occurrence; `event` names the entry line when it differs from the default
        (a listener that was connected is "lost", one that never was "cannot connect")."""
        now = self._clock()
        self._count += 1
        if self._started is None:
            self._started = self._last_line = now
            self._since_line = 0
            self._emit(self.level, event or self.event, fields)
            return
        self._since_line += 1
        if now - self._last_line >= self.every_s:
            self._emit(
                self.level,
                self.event,
                {
                    **fields,
                    "repeated": self._since_line,
                    "for_s": round(now - self._started, 1),
                },
            )
            self._last_line = now
            self._since_line = 0

    def ended(self, **fields: Any) -> None:
        if self._started is None:
            return
        lasted = self._clock() - self._started
        self._emit(
            self.end_level,
            self.end_event,
            {**fields, "for_s": round(lasted, 1), "occurrences": self._count},
        )
        self._started = None
        self._count = 0
        self._since_line = 0

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        getattr(self._log, level)(event, **fields)


class Repeats:
    """A structlog processor: listed events that repeat with the same fields are folded.

    `events` maps each event to fold to the event that ends it (or None). The first line of an
    event passes; identical ones (same event, same fields but the time) within `every_s` of the
    last line written are dropped and counted; the next one after that passes with ``repeated``
    (how many were dropped since the last line). The ending event's line, when the event was
    seen, gets ``ends`` (the event it ends), ``for_s`` and ``occurrences``. Meant for loops in
    code that keeps no `Condition` of its own, such as the journal replay retrying an error
    every couple of seconds. Lines of a request (with a request id) are never folded.
    """

    def __init__(
        self,
        events: dict[str, str | None],
        *,
        every_s: float = 60.0,
        clock: _Clock = time.monotonic,
    ) -> None:
        self.events = events
        self._ends = {end: name for name, end in events.items() if end is not None}
        self.every_s = every_s
        self._clock = clock
        # key -> [time of the last line written, lines dropped since, first seen, occurrences]
        self._seen: dict[tuple[Any, ...], list[float]] = {}

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = event.get("event")
        if name in self._ends:
            return self._ended(self._ends[name], event)
        if name not in self.events or "request_id" in event:
            return event
        key = (name, *sorted((k, repr(v)) for k, v in event.items() if k != "timestamp"))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= 256:  # errors that differ every time: forget the oldest
                del self._seen[next(iter(self._seen))]
            self._seen[key] = [now, 0, now, 1]
            return event
        seen[3] += 1
        if now - seen[0] < self.every_s:
            seen[1] += 1
            raise structlog.DropEvent
        event["repeated"] = int(seen[1])
        seen[0], seen[1] = now, 0
        return event

    def _ended(self, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        keys = [key for key in self._seen if key[0] == name]
        if keys:
            first = min(self._seen[key][2] for key in keys)
            event["ends"] = name
            event["for_s"] = round(self._clock() - first, 1)
            event["occurrences"] = int(sum(self._seen.pop(key)[3] for key in keys))
        return event


class PoolFloorFilter(logging.Filter):
    """For the `asyncpg.pool` logger: its floor-restoring warning goes to `POOL_FLOOR`."""

    def __init__(self, condition: Condition) -> None:
        super().__init__()
        self.condition = condition

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Failed to restore the pool connection floor"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        self.condition.occurred(error=describe_error(exc) if exc is not None else "unknown")
        return False


# One per process: asyncpg's warning does not say which pool it is about, and a sidecar has one.
POOL_FLOOR = Condition(
    structlog.get_logger("asyncpg.pool"),
    "database pool cannot restore its minimum connections",
    end_event="database pool back at its minimum connections",
)


def install_pool_floor_filter() -> None:
    """Idempotent: route asyncpg's pool-floor warnings through `POOL_FLOOR`."""
    pool_logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolFloorFilter) for f in pool_logger.filters):
        pool_logger.addFilter(PoolFloorFilter(POOL_FLOOR))
