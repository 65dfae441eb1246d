"""What a generator process saw inside the measurement window, and its summary.

A tally crosses the process boundary as JSON (each generator process writes one), so it holds
plain numbers; the summary (throughput, latency percentiles, overload) is computed once, by the
harness, over the tallies of every process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


@dataclass
class Tally:
    """What one generator process saw inside the measurement window."""

    latencies_us: list[int] = field(default_factory=list)
    # Open loop: how late after its intended time each request left (timer granularity, a busy
    # generator, or no free connection). Included in the latency, reported to be seen.
    send_lag_us: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    unfinished: int = 0
    scheduled: int = 0
    window_s: float = 0.0
    # Every answer, warm-up included: the denominator of the server's CPU time per request.
    answered_total: int = 0
    # Open loop: from the first measured intended time to the last measured answer.
    span_s: float = 0.0

    def status(self, code: int) -> None:
        key = str(code)
        self.statuses[key] = self.statuses.get(key, 0) + 1


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of values already sorted; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _ms(sorted_us: list[int], p: float) -> float:
    """A percentile of microseconds, in milliseconds; 0 for no values."""
    return round((percentile(sorted_us, p) or 0.0) / 1000.0, 3)


def summarize(tallies: list[Tally], expect: tuple[int, ...], mode: str) -> dict[str, Any]:
    lat: list[int] = sorted(v for t in tallies for v in t.latencies_us)
    statuses: dict[str, int] = {}
    for t in tallies:
        for k, v in t.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    ok = sum(v for k, v in statuses.items() if int(k) in expect)
    answered = sum(statuses.values())
    errors = sum(t.errors for t in tallies)
    unfinished = sum(t.unfinished for t in tallies)
    window = max((t.window_s for t in tallies), default=0.0)
    out: dict[str, Any] = {
        "mode": mode,
        "tool": "python",
        "window_s": round(window, 3),
        "answered": answered,
        "answered_total": sum(t.answered_total for t in tallies),
        "ok": ok,
        "unexpected_status": answered - ok,
        "errors": errors,
        "unfinished": unfinished,
        "statuses": dict(sorted(statuses.items())),
        "throughput_rps": round(ok / window, 1) if window > 0 else 0.0,
        "latency_ms": {f"p{p:g}": _ms(lat, p) for p in PERCENTILES}
        | {
            "mean": round(sum(lat) / len(lat) / 1000.0, 3) if lat else 0.0,
            "max": round(lat[-1] / 1000.0, 3) if lat else 0.0,
        },
    }
    if mode == "open":
        lag = sorted(v for t in tallies for v in t.send_lag_us)
        out["send_lag_ms"] = {f"p{p:g}": _ms(lag, p) for p in (50.0, 99.0)}
        scheduled = sum(t.scheduled for t in tallies)
        span = max((t.span_s for t in tallies), default=0.0)
        out["scheduled"] = scheduled
        out["answer_span_s"] = round(span, 3)
        out["achieved_rps"] = round(answered / span, 1) if span > 0 else 0.0
        # The server did not keep up with the rate: half the requests waited for one of the
        # connections, or the answers came in well after the window, or some never came.
        out["overloaded"] = bool(
            unfinished
            or errors
            or answered < 0.98 * scheduled
            or out["send_lag_ms"]["p50"] > 10.0
            or span > window * 1.05 + 0.1
        )
    return out


def summarize_rounds(rounds: list[list[Tally]], expect: tuple[int, ...]) -> dict[str, Any]:
    """Open-loop windows of one target run one after another, as one run: every answer in one
    latency distribution, rates over the windows' summed length, overloaded when any window
    was. Each window's own summary is kept under "rounds"."""
    each = [summarize(r, expect, "open") for r in rounds]
    out = summarize([t for r in rounds for t in r], expect, "open")
    window = sum(max((t.window_s for t in r), default=0.0) for r in rounds)
    span = sum(max((t.span_s for t in r), default=0.0) for r in rounds)
    out["window_s"] = round(window, 3)
    out["throughput_rps"] = round(out["ok"] / window, 1) if window > 0 else 0.0
    out["answer_span_s"] = round(span, 3)
    out["achieved_rps"] = round(out["answered"] / span, 1) if span > 0 else 0.0
    out["overloaded"] = any(e["overloaded"] for e in each)
    out["rounds"] = [
        {
            "p50_ms": e["latency_ms"]["p50"],
            "p99_ms": e["latency_ms"]["p99"],
            "answered": e["answered"],
        }
        for e in each
    ]
    return out
