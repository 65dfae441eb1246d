"""The sidecar's loop-lag samples between two readings of its histogram (`bench.metrics`)."""

from __future__ import annotations

from bench.metrics import loop_lag_figures

LES = ("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")


def cumulative(cause: str, *counts: int) -> dict[tuple[str, str], float]:
    """Counts per bucket (not cumulative) of one cause to what Prometheus shows."""
    out, running = {}, 0
    for le, n in zip(LES, counts, strict=True):
        running += n
        out[(cause, le)] = float(running)
    return out


def test_a_window_with_stalls_counts_them_by_cause_and_bounds_the_worst() -> None:
    before = cumulative("work", 100, 3, 0, 0, 0, 0, 0, 0, 0, 0) | cumulative(
        "cpu", 0, 0, 1, 0, 0, 0, 0, 0, 0, 0
    )
    # 400 more samples: 395 on time; of its own work 2 between 5 and 10 ms and 1 up to 100 ms;
    # waiting for a core 2 up to 25 ms.
    after = cumulative("work", 495, 3, 2, 0, 0, 1, 0, 0, 0, 0) | cumulative(
        "cpu", 0, 0, 1, 2, 0, 0, 0, 0, 0, 0
    )
    assert loop_lag_figures(before, after) == {
        "samples": 400,
        "over_5ms": 5,
        "over_25ms": 1,
        "worst_ms_at_most": 100.0,
        "cpu_over_5ms": 2,
        "cpu_over_25ms": 0,
    }


def test_a_quiet_window_and_one_beyond_the_last_bound() -> None:
    quiet = loop_lag_figures({}, cumulative("unknown", 40, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert quiet is not None
    assert (quiet["samples"], quiet["over_5ms"], quiet["worst_ms_at_most"]) == (40, 0, 1.0)
    assert quiet["cpu_over_5ms"] == 0
    long = loop_lag_figures({}, cumulative("cpu", 40, 0, 0, 0, 0, 0, 0, 0, 0, 1))
    assert long is not None and long["worst_ms_at_most"] is None
    assert long["over_25ms"] == long["cpu_over_25ms"] == 1


def test_a_sidecar_without_the_histogram_gives_nothing() -> None:
    assert loop_lag_figures({}, {}) is None
