"""The fleet benchmark's verdict and the summary printed of its result file.

Kept apart from the run itself so the summary can be printed again from a result file, and so
the checks that fail a run are in one place.
"""

from __future__ import annotations

from typing import Any

from bench.reporting import acceptance_lines, machine_line


def acceptance(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    w, prop, outage = doc["writes"], doc["propagation"], doc["outage"]
    drained = bool(outage["drained"] and doc["journals_drained_at_end"])
    # While PostgreSQL is up, a 202 (journaled) or a 503 (refused: no connection slot, a full
    # queue) means the fleet ran out of something it should not have.
    load = doc["traffic"]["answers"].get("load", {})
    refused = sum(n for key, n in load.items() if key.endswith((":202", ":503")))
    return {
        "load_journaled_or_refused": {
            "value": refused,
            "target": "== 0 (202 or 503 while PostgreSQL is up)",
            "pass": refused == 0 and bool(load),
        },
        "acknowledged_writes_missing": {
            "value": w["missing"],
            "target": "== 0",
            "pass": w["missing"] == 0,
        },
        "counted_twice": {
            "value": w["counted_twice_agents"],
            "target": "== 0",
            "pass": w["counted_twice_agents"] == 0,
        },
        "journals_drained": {"value": drained, "target": "true", "pass": drained},
        "changes_never_seen": {
            "value": prop["never_seen"],
            "target": "== 0",
            "pass": prop["never_seen"] == 0 and prop["changes"] > 0,
        },
    }


def _kinds(backends: dict[str, Any] | None) -> str:
    if not backends:
        return "none seen"
    parts = ", ".join(f"{k} {n}" for k, n in backends["by_kind_state"].items())
    return f"{backends['total']} ({parts})"


def _ms(q: dict[str, Any]) -> str:
    return f"p50 {q['p50']} ms, p99 {q['p99']} ms, max {q['max']} ms (n={q['n']})"


def _own_per_sidecar(backends: dict[str, Any], sidecars: int) -> str:
    counts = list(backends["per_sidecar"].values())
    counts += [0] * (sidecars - len(counts))
    return f"{min(counts)}-{max(counts)}"


def report(doc: dict[str, Any]) -> str:
    plan, topo, idle = doc["plan"], doc["topology"], doc["idle"]
    n = plan["sidecars"]
    bouncer = topo.get("pgbouncer")
    where = (
        f"pools through PgBouncer (transaction pooling, default_pool_size "
        f"{bouncer['default_pool_size']}, max_client_conn {bouncer['max_client_conn']}), "
        f"direct DSN to PostgreSQL"
        if bouncer
        else "every connection straight to PostgreSQL"
    )
    lines = [
        machine_line(doc["machine"], load=True),
        f"command: {doc['command']}",
        f"topology: {topo['mode']}: {n} sidecars, {where}; read mode {topo['read_mode']}, "
        f"pool_max_size {plan['pool_size']}; per-agent writes to {plan['write_targets']} agents",
    ]
    end = idle["backends_at_end"]
    lines.append(
        f"idle backends: {_kinds(end)}; {end['total'] / n:.2f} per sidecar, of which each "
        f"sidecar's own connections {_own_per_sidecar(end, n)}"
    )
    if idle.get("pgbouncer_at_end"):
        p = idle["pgbouncer_at_end"]
        lines.append(f"idle PgBouncer: {p['servers']} server connections, {p['cl_active']} clients")
    q = idle["queries"]
    top = "; ".join(f"{s['query']} ({s['role']}) {s['per_s']}/s" for s in q["top_statements"][:4])
    evicted = sum(
        doc[p]["queries"].get("statement_evictions", 0) for p in ("idle", "load", "outage")
    )
    lines += [
        f"idle queries over {q['seconds']} s: {q['statements_per_s']} statements/s for the fleet, "
        f"{q['statements_per_s_per_sidecar']} per sidecar (pg_stat_statements); "
        f"{q['transactions_per_s']} transactions/s, {q['transactions_per_s_per_sidecar']} per "
        f"sidecar (pg_stat_database)",
        f"  most called: {top}",
    ]
    if evicted:
        lines.append(
            f"  pg_stat_statements evicted {evicted} statements during the windows: their "
            f"statement counts are lower bounds"
        )
    load, peak = doc["load"]["queries"], doc["peaks"]["load"]
    lat = doc["traffic"]["latency_ms"]
    lines.append(
        f"load: {plan['clients_per_sidecar']} clients x {plan['client_rate']:g}/s per sidecar; "
        f"{load['statements_per_s_per_sidecar']} statements/s per sidecar; reads "
        f"{_ms(lat.get('load:read', {'p50': None, 'p99': None, 'max': None, 'n': 0}))}; writes "
        f"{_ms(lat.get('load:write', {'p50': None, 'p99': None, 'max': None, 'n': 0}))}"
    )
    lines.append(f"load peak backends: {_kinds(peak['backends'])}")
    if "pgbouncer_servers" in peak:
        lines.append(
            f"load peak PgBouncer: {peak['pgbouncer_servers']} server connections, "
            f"{peak['pgbouncer_clients_waiting']} clients waiting"
        )
    prop = doc["propagation"]
    lines += [
        f"propagation: {prop['changes']} changes, times from the write's send; visible in all "
        f"{n - 1} others {_ms(prop['all_others_ms'])}",
        f"  in each other {_ms(prop['each_other_ms'])}; the writer's answer "
        f"{_ms(prop['writer_answer_ms'])}",
        f"  seen before the writer's answer {prop['seen_before_the_writer_answered']} of "
        f"{prop['observations']}, never seen {prop['never_seen']}, answered from "
        f"{prop['answered_from']}",
    ]
    out, rec = doc["outage"], doc["peaks"]["recovery"]
    oq = out["queries"]
    reopened = sum(p["reopened"] for p in out["per_sidecar"].values())
    replay = [p.get("replay") or {} for p in out["per_sidecar"].values()]
    lines += [
        f"outage: PostgreSQL down {out['down_s']} s; journals peaked at "
        f"{out['journal_peak_total']} entries; every breaker closed "
        f"{out['fleet_breakers_closed_s']} s and every journal drained "
        f"{out['fleet_drained_s']} s after PostgreSQL was back (None: not within "
        f"{plan['drain_timeout_s']:g} s)",
        f"  breakers that tripped again after PostgreSQL was back: {reopened}; replayed "
        f"{sum(r.get('applied', 0) for r in replay)} entries ("
        f"{sum(r.get('failed', 0) for r in replay)} failed attempts); from the load's end to "
        f"the drain {oq['deadlocks']} deadlocks, {oq['rollbacks']} rollbacks",
        f"recovery peak backends: {_kinds(rec['backends'])}",
    ]
    if "pgbouncer_servers" in rec:
        lines.append(
            f"recovery peak PgBouncer: {rec['pgbouncer_servers']} server connections, "
            f"{rec['pgbouncer_clients_waiting']} clients waiting"
        )
    w = doc["writes"]
    errors = sum(e["count"] for e in doc["sidecar_errors"].values())
    lines += [
        f"writes acknowledged: {w['acknowledged']} ({w['journaled_202']} journaled), missing "
        f"{w['missing']}, rejected {w['rejected']}, counted twice {w['counted_twice_agents']}",
        f"sidecar log lines at level error: {errors}",
        f"answers: {doc['traffic']['answers']}",
    ]
    lines += acceptance_lines(doc["acceptance"])
    return "\n".join(lines)
