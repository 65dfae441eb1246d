"""PostgreSQL's error rules: which of its errors mean an outage, a lost race or a bad request.

The resilience primitives are generic; they take a ``classify`` function and leave the meaning
of a dependency's errors to whoever knows the dependency. This is that knowledge for PostgreSQL
and asyncpg. Treating every error as an outage would be wrong: a unique violation says the
database is healthy and answering.

Each error maps to one `proxy.resilience.ErrorKind`, whose table says what the breaker and
the retries make of it.

PostgreSQL errors are recognised by their ``sqlstate`` attribute (asyncpg sets it on every server
error); of the driver's own errors only ``InterfaceError`` and ``InternalClientError`` need a
rule, since they carry no SQLSTATE.
"""

from __future__ import annotations

import asyncpg

from proxy.resilience import ErrorKind
from proxy.resilience import classify as classify_generic
from proxy.resilience import describe as describe_generic

__all__ = [
    "INFRASTRUCTURE_SQLSTATES",
    "INFRASTRUCTURE_SQLSTATE_CLASSES",
    "TRANSIENT_SQLSTATES",
    "classify",
    "describe",
    "kind_of_sqlstate",
]

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
    """The kind of an exception raised by a call to PostgreSQL.

    Server errors go by their SQLSTATE, the driver's connection errors by what they say, and the
    rest (local refusals, deadlines, socket errors, anything unknown) by the generic rule.
    """
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
        # Other interface errors are misuse of the driver.
        return ErrorKind.PERMANENT
    return classify_generic(exc)


def describe(exc: BaseException, *, limit: int = 200) -> str:
    """The generic one-line cause, with the SQLSTATE beside the type when there is one."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return describe_generic(exc, limit=limit, code=sqlstate)
    return describe_generic(exc, limit=limit)
