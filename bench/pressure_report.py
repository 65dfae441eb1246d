"""The verdict of a pressure run (its acceptance checks) and the summary printed of it.

The acceptance is what ``make pressure`` exits on; it reads only the result document and the
record, so a result can be judged again from its file.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.pressure_figures import answer_key, heal_figures, latency_ms, phase_figures, timeline
from bench.pressure_traffic import OVERLOADED, PHASES, Run
from bench.reporting import acceptance_lines, machine_line
from bench.tally import percentile

if TYPE_CHECKING:
    from bench.pressure import Plan


def summarise(plan: Plan, run: Run, doc: dict[str, Any]) -> dict[str, Any]:
    bounds = {
        "warm": (0.0, run.marks["cut"]),
        "cut": (run.marks["cut"], run.marks["heal"]),
        "heal": (run.marks["heal"], run.marks["load_end"]),
    }
    phases = {}
    for name in PHASES:
        lo, hi = bounds[name]
        phases[name] = phase_figures(
            [a for a in run.answers if a.phase == name],
            [p for p in run.polls if p["phase"] == name],
            hi - lo,
            run.counted.get(name, {}),
        )
    doc["marks_s"] = {k: round(v, 3) for k, v in run.marks.items() if k != "heal_wall"}
    doc["phases"] = phases
    doc["total"] = {
        "requests": len(run.answers),
        "answers": dict(sorted(Counter(answer_key(a) for a in run.answers).items())),
        "latency_ms": latency_ms(run.answers),
    }
    lag = sorted(run.generator_lag_ms)
    doc["generator_loop_lag_ms"] = {
        name: round(v, 1) if v is not None else None
        for name, v in (
            ("p50", percentile(lag, 50)),
            ("p99", percentile(lag, 99)),
            ("max", lag[-1] if lag else None),
        )
    }
    heal = heal_figures(run, plan.heal_s, plan.heal_deadline_s)
    doc["heal"] = heal
    final = doc.get("final_status") or {}
    transitions = (final.get("breaker") or {}).get("transitions") or []
    heal_wall = run.marks.get("heal_wall", 0.0)
    doc["breaker_transitions"] = [
        {**t, "at_from_heal_s": round(float(t["at"]) - heal_wall, 3)}
        for t in transitions
        if isinstance(t.get("at"), (int, float))
    ]
    bad = [
        a
        for a in run.answers
        if a.status >= 500 and not (a.status == 503 and a.problem == OVERLOADED)
    ]
    lost = [a for a in run.answers if not a.status]
    doc["unexpected_answers"] = [
        {
            "t": round(a.t, 3),
            "phase": a.phase,
            "kind": a.kind,
            "status": a.status,
            "problem": a.problem,
            "detail": a.detail,
            "error": a.error,
            "latency_ms": round(a.latency_s * 1000, 1),
        }
        for a in (bad + lost)[:30]
    ]
    doc["op_id_mismatches"] = sum(1 for a in run.answers if a.status == 202 and a.detail)
    doc["timeline"] = timeline(run.answers, run.polls)
    doc["status_polls"] = run.polls
    v = doc["verification"]
    p99s = {name: phases[name]["latency_ms"]["p99"] for name in PHASES}
    acceptance = {
        "no_5xx_but_503_overloaded": {
            "value": len(bad),
            "target": "== 0",
            "pass": not bad,
        },
        "every_request_answered": {"value": len(lost), "target": "== 0", "pass": not lost},
        "closed_and_drained_within_deadline_during_load": {
            "value": heal["closed_and_empty_after_s"],
            "target": f"<= {plan.heal_deadline_s:g} s after the heal, load still on",
            "pass": heal["within_deadline"],
        },
        "p99_ms_each_phase": {
            "value": p99s,
            "target": f"<= {plan.max_p99_ms:g}",
            "pass": all(p is not None and p <= plan.max_p99_ms for p in p99s.values()),
        },
        "acknowledged_writes_applied_once": {
            "value": {
                "missing": v["missing"],
                "rejected": v["rejected"],
                "agents_counted_wrong": v["agents_counted_wrong"],
            },
            "target": "all 0",
            "pass": v["missing"] == 0 and v["rejected"] == 0 and v["agents_counted_wrong"] == 0,
        },
        "refused_writes_not_applied": {
            "value": v["refused_but_applied"],
            "target": "== 0",
            "pass": v["refused_but_applied"] == 0,
        },
        "journal_drained_after_load": {
            "value": doc["drain_after_load"]["drained"],
            "target": "true",
            "pass": doc["drain_after_load"]["drained"],
        },
    }
    doc["acceptance"] = acceptance
    doc["passed"] = all(c["pass"] for c in acceptance.values())
    return doc


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def report(doc: dict[str, Any]) -> str:
    plan, heal, v = doc["plan"], doc["heal"], doc["verification"]
    think = f"think {plan['think_ms_mean']:g} ms mean" if plan["think_ms_mean"] else "no think"
    lines = [
        machine_line(doc["machine"], load=True),
        f"command: {doc['command']}",
        f"plan: {plan['clients']} clients, {think}, warm {plan['warm_s']:g} s, cut "
        f"{plan['cut_s']:g} s, heal {plan['heal_s']:g} s, {plan['agents']} agents",
        f"CPU during the load (cores): {doc.get('cpu_cores_during_load')}; generator loop lag "
        f"p99 {_fmt(doc['generator_loop_lag_ms']['p99'])} ms",
        "",
        "latency of the answers given, ms (p99 2xx: of the successes only); shed: refused for "
        "capacity; maxq: most requests seen waiting for a connection; lag: the sidecar's loop",
        f"{'phase':<6}{'req':>8}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}"
        f"{'p99 2xx':>9}{'shed':>7}{'maxq':>6}{'lag':>6}  answers",
    ]
    for name in PHASES:
        ph = doc["phases"][name]
        lat = ph["latency_ms"]
        lines.append(
            f"{name:<6}{ph['requests']:>8}{_fmt(ph['requests_per_s']):>8}{_fmt(lat['p50']):>8}"
            f"{_fmt(lat['p95']):>8}{_fmt(lat['p99']):>8}{_fmt(lat['max']):>9}"
            f"{_fmt(ph['latency_ms_2xx']['p99']):>9}{sum(ph['shed'].values()):>7}"
            f"{_fmt(ph['max_queued']):>6}{_fmt(ph['max_loop_lag_ms']):>6}  {ph['answers']}"
        )
    for name in PHASES:
        ph = doc["phases"][name]
        counted = ph["sidecar_counted"]
        calls = {
            k.split(":")[0]: v["mean_ms"]
            for k, v in counted.get("db_calls", {}).items()
            if k.endswith(":success")
        }
        lines.append(f"  {name} sources: {ph['sources']}; shed by reason: {ph['shed'] or {}}")
        lines.append(
            f"  {name} sidecar: wait for a connection {_fmt(counted.get('queue_wait_mean_ms'))} ms"
            f" mean; database call ms mean (successes): {calls}"
        )
    lines += [
        "",
        f"heal: breaker closed after {_fmt(heal['breaker_closed_after_s'])} s, journal empty "
        f"after {_fmt(heal['journal_empty_after_s'])} s (both: "
        f"{_fmt(heal['closed_and_empty_after_s'])} s; during the load: "
        f"{'yes' if heal['closed_and_empty_during_load'] else 'no'}); peak journal depth "
        f"{heal['peak_journal_depth']}; breaker left closed again: "
        f"{'yes' if heal['breaker_left_closed_again'] else 'no'}",
        f"after the load: drained {doc['drain_after_load']}",
        f"writes: {v['acknowledged']} acknowledged ({v['journaled_202']} journaled), "
        f"{v['refused']} refused; missing {v['missing']}, rejected {v['rejected']}, refused but "
        f"applied {v['refused_but_applied']}, agents counted wrong {v['agents_counted_wrong']}, "
        f"fate unknown {v['fate_unknown'] or 0}",
        f"sidecar log lines at level error: {doc['sidecar_errors']['count']}",
    ]
    if doc["unexpected_answers"]:
        lines.append("unexpected answers (first few):")
        lines += [f"  {a}" for a in doc["unexpected_answers"][:5]]
    lines += acceptance_lines(doc["acceptance"])
    return "\n".join(lines)
