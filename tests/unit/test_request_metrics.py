"""The per-request metrics kept as plain numbers expose what prometheus_client's would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.observability.metrics import LATENCY_BUCKETS, Metrics
from proxy.resilience import ErrorKind


def _samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_latency_histogram_matches_prometheus_client() -> None:
    values = [0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.7, 10.0, 11.0]
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "registry_proxy_request_duration_seconds",
        "HTTP request latency",
        ["route", "method", "source"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    # The latency has no status label: answers of every status share one series.
    for v, status in zip(values, [200, 404, 200, 304, 500, 200, 429, 200], strict=True):
        metrics.requests.observe("get_agent", "GET", status, "replica", v)
        reference.labels("get_agent", "GET", "replica").observe(v)
    metrics.requests.observe("query_agents", "GET", 200, "replica", 0.003)
    reference.labels("query_agents", "GET", "replica").observe(0.003)
    ours = _samples(
        generate_latest(metrics.registry).decode(), "registry_proxy_request_duration_seconds"
    )
    theirs = _samples(
        generate_latest(reference_registry).decode(), "registry_proxy_request_duration_seconds"
    )
    assert ours == theirs
    assert len(ours) == 2 * (len(LATENCY_BUCKETS) + 1 + 2)  # buckets with +Inf, count, sum
    assert metrics.requests.count("get_agent", "GET", 200, "replica") == 4
    assert metrics.requests.count("get_agent", "GET", 200, "database") == 0


def test_requests_counted_by_route_method_status_source() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.requests.observe("get_agent", "GET", 200, "replica", 0.001)
    metrics.requests.observe("get_agent", "GET", 404, "none", 0.001)
    got = _samples(generate_latest(metrics.registry).decode(), "registry_proxy_requests")
    key = ("route", "get_agent"), ("method", "GET")
    assert got == {
        (
            "registry_proxy_requests_total",
            tuple(sorted([*key, ("status", "200"), ("source", "replica")])),
        ): 3.0,
        (
            "registry_proxy_requests_total",
            tuple(sorted([*key, ("status", "404"), ("source", "none")])),
        ): 1.0,
    }


def test_replica_hits_match_prometheus_client() -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Counter(
        "registry_proxy_replica_hits",
        "Reads answered from the replica",
        ["kind"],
        registry=reference_registry,
    )
    for kind in ("get", "get", "query", "get"):
        metrics.replica_hits.inc(kind)
        reference.labels(kind).inc()
    ours = _samples(generate_latest(metrics.registry).decode(), "registry_proxy_replica_hits")
    theirs = _samples(generate_latest(reference_registry).decode(), "registry_proxy_replica_hits")
    assert ours == theirs
    assert ours[("registry_proxy_replica_hits_total", (("kind", "get"),))] == 3.0


def test_db_call_histogram_matches_prometheus_client() -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "registry_proxy_db_call_duration_seconds",
        "Database call latency",
        ["operation", "outcome"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    calls = [("get_agent", "success", 0.0004), ("get_agent", "rejected", 0.0)]
    calls += [("query", "infrastructure", 2.5), ("get_agent", "success", 0.002)]
    for operation, outcome, seconds in calls:
        metrics.observe_db_call(operation, outcome, seconds)
        reference.labels(operation, outcome).observe(seconds)
    family = "registry_proxy_db_call_duration_seconds"
    ours = _samples(generate_latest(metrics.registry).decode(), family)
    assert ours == _samples(generate_latest(reference_registry).decode(), family)
    assert len(ours) == 3 * (len(LATENCY_BUCKETS) + 3)  # three series


def test_queue_wait_and_committed_writes_match_prometheus_client() -> None:
    # Both were prometheus_client's own metrics before; a dashboard must not see a difference,
    # including the series that exist before anything is counted.
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    wait = Histogram(
        "registry_proxy_db_queue_wait_seconds",
        "Time a request waited for a database connection",
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    committed = Counter(
        "registry_proxy_writes_committed",
        "Writes committed in PostgreSQL",
        ["path"],
        registry=reference_registry,
    )
    for path in ("direct", "replay"):
        committed.labels(path)

    def compare() -> None:
        for family in ("registry_proxy_db_queue_wait_seconds", "registry_proxy_writes_committed"):
            ours = _samples(generate_latest(metrics.registry).decode(), family)
            theirs = _samples(generate_latest(reference_registry).decode(), family)
            assert ours == theirs, family
            assert ours

    compare()
    for v in (0.0, 0.0005, 0.003, 2.0):
        metrics.observe_queue_wait(v)
        wait.observe(v)
    for path in ("direct", "direct", "replay"):
        metrics.writes_committed.inc(path)
        committed.labels(path).inc()
    compare()


def test_a_refused_call_is_a_rejected_call_of_no_time() -> None:
    ours, reference = Metrics(), Metrics()
    calls = [("get_agent", "success", 0.002), ("get_agent", "rejected", 0.0)]
    for operation, outcome, seconds in calls:
        ours.observe_db_call(operation, outcome, seconds)
        reference.observe_db_call(operation, outcome, seconds)
    for operation in ("get_agent", "get_agent", "query", "get_agent"):
        ours.observe_refused_call(operation)
        reference.observe_db_call(operation, ErrorKind.REJECTED.value, 0.0)
    family = "registry_proxy_db_call_duration_seconds"
    got = _samples(generate_latest(ours.registry).decode(), family)
    assert got == _samples(generate_latest(reference.registry).decode(), family)
    count = ("registry_proxy_db_call_duration_seconds_count", (("operation", "get_agent"),))
    assert got[(count[0], (*count[1], ("outcome", "rejected")))] == 4.0
