"""What ``python -m bench`` concludes: ratios against the baselines, acceptance, a text summary.

The machine is shared, so absolute figures vary from run to run; the ratios against the
baselines measured in the same run are what the acceptance targets hold the sidecar to.
"""

from __future__ import annotations

from typing import Any

from bench.benchmark_steps import Plan
from bench.replica_memory import replica_memory_lines
from bench.reporting import acceptance_lines, machine_line


def _sat(w: dict[str, Any], target: str) -> float:
    """Throughput at saturation; 0 when not measured (ratios against it are then None)."""
    return float(w.get(target, {}).get("saturation", {}).get("throughput_rps", 0.0))


def _cpu(w: dict[str, Any], target: str) -> float:
    """Server CPU microseconds per request at saturation; 0 when not measured."""
    return float(w.get(target, {}).get("saturation", {}).get("server_cpu_us_per_request") or 0.0)


def _lat(w: dict[str, Any], target: str, rate: float, p: str) -> float | None:
    run = w.get(target, {}).get("open", {}).get(f"{rate:g}")
    if not run or not run.get("ok"):
        return None
    return float(run["latency_ms"][p])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, w in results.items():
        if name == "down":
            continue
        entry: dict[str, Any] = {}
        for t in ("sidecar-database", "sidecar-replica"):
            if t not in w:
                continue
            e: dict[str, Any] = {
                "throughput_vs_bare": _ratio(_sat(w, t), _sat(w, "bare")),
                "throughput_vs_asyncpg": _ratio(_sat(w, t), _sat(w, "asyncpg")),
                "server_cpu_per_request_vs_bare": _ratio(_cpu(w, t), _cpu(w, "bare")),
                "server_cpu_per_request_vs_asyncpg": _ratio(_cpu(w, t), _cpu(w, "asyncpg")),
            }
            for base in ("asyncpg", "bare"):
                added = {}
                for p in ("p50", "p90", "p99"):
                    mine, theirs = _lat(w, t, plan.rate, p), _lat(w, base, plan.rate, p)
                    if mine is not None and theirs is not None:
                        added[p] = round(mine - theirs, 3)
                e[f"added_latency_ms_vs_{base}_at_{plan.rate:g}"] = added
            entry[t] = e
        out[name] = entry
    if "down" in results and "get" in results:
        d, g = results["down"], results["get"]
        out["down"] = {
            t: {
                "throughput_vs_healthy_replica_reads": _ratio(
                    _sat(d, t), _sat(g, "sidecar-replica")
                ),
                "throughput_vs_healthy_same_sidecar": _ratio(_sat(d, t), _sat(g, t)),
            }
            for t in ("sidecar-database", "sidecar-replica")
            if t in d
        }
    return out


def _check(value: float | None, target: float, op: str) -> dict[str, Any]:
    ok = value is not None and (
        value >= target if op == ">=" else value <= target if op == "<=" else value < target
    )
    return {"value": value, "target": f"{op} {target:g}", "pass": bool(ok)}


def acceptance(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    g = results.get("get")
    if g:
        out["1_get_replica_throughput_vs_bare"] = _check(
            _ratio(_sat(g, "sidecar-replica"), _sat(g, "bare")), 0.8, ">="
        )
        out["2a_get_database_throughput_vs_asyncpg"] = _check(
            _ratio(_sat(g, "sidecar-database"), _sat(g, "asyncpg")), 0.7, ">="
        )
        for p, target in (("p50", 0.5), ("p99", 1.5)):
            mine, base = _lat(g, "sidecar-database", plan.rate, p), _lat(g, "asyncpg", plan.rate, p)
            added = round(mine - base, 3) if mine is not None and base is not None else None
            out[f"2b_get_database_added_{p}_ms_at_{plan.rate:g}"] = _check(added, target, "<=")
    q = results.get("query")
    if q:
        for t in ("sidecar-database", "sidecar-replica"):
            out[f"3_query_p95_ms_at_{plan.query_rate:g}_{t}"] = _check(
                _lat(q, t, plan.query_rate, "p95"), 10.0, "<="
            )
    d = results.get("down")
    if d and g:
        for t in ("sidecar-replica", "sidecar-database"):
            out[f"4a_down_{t}_throughput_vs_healthy_replica_reads"] = _check(
                _ratio(_sat(d, t), _sat(g, "sidecar-replica")), 0.9, ">="
            )
            out[f"4b_down_{t}_p99_ms_at_{plan.rate:g}"] = _check(
                _lat(d, t, plan.rate, "p99"), 5.0, "<"
            )
    return out


def report(doc: dict[str, Any]) -> str:
    """A short text summary of one result document."""
    lines = [machine_line(doc["machine"])]
    lines.append(f"command: {doc['command']}   ({doc['elapsed_s']} s)")
    plan = doc["plan"]
    rate = f"{plan['rate']:g}"
    header = (
        f"{'workload':<12} {'target':<17} {'sat req/s':>10} {'cpu us/req':>10} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    )
    lines.append(header + f"   (latency open loop at {rate} req/s)")
    for name, w in doc.get("results", {}).items():
        for t, r in w.items():
            sat = r.get("saturation", {})
            cpu = sat.get("server_cpu_us_per_request") or 0.0
            o = r.get("open", {}).get(rate)
            lat = o["latency_ms"] if o else {}
            flag = " overloaded" if o and o.get("overloaded") else ""
            if "journaled" in sat:
                flag += f"  [saturation: {sat['journaled']} journaled, {sat['overloaded']} 503]"
            lines.append(
                f"{name:<12} {t:<17} {sat.get('throughput_rps', 0.0):>10.0f} {cpu:>10.1f} "
                f"{lat.get('p50', 0):>8.2f} {lat.get('p90', 0):>8.2f} {lat.get('p99', 0):>8.2f}"
                f"{flag}"
            )
    lines.append("acceptance:")
    lines += acceptance_lines(doc.get("acceptance", {}))
    for name, errs in doc.get("sidecar_errors", {}).items():
        lines.append(f"{name}: {errs['count']} log lines at level error")
    lines += replica_memory_lines(doc.get("replica_memory", {}))
    return "\n".join(lines)
