"""Error kinds: what an exception means for resilience, and the refusals of this process.

Each exception maps to one :class:`ErrorKind`, and the kind alone decides whether the breaker
counts it and whether a retry may follow:

=================  ==================  =========
kind               counted by breaker  retried
=================  ==================  =========
INFRASTRUCTURE     yes                 yes
TRANSIENT          no                  yes
PERMANENT          no                  no
REJECTED           no                  no
=================  ==================  =========

:func:`classify` is the generic rule, for what any dependency's client raises: local refusals,
deadlines and socket errors. A dependency's own errors (a database's error codes, say) are its
client's to classify: callers pass their own ``classify`` to the primitives, usually one that
falls back to this.
"""

from __future__ import annotations

from enum import StrEnum

from proxy.resilience._deadline import DeadlineExceeded

__all__ = [
    "ErrorKind",
    "Rejected",
    "classify",
    "describe",
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


def classify(exc: BaseException) -> ErrorKind:
    """The generic kind of an exception.

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
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return ErrorKind.INFRASTRUCTURE
    return ErrorKind.PERMANENT


def describe(exc: BaseException, *, limit: int = 200, code: str | None = None) -> str:
    """A short one-line cause for transitions and logs: type, the error's ``code`` when the
    caller knows one, message.

    Bounded because causes are kept in the breaker history and shown on ``/v1/status``.
    """
    name = type(exc).__name__
    if code:
        name = f"{name} [{code}]"
    message = " ".join(str(exc).split())
    text = f"{name}: {message}" if message else name
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text
