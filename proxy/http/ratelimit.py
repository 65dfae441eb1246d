"""Per-token token buckets, with an injectable clock so tests are exact.

Hand-written because the sidecar must answer 429 at once with a Retry-After, never queue the
request: limiters such as aiolimiter make the caller wait for capacity instead, and none takes
an injectable clock. A dict of (tokens, last refill) per token is all it needs.
"""

from __future__ import annotations

from proxy.resilience import SYSTEM_CLOCK, Clock


class RateLimiter:
    def __init__(self, *, rate_per_s: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed; otherwise the seconds until one token is available."""
        now = self.clock.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
