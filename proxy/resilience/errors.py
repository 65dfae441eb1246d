"""Error classification: the one place that decides what an exception means for resilience.

Treating every error as an outage was a bug of the design this sidecar replaces: a unique
violation says the database is healthy and answering. So each exception maps to one
:class:`ErrorKind`, and the kind alone decides whether the breaker counts it and whether a retry
may follow:

=================  ==================  =========
kind               counted by breaker  retried
=================  ==================  =========
INFRASTRUCTURE     yes                 yes
TRANSIENT          no                  yes
PERMANENT          no                  no
REJECTED           no                  no
=================  ==================  =========

PostgreSQL errors are recognised by their ``sqlstate`` attribute (asyncpg sets it on every server
error), so this module needs no driver types except for asyncpg's ``InterfaceError``, which has
no SQLSTATE and means a dead connection only when its message says so.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg

from proxy.resilience.deadline import DeadlineExceeded

__all__ = [
    "INFRASTRUCTURE_SQLSTATES",
    "INFRASTRUCTURE_SQLSTATE_CLASSES",
    "TRANSIENT_SQLSTATES",
    "BudgetExhausted",
    "BulkheadFull",
    "ErrorKind",
    "Rejected",
    "classify",
    "counts_as_failure",
    "describe",
    "is_retryable",
    "kind_of_sqlstate",
]


class ErrorKind(StrEnum):
    INFRASTRUCTURE = "infrastructure"
    """The dependency is unreachable, overloaded or too slow: counts toward the breaker, retried."""
    TRANSIENT = "transient"
    """The dependency is fine but this attempt lost a race (serialization, deadlock): retried."""
    PERMANENT = "permanent"
    """The request itself is wrong (data, constraint, programming errors): repeated, it fails."""
    REJECTED = "rejected"
    """We refused locally before reaching the dependency (breaker open, bulkhead full ...)."""


class Rejected(Exception):
    """Base of the errors raised when this process refuses work to protect the dependency.

    Such refusals say nothing about the health of the dependency, so they must never be counted
    as its failures: counting them would keep an open breaker open on its own rejections.
    ``retry_after`` is a hint in seconds for ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class BulkheadFull(Rejected):
    """No capacity left (e.g. every pooled connection busy past the bounded wait)."""


class BudgetExhausted(Rejected):
    """The retry budget refused a retry."""


INFRASTRUCTURE_SQLSTATE_CLASSES: frozenset[str] = frozenset({"08", "53", "58"})
"""08 connection exception, 53 insufficient resources, 58 system error (external to PostgreSQL)."""

INFRASTRUCTURE_SQLSTATES: frozenset[str] = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or not yet there.

The rest of class 57 (e.g. 57014 query_canceled) is left out on purpose: it is what a statement
cancelled by us or by ``statement_timeout`` reports, and the timeout that caused it is already
counted as the slow call it was.
"""

TRANSIENT_SQLSTATES: frozenset[str] = frozenset({"40001", "40P01"})
"""serialization_failure and deadlock_detected: the transaction may succeed when run again."""

_CLOSED_CONNECTION_HINTS = ("connection is closed", "connection was closed", "closed in the middle")


def kind_of_sqlstate(sqlstate: str) -> ErrorKind:
    """The kind of a PostgreSQL error code. Unknown codes are PERMANENT: never assume an outage."""
    code = sqlstate.upper()
    if code in INFRASTRUCTURE_SQLSTATES or code[:2] in INFRASTRUCTURE_SQLSTATE_CLASSES:
        return ErrorKind.INFRASTRUCTURE
    if code in TRANSIENT_SQLSTATES:
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def classify(exc: BaseException) -> ErrorKind:
    """Map an exception to its :class:`ErrorKind`.

    Order matters: local refusals and deadlines are tested before ``OSError`` because
    ``DeadlineExceeded`` is a ``TimeoutError`` and therefore an ``OSError``, and a refusal might
    subclass anything. Anything unrecognised is PERMANENT, so an unexpected bug never opens the
    breaker nor starts a retry storm.
    """
    if isinstance(exc, Rejected):
        return ErrorKind.REJECTED
    if isinstance(exc, DeadlineExceeded):
        # A deadline that passed before the call started means nothing was sent.
        return ErrorKind.INFRASTRUCTURE if exc.during_call else ErrorKind.REJECTED
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return kind_of_sqlstate(sqlstate)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The driver found a connection mid-protocol ("another operation is in progress"):
        # what a server dying under an open connection leaves behind.
        return ErrorKind.INFRASTRUCTURE
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        message = str(exc).lower()
        if any(hint in message for hint in _CLOSED_CONNECTION_HINTS):
            return ErrorKind.INFRASTRUCTURE
        # "another operation is in progress" and friends are misuse of the driver.
        return ErrorKind.PERMANENT
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return ErrorKind.INFRASTRUCTURE
    return ErrorKind.PERMANENT


def counts_as_failure(kind: ErrorKind) -> bool:
    """Whether the breaker should count an error of this kind against the dependency."""
    return kind is ErrorKind.INFRASTRUCTURE


def is_retryable(kind: ErrorKind) -> bool:
    """Whether another attempt could succeed where this one failed."""
    return kind is ErrorKind.INFRASTRUCTURE or kind is ErrorKind.TRANSIENT


def describe(exc: BaseException, *, limit: int = 200) -> str:
    """A short one-line cause for transitions and logs: type, SQLSTATE when known, message.

    Bounded because causes are kept in the breaker history and shown on ``/v1/status``.
    """
    name = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        name = f"{name} [{sqlstate}]"
    message = " ".join(str(exc).split())
    text = f"{name}: {message}" if message else name
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text
