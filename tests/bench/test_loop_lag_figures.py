"""The sidecar's loop-lag samples between two readings of its histogram (`bench.metrics`)."""

from __future__ import annotations

from bench.metrics import loop_lag_figures

LES = ("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")


def cumulative(*counts: int) -> dict[str, float]:
    """Counts per bucket (not cumulative) to what Prometheus shows."""
    out, running = {}, 0
    for le, n in zip(LES, counts, strict=True):
        running += n
        out[le] = float(running)
    return out


def test_a_window_with_one_stall_counts_it_and_bounds_the_worst() -> None:
    before = cumulative(100, 3, 0, 0, 0, 0, 0, 0, 0, 0)
    # 400 more samples: 395 on time, 2 between 5 and 10 ms, 2 up to 25 ms, 1 up to 100 ms.
    after = cumulative(495, 3, 2, 2, 0, 1, 0, 0, 0, 0)
    assert loop_lag_figures(before, after) == {
        "samples": 400,
        "over_5ms": 5,
        "over_25ms": 1,
        "worst_ms_at_most": 100.0,
    }


def test_a_quiet_window_and_one_beyond_the_last_bound() -> None:
    quiet = loop_lag_figures({}, cumulative(40, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert quiet == {"samples": 40, "over_5ms": 0, "over_25ms": 0, "worst_ms_at_most": 1.0}
    long = loop_lag_figures({}, cumulative(40, 0, 0, 0, 0, 0, 0, 0, 0, 1))
    assert long is not None and long["worst_ms_at_most"] is None and long["over_25ms"] == 1


def test_a_sidecar_without_the_histogram_gives_nothing() -> None:
    assert loop_lag_figures({}, {}) is None
