"""The registry's operations with their resilience: what the HTTP layer calls, and all it calls.

Other packages import from here only, never from the modules inside.
"""

from proxy.service.context import (
    DEADLINE,
    OVERLOAD,
    PENDING,
    READ_MODE,
    UNREACHABLE,
    Answer,
    RequestContext,
    ServiceHooks,
    journal_id,
)
from proxy.service.database_call import DatabaseUnavailable
from proxy.service.replay import REPLAY_ATTEMPTS
from proxy.service.service import RegistryService
from proxy.service.status import Gauges, Readiness, Sidecar

__all__ = [
    "DEADLINE",
    "OVERLOAD",
    "PENDING",
    "READ_MODE",
    "REPLAY_ATTEMPTS",
    "UNREACHABLE",
    "Answer",
    "DatabaseUnavailable",
    "Gauges",
    "Readiness",
    "RegistryService",
    "RequestContext",
    "ServiceHooks",
    "Sidecar",
    "journal_id",
]
