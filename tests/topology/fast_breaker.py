"""The breaker of the failover tests: it opens within a few failed calls of a primary going away
and closes within a second or two of a new one answering, so a failover fits a test's time."""

from __future__ import annotations

from typing import Any

FAILOVER_BREAKER: dict[str, Any] = {
    "failure_threshold": 3,
    "open_base_ms": 200,
    "open_max_ms": 1000,
    "probe_interval_ms": 100,
    "probe_timeout_ms": 1000,
    "half_open_successes": 2,
}
