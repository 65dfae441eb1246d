"""Generic resilience primitives: breaker, retry with a budget, deadlines, bulkhead, probe.

Nothing here knows about agents, HTTP or PostgreSQL: which errors mean an outage is the caller's
rule, passed in as a ``classify`` function (the store's says it for PostgreSQL). Every primitive
takes keyword-only configuration with safe defaults and an injectable :class:`Clock`, and reports
through listeners or hooks rather than logging or metrics of its own.

This is the public face; the modules behind it are private to the package.
"""

from proxy.resilience._breaker import BreakerOpen, BreakerState, CircuitBreaker, Transition
from proxy.resilience._budget import RetryBudget
from proxy.resilience._bulkhead import Bulkhead, BulkheadHooks, Overloaded
from proxy.resilience._clock import SYSTEM_CLOCK, Clock, FakeClock
from proxy.resilience._deadline import Deadline, DeadlineExceeded
from proxy.resilience._errors import ErrorKind, Rejected, classify, describe
from proxy.resilience._looplag import LoopLag
from proxy.resilience._probe import HealthProbe
from proxy.resilience._retry import RetryHooks, call, set_testing

__all__ = [
    "SYSTEM_CLOCK",
    "BreakerOpen",
    "BreakerState",
    "Bulkhead",
    "BulkheadHooks",
    "CircuitBreaker",
    "Clock",
    "Deadline",
    "DeadlineExceeded",
    "ErrorKind",
    "FakeClock",
    "HealthProbe",
    "LoopLag",
    "Overloaded",
    "Rejected",
    "RetryBudget",
    "RetryHooks",
    "Transition",
    "call",
    "classify",
    "describe",
    "set_testing",
]
