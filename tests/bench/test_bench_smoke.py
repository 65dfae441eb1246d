"""The benchmark harness, end to end for a few seconds, so it keeps working.

It measures nothing worth reading: every step lasts a fraction of a second. It runs the portable
path (Python load generator, no wrk) and checks the shape of the result file, with every
baseline (the same-work write baselines too), the server-bound get by id and the large tenant's
capability queries.
"""

from __future__ import annotations

import os
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
        "--open-rounds=2",
        "--agents=30",
        "--large-agents=300",
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
    assert doc["data"]["large"]["agents"] == 300
    server_bound = len(os.sched_getaffinity(0)) >= 2
    steps = {*WORKLOADS, "query-large", "down-before"} | (
        {"get-server-bound"} if server_bound else set()
    )
    assert set(doc["results"]) == steps

    writes = {"bare", "asyncpg", "asyncpg-ledger", "asyncpg-ledger-1rt", "sidecar-database"}
    targets = {
        "get": {"bare", "asyncpg", "sidecar-database", "sidecar-replica"},
        "query": {"bare", "asyncpg", "sidecar-database", "sidecar-replica"},
        "query-large": {"asyncpg", "sidecar-replica"},
        "register": writes,
        "performance": writes,
        "down": {"sidecar-database", "sidecar-replica"},
        "down-before": {"sidecar-replica"},
    }
    if server_bound:
        targets["get-server-bound"] = {"bare", "sidecar-replica"}
    heard = {"register": 0.0, "performance": 0.0}
    for workload, expected in targets.items():
        runs = doc["results"][workload]
        assert set(runs) == expected, workload
        for target, r in runs.items():
            sat = r["saturation"]
            assert sat["throughput_rps"] > 0, (workload, target, sat)
            assert sat["errors"] == 0, (workload, target, sat)
            assert sat["unexpected_status"] == 0, (workload, target, sat)
            assert sat["server_cpu_us_per_request"] > 0, (workload, target, sat)
            if target.startswith("sidecar"):
                assert sat["sidecar_answers"], (workload, target)
            if workload == "down-before":
                assert r["open"] == {}
                continue
            if workload == "get-server-bound":
                assert sat["processes"] == 1 and sat["connections"] == 16, sat
                assert sat["cores"]["generator"] != sat["cores"]["server"], sat
                assert r["open"] == {}
                continue
            # Each run of a write workload starts on a vacuumed, checkpointed database.
            if workload in ("register", "performance"):
                for run in (sat, r["open"]["200"]):
                    assert run["quiesced"]["autovacuum_still_busy"] == 0, (workload, target)
                    # The other sidecars, up beside every target, heard its writes.
                    heard[workload] += run["listening_sidecars_cpu_us_per_request"]
            else:
                assert "quiesced" not in sat, (workload, target)
            if workload in ("register", "performance"):
                # Two windows per target, pooled: every answer of each in the one run.
                pooled = r["open"]["200"]
                assert len(pooled["rounds"]) == 2, (workload, target)
                assert pooled["answered"] == sum(w["answered"] for w in pooled["rounds"])
            lat = r["open"]["200"]["latency_ms"]
            assert {"p50", "p90", "p99"} <= set(lat), (workload, target)
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"], (workload, target, lat)

    # Too short a run for every target's figure to pass the CPU clock's tick; all together do.
    assert heard["register"] > 0 and heard["performance"] > 0, heard

    # With PostgreSQL down every read came from the replica.
    for target in ("sidecar-database", "sidecar-replica"):
        answers = doc["results"]["down"][target]["saturation"]["sidecar_answers"]
        assert set(answers) == {"200/replica"}, answers
        assert doc["results"]["down"][target]["breaker"]["at_step_start"] == "open"
    # Outage reads are held to the healthy replica reads measured right before the outage.
    down_ratios = doc["ratios"]["down"]["sidecar-replica"]
    before = doc["results"]["down-before"]["sidecar-replica"]["saturation"]["throughput_rps"]
    down = doc["results"]["down"]["sidecar-replica"]["saturation"]["throughput_rps"]
    assert down_ratios["throughput_vs_healthy_replica_reads"] == round(down / before, 3)
    assert (
        doc["acceptance"]["4a_down_sidecar-replica_throughput_vs_healthy_replica_reads"]["value"]
        == down_ratios["throughput_vs_healthy_replica_reads"]
    )

    assert {"throughput_vs_bare", "throughput_vs_asyncpg"} <= set(
        doc["ratios"]["get"]["sidecar-replica"]
    )
    assert {"throughput_vs_asyncpg-ledger", "throughput_vs_asyncpg-ledger-1rt"} <= set(
        doc["ratios"]["register"]["sidecar-database"]
    )
    for write in ("register", "performance"):
        summary = doc["writes"][write]
        assert summary["vs_one_statement"] and summary["vs_same_work"], summary
        assert set(summary["server_cpu_us_per_request"]) == writes
        assert summary["sidecar_at_rate"]["p99_ms"] > 0
        assert len(summary["sidecar_at_rate"]["p99_ms_by_window"]) == 2
        # The sidecar's loop, per window: its lag timer fires every 25 ms, so each window of
        # 0.3 s holds a few samples, none of them lost between the two readings.
        lags = summary["sidecar_at_rate"]["loop_lag_by_window"]
        assert len(lags) == 2 and all(lag["samples"] >= 3 for lag in lags), lags
        assert all(0 <= lag["over_25ms"] <= lag["over_5ms"] <= lag["samples"] for lag in lags)
        assert isinstance(summary["sidecar_at_rate"]["saturated_at_rate"], bool)
    expected_checks = {
        "1_get_replica_throughput_vs_bare",
        "2a_get_database_throughput_vs_asyncpg",
        "4b_down_sidecar-replica_p99_ms_at_200",
        "7a_register_throughput_vs_one_insert",
        "7b_register_throughput_vs_same_work",
        "7c_register_p99_ms_at_200",
        "8a_performance_throughput_vs_asyncpg",
        "8c_performance_p99_ms_at_200",
        "9a_query_replica_throughput_vs_asyncpg_30_agents",
        "9b_query_replica_cpu_us_per_query_300_agents",
    } | ({"1b_get_replica_throughput_vs_bare_server_bound"} if server_bound else set())
    assert expected_checks <= set(doc["acceptance"]), set(doc["acceptance"])
    for check in doc["acceptance"].values():
        assert {"value", "target", "pass"} <= set(check)
    assert doc["replica_memory"]["agents"] == 10_000
    assert doc["replica_memory"]["tracemalloc_mib_per_10k"] > 0
