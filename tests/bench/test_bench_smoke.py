"""The benchmark harness, end to end for a few seconds, so it keeps working.

It measures nothing worth reading: every step lasts a fraction of a second. It runs the portable
path (Python load generator, no wrk) and checks the shape of the result file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("get", "query", "register", "performance", "down")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_runs_end_to_end_and_writes_the_result_file(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--duration=0.3",
        "--warmup=0.1",
        "--settle=0",
        "--processes=1",
        "--rounds=1",
        "--agents=30",
        "--rate=200",
        "--query-rate=200",
        "--no-wrk",
        f"--out={out}",
    ]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    assert elapsed < 60, f"the smoke run took {elapsed:.0f}s"

    doc = orjson.loads(out.read_bytes())
    for key in ("machine", "plan", "data", "results", "ratios", "acceptance", "replica_memory"):
        assert key in doc, key
    assert {"nproc", "cpu_model", "python"} <= set(doc["machine"])
    assert doc["data"]["agents"] == 30
    assert set(doc["results"]) == set(WORKLOADS)

    targets = {
        "get": {"bare", "asyncpg", "sidecar-database", "sidecar-replica"},
        "query": {"bare", "asyncpg", "sidecar-database", "sidecar-replica"},
        "register": {"bare", "asyncpg", "sidecar-database"},
        "performance": {"bare", "asyncpg", "sidecar-database"},
        "down": {"sidecar-database", "sidecar-replica"},
    }
    for workload, expected in targets.items():
        runs = doc["results"][workload]
        assert set(runs) == expected, workload
        for target, r in runs.items():
            sat = r["saturation"]
            assert sat["throughput_rps"] > 0, (workload, target, sat)
            assert sat["errors"] == 0, (workload, target, sat)
            lat = r["open"]["200"]["latency_ms"]
            assert {"p50", "p90", "p99"} <= set(lat), (workload, target)
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"], (workload, target, lat)
            if target.startswith("sidecar"):
                assert sat["sidecar_answers"], (workload, target)

    # With PostgreSQL down every read came from the replica.
    for target in ("sidecar-database", "sidecar-replica"):
        answers = doc["results"]["down"][target]["saturation"]["sidecar_answers"]
        assert set(answers) == {"200/replica"}, answers
        assert doc["results"]["down"][target]["breaker"]["at_step_start"] == "open"

    assert {"throughput_vs_bare", "throughput_vs_asyncpg"} <= set(
        doc["ratios"]["get"]["sidecar-replica"]
    )
    assert any(k.startswith("1_get_replica_throughput_vs_bare") for k in doc["acceptance"])
    assert any(k.startswith("4b_down_sidecar-replica_p99") for k in doc["acceptance"])
    for check in doc["acceptance"].values():
        assert {"value", "target", "pass"} <= set(check)
    assert doc["replica_memory"]["agents"] == 10_000
    assert doc["replica_memory"]["tracemalloc_mib_per_10k"] > 0
