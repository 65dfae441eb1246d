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
    "PRIMARY_MOVED",
    "REFUSED_SQLSTATES",
    "TRANSIENT_SQLSTATES",
    "classify",
    "describe",
    "kind_of_sqlstate",
    "refuses_connections",
]

INFRASTRUCTURE_SQLSTATE_CLASSES: frozenset[str] = frozenset({"08", "53", "58"})
"""08 connection exception, 53 insufficient resources, 58 system error (external to PostgreSQL)."""

PRIMARY_MOVED = "25006"
"""read_only_sql_transaction: a write reached a server in recovery. Behind a multi-host DSN that
is a primary demoted by a failover, whose connections the pool still held: the database is
elsewhere now, an infrastructure failure (the store also expires the pool's connections), never
the client's error."""

INFRASTRUCTURE_SQLSTATES: frozenset[str] = frozenset({"57P01", "57P02", "57P03", PRIMARY_MOVED})
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or not yet there;
and `PRIMARY_MOVED`.

The rest of class 57 (e.g. 57014 query_canceled) is left out on purpose: it is what a statement
cancelled by us or by ``statement_timeout`` reports, and the timeout that caused it is already
counted as the slow call it was.
"""

TRANSIENT_SQLSTATES: frozenset[str] = frozenset({"40001", "40P01"})
"""serialization_failure and deadlock_detected: the transaction may succeed when run again."""

REFUSED_SQLSTATES: frozenset[str] = frozenset({"53300"})
"""too_many_connections: the server is up and full (max_connections, or a role's or a database's
CONNECTION LIMIT). REJECTED, not INFRASTRUCTURE: a fleet at the server's connection limit is
overloaded, and opening the breaker would turn its writes into journal entries. The rest of
class 53 (disk full, out of memory, 53400 configuration_limit_exceeded) comes from a statement
the server could not run, and stays infrastructure."""

# PgBouncer's refusal at max_client_conn comes as 08P01 (protocol_violation), by its text only.
_POOLER_FULL_HINTS = ("no more connections allowed",)

_CLOSED_CONNECTION_HINTS = ("connection is closed", "connection was closed", "closed in the middle")


def kind_of_sqlstate(sqlstate: str) -> ErrorKind:
    """The kind of a PostgreSQL error code. Unknown codes are PERMANENT: never assume an outage."""
    code = sqlstate.upper()
    if code in REFUSED_SQLSTATES:
        return ErrorKind.REJECTED
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
        if refuses_connections(exc):
            return ErrorKind.REJECTED
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


def refuses_connections(exc: BaseException) -> bool:
    """Whether the server, or a pooler in front of it, refused a connection for want of slots."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in REFUSED_SQLSTATES:
        return True
    message = str(exc).lower()
    return sqlstate == "08P01" and any(hint in message for hint in _POOLER_FULL_HINTS)


def describe(exc: BaseException, *, limit: int = 200) -> str:
    """The generic one-line cause, with the SQLSTATE beside the type when there is one."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return describe_generic(exc, limit=limit, code=sqlstate)
    return describe_generic(exc, limit=limit)
