"""Errors of the registry that a client can act on, each with its own problem type.

The HTTP layer turns these into RFC 9457 problem documents; the journal stores their `reason`
when a replayed write is rejected.
"""

from __future__ import annotations

PROBLEM_BASE = "https://registry-proxy.dev/problems/"


class RegistryError(Exception):
    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extensions: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions or {}
        """Extra members of the problem document (RFC 9457), e.g. the op id of a write."""

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


class NotFound(RegistryError):
    status = 404
    slug = "not-found"
    title = "Not found"


class DuplicateAgent(RegistryError):
    status = 409
    slug = "duplicate-agent"
    title = "Agent already registered"


class RegistryFull(RegistryError):
    status = 409
    slug = "registry-full"
    title = "Registry is full"


class PreconditionFailed(RegistryError):
    status = 412
    slug = "precondition-failed"
    title = "Version does not match If-Match"


class IdempotencyMismatch(RegistryError):
    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class Unavailable(RegistryError):
    status = 503
    slug = "database-unavailable"
    title = "Database unavailable"

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, round(retry_after + 0.49)))})
        self.retry_after = retry_after


class JournalDiskFull(Unavailable):
    """The write had to be journaled and the local journal's disk has no room for it; nothing
    was kept. PostgreSQL may well be up (earlier writes to the same agent wait in the journal)."""

    slug = "journal-disk-full"
    title = "Local journal disk full"


class Overloaded(RegistryError):
    """The sidecar has no capacity for this request now; nothing was done, nothing journaled.
    PostgreSQL is not known to be away: try again after `Retry-After`."""

    status = 503
    slug = "overloaded"
    title = "Sidecar overloaded"

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, round(retry_after + 0.49)))})
        self.retry_after = retry_after


class Unprocessable(RegistryError):
    status = 422
    slug = "invalid-request"
    title = "Request has invalid fields"


class DeadlineExceeded(RegistryError):
    status = 504
    slug = "deadline-exceeded"
    title = "Deadline exceeded"
