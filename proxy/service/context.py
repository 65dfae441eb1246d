"""The words the service's parts share with each other and with the HTTP layer: what a request
brings (its tenant, actor and deadline), what it gets back (an answer and where it came from),
where the app attaches its instruments, and why an answer did not come from PostgreSQL.

They live apart from the operations so that each part of the service, and each caller, can name
them without importing the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from proxy.resilience import Deadline, RetryHooks

# Why a read came from the replica (`X-Registry-Fallback`), and why a database call failed.
UNREACHABLE = "unreachable"
OVERLOAD = "overload"
DEADLINE = "deadline"
READ_MODE = "read-mode"
PENDING = "pending-writes"


@dataclass(slots=True)  # not frozen: a frozen init costs four times as much, per request
class RequestContext:
    tenant: str
    actor: str
    request_id: str
    deadline: Deadline
    client_deadline: bool = False
    """True when the caller shortened the deadline (X-Request-Timeout): running out of it then
    says nothing about PostgreSQL, so it is not counted against it."""


@dataclass(slots=True)
class Answer:
    status: int
    body: Any  # a JSON-able value, or bytes already encoded as JSON
    source: str
    headers: dict[str, str] = field(default_factory=dict)


class Spans(Protocol):
    """Where tracing attaches (the app wires `proxy.observability.tracing` here). The service says
    what happened and around what; how it is recorded, and whether, is not its business."""

    def event(self, name: str, attributes: Mapping[str, str | int | float | bool]) -> None:
        """Something the current request's span should show: `breaker refused`, `fallback`
        (with its `reason`, an `X-Registry-Fallback` value), `journaled` (with its `op_id`)."""
        ...

    def attempt(self, operation: str, number: int) -> AbstractContextManager[object]:
        """Around one attempt at a database call: a span of its own, with its outcome."""
        ...

    def context(self) -> str | None:
        """The current span's context as a W3C traceparent, kept with a journaled write."""
        ...

    def replay(self, journaled: Sequence[tuple[str, str]]) -> AbstractContextManager[object]:
        """Around the replay of a batch, linked to the spans its writes were journaled in:
        (op id, traceparent) of each write that has one."""
        ...


@dataclass(slots=True)
class ServiceHooks:
    """Instrumentation points; the app wires metrics and logs here, tests may leave them."""

    db_call: Callable[[str, str, float], None] = lambda op, outcome, seconds: None
    db_refused: Callable[[str], None] = lambda op: None
    """A database call the open breaker refused before it began: `db_call` with the outcome
    `rejected` and no time, as one call, made on every read while PostgreSQL is away."""
    replica_hit: Callable[[str], None] = lambda kind: None
    journal_append: Callable[[], None] = lambda: None
    committed: Callable[[str], None] = lambda path: None
    replayed: Callable[[str], None] = lambda outcome: None
    retry: RetryHooks | None = None
    shed: Callable[[str], None] = lambda reason: None
    """A request refused for lack of capacity: `loop-lag`, `queue-full`, `queue-timeout`,
    `backlog` (an agent's journaled writes still being applied)."""
    reapplied: Callable[[int], None] = lambda writes: None
    """Committed writes journaled again after a standby was promoted (the failover guard)."""
    spans: Spans | None = None
    """None unless tracing is on: the hot paths then pay the check of this attribute, no more."""


def journal_id(tenant: str, op_id: str) -> str:
    """Journal ids are global; op ids (Idempotency-Keys) are per tenant. '/' is not in either."""
    return f"{tenant}/{op_id}"


def op_id_of(jid: str) -> str:
    """The op id (the tenant's Idempotency-Key) inside a journal id."""
    return jid.partition("/")[2]


def utc_now() -> datetime:
    """The time answers are rendered at (an agent's liveness is judged against it)."""
    return datetime.now(UTC)
