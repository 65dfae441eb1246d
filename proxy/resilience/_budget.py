"""Retry budget: retries may add at most a share of recent traffic, plus a small floor.

Per-call attempt limits do not stop a retry storm: when the dependency degrades, every call
retries at once and the load multiplies exactly when it hurts most. The budget caps retries
across all calls of a process. Within the sliding window a retry is allowed while::

    retries < ratio * requests + min_per_s * window_s

The floor (``min_per_s``) keeps retries possible when traffic is low, where the ratio alone
would allow none. Counts live in a :class:`~proxy.resilience._clock.SlidingWindow`, so both
recording and checking are O(1) with fixed memory.

No library offers a retry budget (a retry library bounds one call's attempts, not a fleet's retry
rate), so this small sliding-window counter is ours.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.resilience._clock import SYSTEM_CLOCK, Clock, SlidingWindow

__all__ = ["RetryBudget"]


class RetryBudget:
    """Shared by every call to one dependency; see the module docstring for the rule."""

    __slots__ = ("_window", "exhausted_count", "min_per_s", "ratio", "window_s")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_s: float = 5.0,
        window_s: float = 10.0,
        bucket_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if ratio < 0 or min_per_s < 0:
            raise ValueError("ratio and min_per_s must not be negative")
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be positive, got {bucket_s!r}")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        # Whole buckets only; a window shorter than a bucket gets one bucket of the window's size.
        buckets = max(1, math.ceil(window_s / bucket_s - 1e-9))
        self._window = SlidingWindow(
            ("requests", "retries"), window_s=window_s, buckets=buckets, clock=clock
        )
        self.exhausted_count = 0
        """Retries refused since start; monotonic, so it can back a Prometheus counter."""

    def record_request(self) -> None:
        """Count one logical call (not each attempt of it)."""
        self._window.add(1, 0)

    def _capacity(self, requests: float) -> float:
        """How many retries a window that saw ``requests`` calls holds."""
        return self.ratio * requests + self.min_per_s * self.window_s

    def allowed_now(self) -> int:
        """How many more retries would be allowed if asked right now."""
        requests, retries = self._window.totals()
        return max(0, math.ceil(self._capacity(requests) - retries))

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one; count a refusal otherwise."""
        requests, retries = self._window.totals()
        if retries < self._capacity(requests):
            self._window.add(0, 1)
            return True
        self.exhausted_count += 1
        return False

    def snapshot(self) -> dict[str, Any]:
        requests, retries = self._window.totals()
        return {
            "requests": requests,
            "retries": retries,
            "allowed_now": self.allowed_now(),
            "exhausted_count": self.exhausted_count,
            "ratio": self.ratio,
            "min_per_s": self.min_per_s,
            "window_s": self.window_s,
        }
