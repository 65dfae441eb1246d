"""Prometheus metrics of one sidecar, in a registry of their own (no process globals).

The resilience core does not import this module: the app attaches these metrics to breaker
listeners and retry hooks, so the core stays free of instrumentation.

What is counted per request (requests by route and status, latency by route, database calls,
the wait for a connection, replica hits, committed writes) is kept as plain numbers by
`RequestMetrics`, `PlainHistogram` and `CountsByLabel`, turned into samples only when scraped.
prometheus_client's own metrics take a lock on every increment, to be safe across threads;
these are counted on the event loop's one thread, where that lock and the label lookups cost as
much as the rest of a replica read's bookkeeping.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "registry_proxy_"
# The outcome of a database call the breaker refused (`ErrorKind.REJECTED`'s value).
REFUSED_OUTCOME = "rejected"
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")
SHED_REASONS = ("loop-lag", "queue-full", "queue-timeout", "backlog")

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

# A timer fired on time is late by well under a millisecond; what matters is how often, and
# how far, the loop was held up.
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG_CAUSES = ("work", "cpu", "unknown")


class _Latency:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.count = 0
        self.sum = 0.0


class _Answered:
    __slots__ = ("count", "latency")

    def __init__(self, latency: _Latency) -> None:
        self.count = 0
        self.latency = latency


class PlainHistogram(Collector):
    """A labelled histogram kept as plain numbers; only the event loop's thread may call
    `observe`. Label values come as one tuple, in the order of ``labels``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._bounds = buckets
        self._les = [repr(float(b)) for b in buckets] + ["+Inf"]  # as Go formats them
        self._series: dict[tuple[str, ...], _Latency] = {}
        if not self._labels:
            # Its one series exists from the start, at 0, like an unlabelled Histogram's.
            self._series[()] = _Latency(len(self._les))

    def observe(self, key: tuple[str, ...], seconds: float) -> None:
        latency = self._series.get(key)
        if latency is None:
            latency = self.series(key)
        # le is inclusive: a value equal to a bound belongs to that bound's bucket.
        latency.buckets[bisect_left(self._bounds, seconds)] += 1
        latency.count += 1
        latency.sum += seconds

    def series(self, key: tuple[str, ...]) -> _Latency:
        """The series of ``key``, made on first use; for a caller that keeps it and observes
        into it itself (`RequestMetrics`)."""
        latency = self._series.get(key)
        if latency is None:
            latency = self._series[key] = _Latency(len(self._les))
        return latency

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, latency in list(self._series.items()):
            cumulative, running = [], 0
            for le, n in zip(self._les, latency.buckets, strict=True):
                running += n
                cumulative.append((le, running))
            family.add_metric(list(labels), cumulative, latency.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RequestMetrics(Collector):
    """``registry_proxy_requests_total`` and ``registry_proxy_request_duration_seconds``, kept
    as plain numbers; only the event loop's thread may call `observe`."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        # Per (route, method, status, source): the count and the latency series of (route,
        # method, source), found with one lookup per request.
        self._counts: dict[tuple[str, str, int, str], _Answered] = {}
        self._latency = PlainHistogram(
            PREFIX + "request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "source"],
            buckets,
        )
        self._bounds = buckets

    def observe(self, route: str, method: str, status: int, source: str, seconds: float) -> None:
        answered = self._counts.get((route, method, status, source))
        if answered is None:
            answered = self._counts[(route, method, status, source)] = _Answered(
                self._latency.series((route, method, source))
            )
        answered.count += 1
        latency = answered.latency
        # le is inclusive, as in `PlainHistogram.observe`.
        latency.buckets[bisect_left(self._bounds, seconds)] += 1
        latency.count += 1
        latency.sum += seconds

    def count(self, route: str, method: str, status: int, source: str) -> int:
        answered = self._counts.get((route, method, status, source))
        return 0 if answered is None else answered.count

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "HTTP requests answered",
            labels=["route", "method", "status", "source"],
        )
        for (route, method, status, source), answered in list(self._counts.items()):
            requests.add_metric([route, method, str(status), source], answered.count)
        yield requests
        yield from self._latency.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class CountsByLabel(Collector):
    """A counter with one label, kept as plain numbers like `RequestMetrics`; for counts taken
    on every read (replica hits). Only the event loop's thread may call `inc`."""

    def __init__(
        self, name: str, documentation: str, label: str, *, known: Sequence[str] = ()
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        # Values exposed (at 0) before the first count, so a rate over them starts at once.
        self._counts: dict[str, int] = dict.fromkeys(known, 0)

    def inc(self, value: str) -> None:
        self._counts[value] = self._counts.get(value, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, n in list(self._counts.items()):
            family.add_metric([value], n)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = RequestMetrics()
        r.register(self.requests)
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
            "Database attempts retried, by the kind of error that caused the retry",
            ["kind"],
            registry=r,
        )
        # Per attempt, on every database call: plain numbers, no label lookup.
        self.db_attempts = CountsByLabel(
            PREFIX + "db_attempts",
            "Database call attempts by how they ended: success, infrastructure, transient, "
            "permanent, rejected (by the breaker) or cancelled",
            "outcome",
        )
        r.register(self.db_attempts)
        self.probes = Counter(
            PREFIX + "probes",
            "Health probe checks while the breaker is open or half-open, by outcome",
            ["outcome"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            PREFIX + "retry_budget_exhausted",
            "Retries refused because the budget was spent",
            registry=r,
        )
        self.db_call_duration = PlainHistogram(
            PREFIX + "db_call_duration_seconds",
            "Database call latency",
            ["operation", "outcome"],
        )
        r.register(self.db_call_duration)
        self._refused: dict[str, _Latency] = {}
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
        self.replica_hits = CountsByLabel(
            PREFIX + "replica_hits", "Reads answered from the replica", "kind"
        )
        r.register(self.replica_hits)
        self.journal_depth = Gauge(
            PREFIX + "journal_depth", "Journaled writes not yet applied", registry=r
        )
        self.journal_writable = Gauge(
            PREFIX + "journal_writable",
            "1 while the journal takes new writes, 0 when its disk is full or it failed",
            registry=r,
        )
        self.journal_quarantine_files = Gauge(
            PREFIX + "journal_quarantine_files",
            "Side files of damaged journal records set aside (journal.log.damaged-*)",
            registry=r,
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
        self.writes_committed = CountsByLabel(
            PREFIX + "writes_committed",
            "Writes committed in PostgreSQL",
            "path",
            known=("direct", "replay"),
        )
        r.register(self.writes_committed)
        # The failover guard: writes no standby is known to hold, and those a promotion sent back.
        self.failover_unconfirmed = Gauge(
            PREFIX + "failover_unconfirmed_writes",
            "Committed writes no standby is known to have flushed yet",
            registry=r,
        )
        self.failover_reapplied = Counter(
            PREFIX + "failover_reapplied",
            "Committed writes journaled again after a standby was promoted",
            registry=r,
        )
        # Overload: the queue for database connections, and what was refused for capacity.
        self.db_queue_depth = Gauge(
            PREFIX + "db_queue_depth",
            "Requests waiting for a database connection (the bulkhead's queue)",
            registry=r,
        )
        # Observed on every database call a request makes: plain numbers, like the requests'.
        self.db_queue_wait = PlainHistogram(
            PREFIX + "db_queue_wait_seconds",
            "Time a request waited for a database connection",
            [],
        )
        r.register(self.db_queue_wait)
        self.shed = Counter(
            PREFIX + "shed",
            "Requests refused for lack of capacity (503 overloaded, or a read from the replica)",
            ["reason"],
            registry=r,
        )
        self.loop_lag = Gauge(
            PREFIX + "loop_lag_seconds",
            "How late the event loop ran its last timer",
            registry=r,
        )
        # Every sample of the lag (one per 25 ms): a stall of the process shows here, however
        # short, where the gauge holds only the last sample when scraped. `cause`: "cpu" when
        # the loop's thread, over the sample's interval, waited for a core at least half as
        # long as it was late; "work" when it did not (it ran something long); "unknown" where
        # the kernel does not say. The wait is not timed to the late part alone, so "cpu" is
        # the likelier cause, not a proof.
        self.loop_lag_samples = PlainHistogram(
            PREFIX + "loop_lag_sample_seconds",
            "How late the event loop ran each of its lag timers, by cause",
            ["cause"],
            buckets=LOOP_LAG_BUCKETS,
        )
        r.register(self.loop_lag_samples)
        for cause in LOOP_LAG_CAUSES:
            self.loop_lag_samples.series((cause,))
        for reason in SHED_REASONS:
            self.shed.labels(reason)
        for state in BREAKER_STATES:
            self.breaker_state.labels("postgres", state).set(1 if state == "closed" else 0)
        for outcome in ("applied", "rejected", "failed"):
            self.journal_replay.labels(outcome)
        for kind in ("infrastructure", "transient"):
            self.retries.labels(kind)
        for outcome in ("ok", "failed"):
            self.probes.labels(outcome)
        for state in ("in_use", "idle", "max"):
            self.pool_connections.labels(state)

    def observe_loop_lag(self, seconds: float, waited_s: float | None) -> None:
        if waited_s is None:
            cause = "unknown"
        else:
            cause = "cpu" if waited_s * 2 >= seconds and seconds > 0 else "work"
        self.loop_lag_samples.observe((cause,), seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self.db_queue_wait.observe((), seconds)

    def observe_db_call(self, operation: str, outcome: str, seconds: float) -> None:
        self.db_call_duration.observe((operation, outcome), seconds)

    def observe_refused_call(self, operation: str) -> None:
        """`observe_db_call(operation, "rejected", 0.0)` with the series found by operation
        alone: every read while PostgreSQL is away records one."""
        latency = self._refused.get(operation)
        if latency is None:
            latency = self._refused[operation] = self.db_call_duration.series(
                (operation, REFUSED_OUTCOME)
            )
        latency.buckets[0] += 1  # no time: the first bucket; the sum does not move
        latency.count += 1

    def set_breaker_state(self, dependency: str, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker_state.labels(dependency, s).set(1 if s == state else 0)
