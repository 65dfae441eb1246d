"""Prometheus metrics of one sidecar, in a registry of their own (no process globals).

The resilience core does not import this module: the app attaches these metrics to breaker
listeners and retry hooks, so the core stays free of instrumentation.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "registry_proxy_"
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")

# Sub-millisecond resolution matters: the sidecar's own overhead is a fraction of a millisecond.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests answered",
            ["route", "method", "status", "source"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            PREFIX + "breaker_state",
            "1 for the breaker's current state, 0 otherwise",
            ["dependency", "state"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            PREFIX + "breaker_transitions",
            "Breaker state transitions",
            ["dependency", "from_state", "to_state"],
            registry=r,
        )
        self.retries = Counter(
            PREFIX + "retries",
            "Retried database calls by what happened next",
            ["outcome"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            PREFIX + "retry_budget_exhausted",
            "Retries refused because the budget was spent",
            registry=r,
        )
        self.db_call_duration = Histogram(
            PREFIX + "db_call_duration_seconds",
            "Database call latency",
            ["operation", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pool_connections = Gauge(
            PREFIX + "pool_connections",
            "Connection pool use",
            ["state"],
            registry=r,
        )
        self.replica_agents = Gauge(
            PREFIX + "replica_agents", "Agents held by the local replica", registry=r
        )
        self.replica_age = Gauge(
            PREFIX + "replica_age_seconds",
            "Time since the replica last heard from PostgreSQL",
            registry=r,
        )
        self.replica_max_staleness = Gauge(
            PREFIX + "replica_max_staleness_seconds", "Configured staleness bound", registry=r
        )
        self.replica_hits = Counter(
            PREFIX + "replica_hits", "Reads answered from the replica", ["kind"], registry=r
        )
        self.journal_depth = Gauge(
            PREFIX + "journal_depth", "Journaled writes not yet applied", registry=r
        )
        self.journal_appends = Counter(
            PREFIX + "journal_appends", "Writes appended to the journal", registry=r
        )
        self.journal_replay = Counter(
            PREFIX + "journal_replay", "Journal replay outcomes", ["outcome"], registry=r
        )
        self.writes_accepted = Counter(
            PREFIX + "writes_accepted", "Writes acknowledged with 202 (journaled)", registry=r
        )
        self.writes_committed = Counter(
            PREFIX + "writes_committed", "Writes committed in PostgreSQL", ["path"], registry=r
        )
        self._request_children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}
        for state in BREAKER_STATES:
            self.breaker_state.labels("postgres", state).set(1 if state == "closed" else 0)
        for outcome in ("applied", "rejected", "failed"):
            self.journal_replay.labels(outcome)
        for path in ("direct", "replay"):
            self.writes_committed.labels(path)
        for state in ("in_use", "idle", "max"):
            self.pool_connections.labels(state)

    def observe_request(
        self, route: str, method: str, status: int, source: str, seconds: float
    ) -> None:
        """One answered request; the labelled children are cached, as this runs per request."""
        key = (route, method, status, source)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status), source),
                self.request_duration.labels(route, method, source),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_breaker_state(self, dependency: str, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker_state.labels(dependency, s).set(1 if s == state else 0)
