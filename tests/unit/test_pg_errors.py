"""The classification table: what each error means for the breaker and for retries.

PostgreSQL's rules live in the store; the generic rule of the resilience package is what they
fall back to, and knows nothing of SQLSTATEs."""

from __future__ import annotations

import asyncpg
import pytest

import proxy.resilience as resilience
from proxy.resilience import (
    BreakerOpen,
    BreakerState,
    DeadlineExceeded,
    ErrorKind,
    Overloaded,
    Rejected,
)
from proxy.store.pg_errors import classify, describe, kind_of_sqlstate, refuses_connections

INFRA = ErrorKind.INFRASTRUCTURE
TRANSIENT = ErrorKind.TRANSIENT
PERMANENT = ErrorKind.PERMANENT
REJECTED = ErrorKind.REJECTED


class FakePgError(Exception):
    """Stands for any driver error carrying a SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server said {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08000", INFRA),
        ("08003", INFRA),
        ("08006", INFRA),
        ("08P01", INFRA),
        ("53000", INFRA),
        ("53100", INFRA),
        ("53200", INFRA),
        ("53300", REJECTED),
        ("53400", INFRA),
        ("25006", INFRA),
        ("25P02", PERMANENT),
        ("57P01", INFRA),
        ("57P02", INFRA),
        ("57P03", INFRA),
        ("57p01", INFRA),
        ("58000", INFRA),
        ("58030", INFRA),
        ("40001", TRANSIENT),
        ("40P01", TRANSIENT),
        ("40002", PERMANENT),
        ("40003", PERMANENT),
        ("57014", PERMANENT),
        ("57000", PERMANENT),
        ("22001", PERMANENT),
        ("22P02", PERMANENT),
        ("23505", PERMANENT),
        ("23503", PERMANENT),
        ("42601", PERMANENT),
        ("42P01", PERMANENT),
        ("P0001", PERMANENT),
        ("XX000", PERMANENT),
    ],
)
def test_sqlstate_table(sqlstate: str, kind: ErrorKind) -> None:
    assert classify(FakePgError(sqlstate)) is kind
    assert kind_of_sqlstate(sqlstate) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-query"), INFRA),
        (asyncpg.exceptions.ConnectionFailureError("lost"), INFRA),
        (asyncpg.exceptions.ClientCannotConnectError("no"), INFRA),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), REJECTED),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"), INFRA),
        (
            asyncpg.exceptions.ProtocolViolationError(
                "no more connections allowed (max_client_conn)"
            ),
            REJECTED,
        ),
        (asyncpg.exceptions.ProtocolViolationError("server conn crashed?"), INFRA),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), INFRA),
        (asyncpg.exceptions.AdminShutdownError("terminating"), INFRA),
        (asyncpg.exceptions.CrashShutdownError("crash"), INFRA),
        (asyncpg.exceptions.InterfaceError("connection is closed"), INFRA),
        (
            asyncpg.exceptions.InterfaceError(
                "cannot call Connection.fetch(): connection is closed"
            ),
            INFRA,
        ),
        (
            asyncpg.exceptions.InterfaceError(
                "cannot perform operation: another operation is in progress"
            ),
            PERMANENT,
        ),
        (asyncpg.exceptions.SerializationError("could not serialize"), TRANSIENT),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), TRANSIENT),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), PERMANENT),
        (asyncpg.exceptions.ForeignKeyViolationError("fk"), PERMANENT),
        (asyncpg.exceptions.UndefinedTableError("no table"), PERMANENT),
        (asyncpg.exceptions.PostgresSyntaxError("syntax"), PERMANENT),
        (asyncpg.exceptions.StringDataRightTruncationError("too long"), PERMANENT),
        (asyncpg.exceptions.QueryCanceledError("canceling statement"), PERMANENT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_asyncpg_exceptions(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(111, "refused"), INFRA),
        (ConnectionResetError(), INFRA),
        (BrokenPipeError(), INFRA),
        (OSError("network unreachable"), INFRA),
        (TimeoutError(), INFRA),
        (DeadlineExceeded("slow call"), INFRA),
        (DeadlineExceeded("slow call", during_call=True), INFRA),
        (DeadlineExceeded("nothing sent", during_call=False), REJECTED),
        (BreakerOpen("db", BreakerState.OPEN, 1.0), REJECTED),
        (BreakerOpen("db", BreakerState.FORCED_OPEN, 1.0), REJECTED),
        (Rejected("refused here"), REJECTED),
        (Overloaded("queue full", reason="queue-full"), REJECTED),
        (ValueError("bug"), PERMANENT),
        (RuntimeError("bug"), PERMANENT),
        (KeyError("bug"), PERMANENT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_python_exceptions(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind
    assert resilience.classify(exc) is kind


def test_the_generic_rule_knows_no_sqlstate() -> None:
    assert resilience.classify(FakePgError("08006")) is PERMANENT
    assert resilience.classify(asyncpg.exceptions.InterfaceError("connection is closed")) is (
        PERMANENT
    )
    assert resilience.describe(FakePgError("08006")) == "FakePgError: server said 08006"


def test_empty_or_non_string_sqlstate_is_ignored() -> None:
    weird = FakePgError("")
    assert classify(weird) is PERMANENT
    weird.sqlstate = None  # type: ignore[assignment]
    assert classify(weird) is PERMANENT


def test_describe_is_one_bounded_line() -> None:
    assert describe(FakePgError("23505")) == "FakePgError [23505]: server said 23505"
    assert describe(ConnectionResetError()) == "ConnectionResetError"
    assert describe(ValueError("a\n  b")) == "ValueError: a b"
    long = describe(ValueError("x" * 500), limit=50)
    assert len(long) == 50
    assert long.endswith("...")


def test_rejected_retry_after_is_never_negative() -> None:
    assert Rejected("full", retry_after=-3).retry_after == 0.0
    assert BreakerOpen("db", BreakerState.OPEN, 2.5).retry_after == 2.5


def test_a_connection_left_mid_protocol_is_an_infrastructure_failure() -> None:
    exc = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert classify(exc) is ErrorKind.INFRASTRUCTURE


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.exceptions.TooManyConnectionsError('too many connections for role "x"'), True),
        (
            asyncpg.exceptions.ProtocolViolationError(
                "no more connections allowed (max_client_conn)"
            ),
            True,
        ),
        (asyncpg.exceptions.ProtocolViolationError("unsupported startup parameter: x"), False),
        (asyncpg.exceptions.OutOfMemoryError("out of memory"), False),
        (ConnectionRefusedError(111, "refused"), False),
    ],
    ids=lambda value: str(value)[:30],
)
def test_a_refused_connection_is_a_full_server_not_an_outage(
    exc: BaseException, refused: bool
) -> None:
    """PostgreSQL at max_connections (or a CONNECTION LIMIT) and PgBouncer at max_client_conn
    are up and full: the store answers them as a full bulkhead."""
    assert refuses_connections(exc) is refused
