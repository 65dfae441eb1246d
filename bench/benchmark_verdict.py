"""What ``python -m bench`` concludes: ratios against the baselines, acceptance, a text summary.

The machine is shared, so absolute figures vary from run to run; the ratios against the
baselines measured in the same run are what the acceptance targets hold the sidecar to. For
writes there are two baselines on purpose: against the one-statement write the ratio includes
what the sidecar's guarantees cost in PostgreSQL (ledger, audit, capacity count); against the
write that leaves the same rows it is the sidecar's own overhead.
"""

from __future__ import annotations

from typing import Any

from bench.benchmark_steps import SAME_WORK, SAME_WORK_1RT, Plan
from bench.replica_memory import replica_memory_lines
from bench.reporting import acceptance_lines, machine_line

SIDECARS = ("sidecar-database", "sidecar-replica")
WRITES = ("register", "performance")


def _sat(w: dict[str, Any], target: str) -> float:
    """Throughput at saturation; 0 when not measured (ratios against it are then None)."""
    return float(w.get(target, {}).get("saturation", {}).get("throughput_rps", 0.0))


def _cpu(w: dict[str, Any], target: str) -> float:
    """Server CPU microseconds per request at saturation; 0 when not measured."""
    return float(w.get(target, {}).get("saturation", {}).get("server_cpu_us_per_request") or 0.0)


def _open(w: dict[str, Any], target: str, rate: float) -> dict[str, Any] | None:
    run = w.get(target, {}).get("open", {}).get(f"{rate:g}")
    return run if run and run.get("ok") else None


def _lat(w: dict[str, Any], target: str, rate: float, p: str) -> float | None:
    run = _open(w, target, rate)
    return None if run is None else float(run["latency_ms"][p])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Each sidecar against each baseline of the same step: throughput, CPU per request, and
    latency added at the fixed rate."""
    out: dict[str, Any] = {}
    for name, w in results.items():
        if name in ("down", "down-before"):
            continue
        bases = [t for t in w if t not in SIDECARS]
        entry: dict[str, Any] = {}
        for t in SIDECARS:
            if t not in w:
                continue
            e: dict[str, Any] = {}
            for base in bases:
                e[f"throughput_vs_{base}"] = _ratio(_sat(w, t), _sat(w, base))
                e[f"server_cpu_per_request_vs_{base}"] = _ratio(_cpu(w, t), _cpu(w, base))
            for base in bases:
                added = {}
                for p in ("p50", "p90", "p99"):
                    mine, theirs = _lat(w, t, plan.rate, p), _lat(w, base, plan.rate, p)
                    if mine is not None and theirs is not None:
                        added[p] = round(mine - theirs, 3)
                if added:
                    e[f"added_latency_ms_vs_{base}_at_{plan.rate:g}"] = added
            entry[t] = e
        out[name] = entry
    if "down" in results and "get" in results:
        d, g = results["down"], results["get"]
        healthy = _healthy_replica_reads(results)
        out["down"] = {
            t: {
                "throughput_vs_healthy_replica_reads": _ratio(_sat(d, t), healthy),
                "throughput_vs_healthy_replica_reads_of_the_get_step": _ratio(
                    _sat(d, t), _sat(g, "sidecar-replica")
                ),
                "throughput_vs_healthy_same_sidecar": _ratio(_sat(d, t), _sat(g, t)),
            }
            for t in SIDECARS
            if t in d
        }
    return out


def _healthy_replica_reads(results: dict[str, Any]) -> float:
    """Healthy replica reads to hold outage reads to: those measured right before the outage
    (`down-before`), else the get step's."""
    before = results.get("down-before")
    if before and _sat(before, "sidecar-replica"):
        return _sat(before, "sidecar-replica")
    return _sat(results.get("get", {}), "sidecar-replica")


def write_summary(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """For each write: the sidecar against the one-statement and the same-work baselines, the
    CPU per request of every target, and the sidecar at the fixed rate (its p99, and whether it
    kept up: `saturated_at_rate` is the open-loop run's overload flag)."""
    out: dict[str, Any] = {}
    sidecar = "sidecar-database"
    for name in WRITES:
        w = results.get(name)
        if not w or sidecar not in w:
            continue
        at_rate = _open(w, sidecar, plan.rate) or {}
        sat = _sat(w, sidecar)
        out[name] = {
            "sidecar_throughput_rps": sat,
            "vs_one_statement": _ratio(sat, _sat(w, "asyncpg")),
            "vs_same_work": _ratio(sat, _sat(w, SAME_WORK)),
            "vs_same_work_one_round_trip": _ratio(sat, _sat(w, SAME_WORK_1RT)),
            "throughput_rps": {t: _sat(w, t) for t in w},
            "server_cpu_us_per_request": {t: _cpu(w, t) for t in w},
            "postgres_cpu_us_per_request": {
                t: w[t].get("saturation", {}).get("postgres_cpu_us_per_request") for t in w
            },
            "sidecar_at_rate": {
                "rate": plan.rate,
                "p50_ms": at_rate.get("latency_ms", {}).get("p50"),
                "p99_ms": at_rate.get("latency_ms", {}).get("p99"),
                # The windows pooled into that p99, each on its own.
                "p99_ms_by_window": [r["p99_ms"] for r in at_rate.get("rounds", [])],
                # The sidecar's own event loop in each window: how often it was held up.
                "loop_lag_by_window": at_rate.get("loop_lag_by_window"),
                "saturated_at_rate": at_rate.get("overloaded"),
                "server_cpu_share_of_one_core": at_rate.get("server_cpu_share_of_one_core"),
                "saturation_throughput_over_rate": round(sat / plan.rate, 2),
            },
        }
    return out


def _by_window(at: dict[str, Any]) -> str:
    windows = at.get("p99_ms_by_window") or []
    if len(windows) < 2:
        return ""
    return f" ({len(windows)} windows pooled: {', '.join(_fmt(w) for w in windows)})"


def _lag_by_window(at: dict[str, Any]) -> str:
    lags = at.get("loop_lag_by_window") or []
    if not any(lags):
        return ""

    def one(lag: dict[str, Any] | None) -> str:
        if not lag:
            return "?"
        worst = lag.get("worst_ms_at_most")
        return (
            f"{lag['over_5ms']}/{lag['over_25ms']} [cpu {lag.get('cpu_over_5ms', '?')}"
            f"/{lag.get('cpu_over_25ms', '?')}] (<= {_fmt(worst) if worst else 'more'})"
        )

    return "; loop held up > 5 / > 25 ms [of which waiting for a core], worst: " + ", ".join(
        one(x) for x in lags
    )


def _check(value: float | None, target: float, op: str) -> dict[str, Any]:
    ok = value is not None and (
        value >= target if op == ">=" else value <= target if op == "<=" else value < target
    )
    return {"value": value, "target": f"{op} {target:g}", "pass": bool(ok)}


def acceptance(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rate = f"{plan.rate:g}"
    g = results.get("get")
    if g:
        out["1_get_replica_throughput_vs_bare"] = _check(
            _ratio(_sat(g, "sidecar-replica"), _sat(g, "bare")), 0.9, ">="
        )
    gs = results.get("get-server-bound")
    if gs:
        out["1b_get_replica_throughput_vs_bare_server_bound"] = _check(
            _ratio(_sat(gs, "sidecar-replica"), _sat(gs, "bare")), 0.9, ">="
        )
    if g:
        out["2a_get_database_throughput_vs_asyncpg"] = _check(
            _ratio(_sat(g, "sidecar-database"), _sat(g, "asyncpg")), 0.9, ">="
        )
        for p, target in (("p50", 0.5), ("p99", 1.5)):
            mine, base = _lat(g, "sidecar-database", plan.rate, p), _lat(g, "asyncpg", plan.rate, p)
            added = round(mine - base, 3) if mine is not None and base is not None else None
            out[f"2b_get_database_added_{p}_ms_at_{rate}"] = _check(added, target, "<=")
    q = results.get("query")
    if q:
        for t in SIDECARS:
            out[f"3_query_p95_ms_at_{plan.query_rate:g}_{t}"] = _check(
                _lat(q, t, plan.query_rate, "p95"), 10.0, "<="
            )
    d = results.get("down")
    if d and g:
        for t in ("sidecar-replica", "sidecar-database"):
            out[f"4a_down_{t}_throughput_vs_healthy_replica_reads"] = _check(
                _ratio(_sat(d, t), _healthy_replica_reads(results)), 0.9, ">="
            )
            out[f"4b_down_{t}_p99_ms_at_{rate}"] = _check(_lat(d, t, plan.rate, "p99"), 5.0, "<")
    out.update(_write_acceptance(results, plan))
    for name, agents in (("query", plan.agents), ("query-large", plan.large_agents)):
        w = results.get(name)
        if w:
            out[f"9a_query_replica_throughput_vs_asyncpg_{agents}_agents"] = _check(
                _ratio(_sat(w, "sidecar-replica"), _sat(w, "asyncpg")), 3.0, ">="
            )
            out[f"9b_query_replica_cpu_us_per_query_{agents}_agents"] = _check(
                _cpu(w, "sidecar-replica") or None, 100.0, "<"
            )
    return out


def _write_acceptance(results: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    db = "sidecar-database"
    r = results.get("register")
    if r:
        out["7a_register_throughput_vs_one_insert"] = _check(
            _ratio(_sat(r, db), _sat(r, "asyncpg")), 0.6, ">="
        )
        out["7b_register_throughput_vs_same_work"] = _check(
            _ratio(_sat(r, db), _sat(r, SAME_WORK)), 0.9, ">="
        )
        out[f"7c_register_p99_ms_at_{plan.rate:g}"] = _check(
            _lat(r, db, plan.rate, "p99"), 5.0, "<"
        )
    p = results.get("performance")
    if p:
        out["8a_performance_throughput_vs_asyncpg"] = _check(
            _ratio(_sat(p, db), _sat(p, "asyncpg")), 0.9, ">="
        )
        out["8b_performance_throughput_vs_same_work"] = _check(
            _ratio(_sat(p, db), _sat(p, SAME_WORK)), 0.9, ">="
        )
        out[f"8c_performance_p99_ms_at_{plan.rate:g}"] = _check(
            _lat(p, db, plan.rate, "p99"), 5.0, "<"
        )
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def report(doc: dict[str, Any]) -> str:
    """A short text summary of one result document."""
    lines = [machine_line(doc["machine"])]
    lines.append(f"command: {doc['command']}   ({doc['elapsed_s']} s)")
    plan = doc["plan"]
    rate = f"{plan['rate']:g}"
    header = (
        f"{'workload':<17} {'target':<19} {'sat req/s':>10} {'cpu us/req':>10} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    )
    lines.append(header + f"   (latency open loop at {rate} req/s)")
    for name, w in doc.get("results", {}).items():
        for t, r in w.items():
            sat = r.get("saturation", {})
            o = r.get("open", {}).get(rate)
            lat = o["latency_ms"] if o else {}
            flag = " overloaded" if o and o.get("overloaded") else ""
            if "journaled" in sat:
                flag += f"  [saturation: {sat['journaled']} journaled, {sat['overloaded']} 503]"
            lines.append(
                f"{name:<17} {t:<19} {sat.get('throughput_rps', 0.0):>10.0f} "
                f"{_fmt(sat.get('server_cpu_us_per_request'), '.1f'):>10} "
                f"{_fmt(lat.get('p50')):>8} {_fmt(lat.get('p90')):>8} {_fmt(lat.get('p99')):>8}"
                f"{flag}"
            )
    for name, s in doc.get("writes", {}).items():
        at = s["sidecar_at_rate"]
        lines.append(
            f"{name}: sidecar {_fmt(s['vs_one_statement'], '.3f')}x one statement, "
            f"{_fmt(s['vs_same_work'], '.3f')}x same work, "
            f"{_fmt(s['vs_same_work_one_round_trip'], '.3f')}x same work in one round trip; "
            f"at {rate} req/s p99 {_fmt(at['p99_ms'])} ms{_by_window(at)}"
            f"{_lag_by_window(at)}, "
            f"{'saturated' if at['saturated_at_rate'] else 'kept up'} "
            f"({_fmt(at['server_cpu_share_of_one_core'])} of a core)"
        )
    lines.append("acceptance:")
    lines += acceptance_lines(doc.get("acceptance", {}))
    for name, errs in doc.get("sidecar_errors", {}).items():
        lines.append(f"{name}: {errs['count']} log lines at level error")
    lines += replica_memory_lines(doc.get("replica_memory", {}))
    return "\n".join(lines)
