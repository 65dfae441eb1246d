"""The registry's operations with their resilience: what the HTTP layer calls, and all it calls.

Other packages import from here only, never from the modules inside.
"""

from proxy.service.registry import (
    DEADLINE,
    OVERLOAD,
    PENDING,
    READ_MODE,
    REPLAY_ATTEMPTS,
    UNREACHABLE,
    Answer,
    DatabaseUnavailable,
    RegistryService,
    RequestContext,
    ServiceHooks,
    journal_id,
)

__all__ = [
    "DEADLINE",
    "OVERLOAD",
    "PENDING",
    "READ_MODE",
    "REPLAY_ATTEMPTS",
    "UNREACHABLE",
    "Answer",
    "DatabaseUnavailable",
    "RegistryService",
    "RequestContext",
    "ServiceHooks",
    "journal_id",
]
