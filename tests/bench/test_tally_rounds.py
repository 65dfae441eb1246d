"""Open-loop windows pooled into one run (`bench.tally.summarize_rounds`)."""

from __future__ import annotations

from bench.tally import Tally, summarize_rounds


def _window(latencies_ms: list[float], *, window_s: float, scheduled: int | None = None) -> Tally:
    t = Tally(
        latencies_us=[int(v * 1000) for v in latencies_ms],
        statuses={"201": len(latencies_ms)},
        scheduled=len(latencies_ms) if scheduled is None else scheduled,
        window_s=window_s,
        answered_total=len(latencies_ms),
        span_s=window_s,
    )
    return t


def test_every_answer_of_every_window_is_in_one_distribution() -> None:
    # Two windows of 100 answers: one fast, one with ten slow answers. Alone, the second's
    # p99 is 50 ms; pooled, 1% of 200 answers is 2, and ten are slow, so p99 is still 50 ms,
    # while p90 falls back to the fast answers.
    fast = _window([1.0] * 100, window_s=1.0)
    slow = _window([1.0] * 90 + [50.0] * 10, window_s=1.0)
    out = summarize_rounds([[fast], [slow]], (201,))
    assert out["answered"] == 200
    assert out["latency_ms"]["p99"] == 50.0
    assert out["latency_ms"]["p90"] == 1.0
    assert [r["p99_ms"] for r in out["rounds"]] == [1.0, 50.0]
    assert [r["answered"] for r in out["rounds"]] == [100, 100]


def test_one_slow_window_among_three_weighs_a_third() -> None:
    # Two slow answers in one window of 100 put that window's p99 at 40 ms; among 300
    # answers they are under 1%, and the pooled p99 is the fast answers'.
    windows = [
        [_window([1.0] * 100, window_s=1.0)],
        [_window([1.0] * 98 + [40.0] * 2, window_s=1.0)],
        [_window([2.0] * 100, window_s=1.0)],
    ]
    out = summarize_rounds(windows, (201,))
    assert out["rounds"][1]["p99_ms"] == 40.0
    assert out["latency_ms"]["p99"] == 2.0


def test_rates_are_over_the_summed_windows_and_any_overloaded_window_counts() -> None:
    # Two windows of 2 s, 100 answers each: 50 req/s, not 100 (the windows ran one after the
    # other). The second answered half of what it scheduled: overloaded, so the run is.
    ok = _window([1.0] * 100, window_s=2.0)
    short = _window([1.0] * 100, window_s=2.0, scheduled=200)
    out = summarize_rounds([[ok], [short]], (201,))
    assert out["throughput_rps"] == 50.0
    assert out["window_s"] == 4.0
    assert out["achieved_rps"] == 50.0
    assert out["overloaded"] is True
    assert summarize_rounds([[ok], [ok]], (201,))["overloaded"] is False


def test_parallel_generators_of_one_window_share_its_length() -> None:
    # Two generator processes in the same 2 s window: the window is 2 s, not 4.
    a = _window([1.0] * 100, window_s=2.0)
    b = _window([1.0] * 100, window_s=2.0)
    out = summarize_rounds([[a, b]], (201,))
    assert out["throughput_rps"] == 100.0
