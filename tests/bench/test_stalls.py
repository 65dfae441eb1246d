"""`python -m bench.stalls`: slow answers grouped into windows with what was seen beside them,
and the run itself end to end for a few seconds, so it keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.stalls import Answer, Samples, _ticks_used, annotate, slow_windows

ROOT = Path(__file__).resolve().parents[2]


def test_slow_answers_less_than_the_gap_apart_share_a_window() -> None:
    answers = [
        Answer(0.000, 0.001, 201),  # fast: in no window
        Answer(1.000, 0.020, 201),
        Answer(1.030, 0.012, 201),  # 30 ms after the one before: the same window
        Answer(1.200, 0.009, 201),  # 170 ms after: a window of its own
        Answer(1.210, 0.002, 201),  # fast, between slow ones: ends nothing, joins nothing
    ]
    windows = slow_windows(answers, slow_s=0.008)
    assert [(w.start_s, w.end_s, w.answers, w.worst_ms) for w in windows] == [
        (1.0, 1.03, 2, 20.0),
        (1.2, 1.2, 1, 9.0),
    ]


def test_a_window_is_annotated_with_what_was_seen_around_it() -> None:
    (window,) = slow_windows([Answer(2.0, 0.05, 201)], slow_s=0.008)
    samples = Samples(
        postgres=[
            (1.85, "IO:WalInitWrite", ""),  # 150 ms before: too early
            (1.95, "IO:WalInitWrite,Lock:transactionid", "autovacuum: VACUUM public.agents"),
            (2.04, "IO:WalInitWrite", ""),
            (2.2, "LWLock:WALInsert", ""),  # after the worst answer and 50 ms: too late
        ],
        cpu=[(1.95, {"sidecar": 0.03}), (2.05, {"sidecar": 0.05}), (2.5, {"sidecar": 1.0})],
    )
    annotate([window], samples)
    assert window.waits == {"IO:WalInitWrite": 2, "Lock:transactionid": 1}
    assert window.autovacuum == {"autovacuum: VACUUM public.agents"}
    assert window.cpu_s == {"sidecar": pytest.approx(0.08)}


def test_a_process_that_exits_between_two_readings_is_not_a_negative_use() -> None:
    before = {10: 500, 11: 300, 12: 40}
    now = {10: 520, 12: 45, 13: 7}  # 11 exited, 13 started: neither is a use in between
    assert _ticks_used(before, now) == 25


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stalls_runs_end_to_end_and_writes_the_result_file(tmp_path: Path) -> None:
    out = tmp_path / "stalls.json"
    cmd = [sys.executable, "-m", "bench.stalls", "--rate", "200", "--duration", "1"]
    cmd += ["--saturate", "0.5", "--slow-ms", "0.001", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=110, capture_output=True)
    doc = orjson.loads(out.read_bytes())
    assert doc["answers"]["count"] == 200
    assert doc["answers"]["statuses"] == {"201": 200}
    # Every answer is slower than a microsecond: all of them are in some window.
    assert sum(w["slow_answers"] for w in doc["windows"]) == 200
    assert {"sidecar", "generator", "postgres"} <= set(doc["cores_used"])
    assert doc["plan"]["postgres_storage"] in ("memory", "disk")
