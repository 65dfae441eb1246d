"""Retries under a breaker, a retry budget and a deadline.

:func:`call` runs ``fn(timeout)`` until it succeeds or a rule says stop. One attempt:

1. refuse at once if the deadline has already passed (``DeadlineExceeded``, nothing sent);
2. ``breaker.acquire()``; :class:`~proxy.resilience._breaker.BreakerOpen` propagates, never retried;
3. ``await fn(timeout)`` under ``asyncio.timeout(timeout)``, ``timeout`` being what remains of the
   deadline; running out becomes ``DeadlineExceeded(during_call=True)``, an infrastructure failure;
4. report the outcome on the permit by its classification: success, failure (INFRASTRUCTURE) or
   release (anything else, including cancellation).

Another attempt follows only when all hold: the error is INFRASTRUCTURE or TRANSIENT; the breaker
is still closed or disabled (a failure that tripped it must not be hammered again); attempts are
left; the backoff sleep ends before the deadline; and the retry budget grants a retry (asked last,
so a retry that would not happen anyway does not spend it). When retrying stops, the last error
itself is raised, never a wrapper.

Backoff is "full jitter": before retry ``n`` (n = 1 after the first attempt) sleep a uniform
random time in ``[0, min(max_s, base_s * 2 ** (n - 1))]``.

The loop is written here rather than driven by tenacity: each of its rules reads state that is
ours (the breaker's, the deadline's, the budget's), so tenacity's ``stop``, ``wait`` and ``retry``
would all be closures over it, and building its ``AsyncRetrying`` costs about 17 us per call
against well under 1 us for this loop, on every database call, nearly all of which succeed at
once. The budget is the library-less part anyway (see :mod:`proxy.resilience._budget`).

Instrumentation attaches through :class:`RetryHooks`; hook exceptions are swallowed so metrics
cannot change the outcome of a call. :func:`set_testing` turns backoff off (and can cap attempts)
for fast, deterministic tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from proxy.resilience._breaker import BreakerState, CircuitBreaker
from proxy.resilience._budget import RetryBudget
from proxy.resilience._clock import Clock, Sleep
from proxy.resilience._deadline import Deadline, DeadlineExceeded
from proxy.resilience._errors import ErrorKind
from proxy.resilience._errors import classify as default_classify
from proxy.resilience._errors import describe as default_describe

__all__ = [
    "OUTCOME_CANCELLED",
    "OUTCOME_SUCCESS",
    "RetryHooks",
    "backoff_ceiling",
    "call",
    "is_testing",
    "set_testing",
]

T = TypeVar("T")

OUTCOME_SUCCESS: Final = "success"
OUTCOME_CANCELLED: Final = "cancelled"
"""``on_call`` outcomes besides the :class:`ErrorKind` values (``rejected`` when refused)."""

_RETRY_STATES: Final = frozenset({BreakerState.CLOSED, BreakerState.DISABLED})
_RETRY_KINDS: Final = frozenset({ErrorKind.INFRASTRUCTURE, ErrorKind.TRANSIENT})
# One generator for the process: seeding a new one per call costs more than the call's jitter.
_JITTER: Final = random.Random()
# Beyond this exponent the ceiling is max_s for any sane base; it also keeps 2 ** n finite.
_MAX_EXPONENT: Final = 62


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryHooks:
    """Optional callbacks, called synchronously; exceptions raised in them are ignored.

    on_retry(attempt, exc, delay):
        attempt ``attempt`` failed with ``exc``; the next one starts after ``delay`` seconds.
    on_budget_exhausted():
        a retry was wanted but the retry budget refused it.
    on_call(outcome, duration_s):
        one attempt ended: ``success``, an :class:`ErrorKind` value (``infrastructure``,
        ``transient``, ``permanent``, ``rejected``) or ``cancelled``. A refusal by the breaker is
        reported as ``rejected`` with duration 0 (no call was made).
    """

    on_retry: Callable[[int, BaseException, float], None] | None = None
    on_budget_exhausted: Callable[[], None] | None = None
    on_call: Callable[[str, float], None] | None = None


@dataclass(slots=True)
class _Testing:
    enabled: bool = False
    attempts: int | None = None


_testing = _Testing()


def set_testing(testing: bool = True, *, attempts: int | None = None) -> None:
    """Make backoff zero while ``testing``; ``attempts`` (when given) caps the attempts per call."""
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be >= 1")
    _testing.enabled = testing
    _testing.attempts = attempts if testing else None


def is_testing() -> bool:
    return _testing.enabled


def backoff_ceiling(retry_number: int, *, base_s: float, max_s: float) -> float:
    """Upper bound of the full-jitter sleep before retry ``retry_number`` (1-based)."""
    exponent = min(max(retry_number - 1, 0), _MAX_EXPONENT)
    return min(max_s, base_s * math.pow(2.0, exponent))


def _notify(hook: Callable[..., None] | None, *args: object) -> None:
    if hook is None:
        return
    with contextlib.suppress(Exception):
        hook(*args)


async def call(
    fn: Callable[[float], Awaitable[T]],
    *,
    breaker: CircuitBreaker,
    budget: RetryBudget | None,
    deadline: Deadline,
    attempts: int = 3,
    base_s: float = 0.02,
    max_s: float = 0.5,
    classify: Callable[[BaseException], ErrorKind] = default_classify,
    describe: Callable[[BaseException], str] = default_describe,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
    hooks: RetryHooks | None = None,
    clock: Clock | None = None,
) -> T:
    """Run ``fn(timeout)`` with breaker, retries, budget and deadline; see the module docstring.

    ``clock`` measures call durations for the breaker's slow-call rule; it defaults to the
    breaker's clock so a fake clock in tests drives both.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    if _testing.enabled and _testing.attempts is not None:
        attempts = min(attempts, _testing.attempts)
    hooks = hooks or RetryHooks()
    timer = clock if clock is not None else breaker.clock
    jitter = rng if rng is not None else _JITTER
    # Kind of the last attempt's error, set by the attempt so the loop need not classify
    # again; None when the attempt never reached fn (nothing to retry).
    last_kind: ErrorKind | None = None

    if budget is not None:
        budget.record_request()

    async def attempt() -> T:
        nonlocal last_kind
        last_kind = None
        deadline.raise_if_expired()
        try:
            permit = breaker.acquire()
        except Exception as exc:
            _notify(hooks.on_call, classify(exc).value, 0.0)
            raise
        started = timer.monotonic()
        try:
            result = await _bounded(fn, deadline)
        except asyncio.CancelledError:
            permit.release()
            _notify(hooks.on_call, OUTCOME_CANCELLED, timer.monotonic() - started)
            raise
        except BaseException as exc:
            duration = timer.monotonic() - started
            kind = classify(exc)
            if kind is ErrorKind.INFRASTRUCTURE:
                permit.failure(duration, describe(exc))
            else:
                permit.release()
            last_kind = kind
            _notify(hooks.on_call, kind.value, duration)
            raise
        duration = timer.monotonic() - started
        permit.success(duration)
        _notify(hooks.on_call, OUTCOME_SUCCESS, duration)
        return result

    number = 1
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if number >= attempts or last_kind not in _RETRY_KINDS:
                raise
            if breaker.state not in _RETRY_STATES:
                # A failure that tripped the breaker must not be hammered again.
                raise
            delay = (
                0.0
                if _testing.enabled
                else jitter.uniform(0.0, backoff_ceiling(number, base_s=base_s, max_s=max_s))
            )
            if delay >= deadline.remaining():
                raise
            # Asked last, so a retry that would not happen anyway does not spend the budget.
            if budget is not None and not budget.try_spend():
                _notify(hooks.on_budget_exhausted)
                raise
            _notify(hooks.on_retry, number, exc, delay)
        await sleep(delay)
        number += 1


async def _bounded(fn: Callable[[float], Awaitable[T]], deadline: Deadline) -> T:
    """Await ``fn(timeout)`` under the time that remains; running out is ``DeadlineExceeded``."""
    timeout = deadline.remaining()
    scope = asyncio.timeout(None if math.isinf(timeout) else timeout)
    try:
        async with scope:
            return await fn(timeout)
    except DeadlineExceeded:
        raise
    except TimeoutError as exc:
        # Either our scope fired, or fn's own timeout (given the same remaining time) fired
        # first: both mean the call used up the deadline.
        if scope.expired() or deadline.expired():
            raise DeadlineExceeded(
                f"call did not finish within its {timeout:.3f}s", during_call=True
            ) from exc
        raise
