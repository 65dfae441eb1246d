"""The sidecar's Prometheus counters (``/metrics``), read between two moments of a run.

The sidecar counts what it answered and where from; reading its counters before and after a step
tells replica answers from database answers without trusting the client's view.
"""

from __future__ import annotations

import re
from typing import Any

from bench.client import http
from bench.servers import Server

_REQUESTS = re.compile(r"^registry_proxy_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def scrape(server: Server) -> str:
    """The sidecar's `/metrics` text; empty when it does not answer."""
    try:
        status, text = await http(server.url + "/metrics", timeout_s=5.0)
    except OSError:
        return ""
    return text if status == 200 and isinstance(text, str) else ""


def request_counts(text: str, route: str) -> dict[str, float]:
    """The sidecar's own count of answers to `route`, by "status/source", in a scrape."""
    out: dict[str, float] = {}
    for labels, value in _REQUESTS.findall(text):
        lab = dict(_LABEL.findall(labels))
        if lab.get("route") == route:
            key = f"{lab.get('status')}/{lab.get('source')}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def diff_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    keys = sorted(set(before) | set(after))
    return {
        k: int(after.get(k, 0) - before.get(k, 0))
        for k in keys
        if after.get(k, 0) != before.get(k, 0)
    }


_PHASE_COUNTERS = re.compile(
    r"^registry_proxy_(shed_total|db_call_duration_seconds_(?:sum|count)|"
    r"db_queue_wait_seconds_(?:sum|count))(?:\{([^}]*)\})? ([0-9.e+-]+)$",
    re.MULTILINE,
)


async def metrics_snapshot(server: Server) -> dict[str, float]:
    """The sidecar's counters that explain a phase: refusals for lack of capacity by reason,
    database calls by operation and outcome (count and seconds), and the wait for a pooled
    connection (count and seconds). Keys like `shed:backlog`, `db:get:success:sum`."""
    text = await scrape(server)
    out: dict[str, float] = {}
    for name, labels, value in _PHASE_COUNTERS.findall(text):
        lab = dict(_LABEL.findall(labels))
        if name == "shed_total":
            key = f"shed:{lab.get('reason')}"
        elif name.startswith("db_call"):
            key = f"db:{lab.get('operation')}:{lab.get('outcome')}:{name.rsplit('_', 1)[1]}"
        else:
            key = f"queue_wait:{name.rsplit('_', 1)[1]}"
        out[key] = out.get(key, 0.0) + float(value)
    return out


def metrics_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the sidecar counted during one phase."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    shed = {k[5:]: int(v) for k, v in sorted(delta.items()) if k.startswith("shed:") and v}
    calls: dict[str, dict[str, Any]] = {}
    for key, count in sorted(delta.items()):
        if not key.startswith("db:") or not key.endswith(":count") or not count:
            continue
        _, operation, outcome, _ = key.split(":")
        total = delta.get(key[: -len("count")] + "sum", 0.0)
        calls[f"{operation}:{outcome}"] = {
            "calls": int(count),
            "mean_ms": round(total / count * 1000, 2),
        }
    waits = delta.get("queue_wait:count", 0.0)
    return {
        "shed": shed,
        "db_calls": calls,
        "queue_waits": int(waits),
        "queue_wait_mean_ms": (
            round(delta.get("queue_wait:sum", 0.0) / waits * 1000, 2) if waits else None
        ),
    }


_LAG_BUCKETS = re.compile(
    r"^registry_proxy_loop_lag_sample_seconds_bucket\{([^}]*)\} ([0-9.e+-]+)$", re.MULTILINE
)


def loop_lag_counts(text: str) -> dict[tuple[str, str], float]:
    """The sidecar's event-loop lag samples so far in a scrape, cumulative by (cause, bucket
    bound `le`)."""
    out: dict[tuple[str, str], float] = {}
    for labels, n in _LAG_BUCKETS.findall(text):
        lab = dict(_LABEL.findall(labels))
        out[(lab.get("cause", ""), lab.get("le", ""))] = float(n)
    return out


def _lag_of(delta: dict[str, float]) -> tuple[float, list[tuple[float, float]]]:
    samples = delta.get("+Inf", 0.0)
    return samples, sorted((float(le), n) for le, n in delta.items() if le != "+Inf")


def _over(samples: float, bounds: list[tuple[float, float]], seconds: float) -> int:
    return int(samples - next((n for b, n in bounds if b >= seconds), samples))


def loop_lag_figures(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, Any] | None:
    """How often, and how far, the sidecar's event loop was held up between two readings: its
    lag timer fires every 25 ms, so a stall of the process shows as one late sample, whatever
    the clients saw. `worst_ms_at_most` is the bound of the worst sample's bucket; the `cpu_`
    figures count the samples late mostly for want of a core (the kernel ran someone else)."""
    if not any(le == "+Inf" for _, le in after):
        return None
    total: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for (cause, le), n in after.items():
        d = n - before.get((cause, le), 0.0)
        total[le] = total.get(le, 0.0) + d
        if cause == "cpu":
            cpu[le] = cpu.get(le, 0.0) + d
    samples, bounds = _lag_of(total)
    worst = next((b for b, n in bounds if n >= samples), None)
    cpu_samples, cpu_bounds = _lag_of(cpu)
    return {
        "samples": int(samples),
        "over_5ms": _over(samples, bounds, 0.005),
        "over_25ms": _over(samples, bounds, 0.025),
        "worst_ms_at_most": round(worst * 1000, 3) if worst is not None else None,
        "cpu_over_5ms": _over(cpu_samples, cpu_bounds, 0.005) if cpu_samples else 0,
        "cpu_over_25ms": _over(cpu_samples, cpu_bounds, 0.025) if cpu_samples else 0,
    }
