"""Generic resilience primitives: breaker, retry and retry budget, deadlines, classification, probe.

Nothing here knows about agents or HTTP; the only domain knowledge is which PostgreSQL errors mean
an outage (:mod:`proxy.resilience.errors`). Every primitive takes keyword-only configuration with
safe defaults and an injectable :class:`Clock`, and reports through listeners or hooks rather
than logging or metrics of its own.
"""

from proxy.resilience.breaker import (
    BreakerOpen,
    BreakerState,
    CircuitBreaker,
    Listener,
    Permit,
    Transition,
)
from proxy.resilience.budget import RetryBudget
from proxy.resilience.clock import SYSTEM_CLOCK, Clock, FakeClock, Sleep, SlidingWindow, SystemClock
from proxy.resilience.deadline import Deadline, DeadlineExceeded, current_deadline, use_deadline
from proxy.resilience.errors import (
    BudgetExhausted,
    BulkheadFull,
    ErrorKind,
    Rejected,
    classify,
    counts_as_failure,
    describe,
    is_retryable,
    kind_of_sqlstate,
)
from proxy.resilience.probe import HealthProbe
from proxy.resilience.retry import RetryHooks, backoff_ceiling, call, is_testing, set_testing

__all__ = [
    "SYSTEM_CLOCK",
    "BreakerOpen",
    "BreakerState",
    "BudgetExhausted",
    "BulkheadFull",
    "CircuitBreaker",
    "Clock",
    "Deadline",
    "DeadlineExceeded",
    "ErrorKind",
    "FakeClock",
    "HealthProbe",
    "Listener",
    "Permit",
    "Rejected",
    "RetryBudget",
    "RetryHooks",
    "Sleep",
    "SlidingWindow",
    "SystemClock",
    "Transition",
    "backoff_ceiling",
    "call",
    "classify",
    "counts_as_failure",
    "current_deadline",
    "describe",
    "is_retryable",
    "is_testing",
    "kind_of_sqlstate",
    "set_testing",
    "use_deadline",
]
