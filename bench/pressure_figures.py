"""The figures of one pressure run, from its record: per phase, per second, and the heal.

Latency is reported for the answers given, and apart for the successes: a fast refusal under
overload is an answer too, but it must not make the successes look faster than they were.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from bench.pressure_traffic import OVERLOADED, Answer, Run
from bench.tally import percentile


def latency_ms(answers: Iterable[Answer]) -> dict[str, Any]:
    values = sorted(a.latency_s * 1000 for a in answers if a.status)
    out: dict[str, Any] = {"count": len(values)}
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        v = percentile(values, q)
        out[name] = round(v, 2) if v is not None else None
    out["max"] = round(values[-1], 2) if values else None
    return out


def answer_key(a: Answer) -> str:
    if not a.status:
        return "no answer"
    if a.status >= 400:
        return f"{a.status} {a.problem}"
    return str(a.status)


def source_key(a: Answer) -> str:
    if not a.status:
        return "none"
    if a.fallback:
        return f"{a.source or '?'}:{a.fallback}"
    return a.source or "?"


def phase_figures(
    answers: list[Answer], polls: list[dict[str, Any]], seconds: float, counted: dict[str, Any]
) -> dict[str, Any]:
    ok_polls = [p for p in polls if "breaker" in p]
    by_kind: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_kind[a.kind].append(a)

    def most(key: str) -> Any:
        values = [p[key] for p in ok_polls if p.get(key) is not None]
        return max(values) if values else None

    return {
        "seconds": round(seconds, 2),
        "requests": len(answers),
        "requests_per_s": round(len(answers) / seconds, 1) if seconds > 0 else None,
        "answers": dict(sorted(Counter(answer_key(a) for a in answers).items())),
        "sources": dict(sorted(Counter(source_key(a) for a in answers).items())),
        "latency_ms": latency_ms(answers),
        "latency_ms_2xx": latency_ms(a for a in answers if 200 <= a.status < 300),
        "latency_ms_by_kind": {k: latency_ms(v) for k, v in sorted(by_kind.items())},
        "answers_by_kind": {
            k: dict(sorted(Counter(answer_key(a) for a in v).items()))
            for k, v in sorted(by_kind.items())
        },
        "shed": counted.get("shed", {}),
        "shed_503_overloaded": sum(
            1 for a in answers if a.status == 503 and a.problem == OVERLOADED
        ),
        "max_queued": most("queued"),
        "max_in_use": most("in_use"),
        "max_loop_lag_ms": most("lag_ms"),
        "loop_lag_shedding_seen": any(p.get("shedding") for p in ok_polls),
        "max_journal_depth": most("journal_depth"),
        "breaker_states": dict(Counter(str(p["breaker"]) for p in ok_polls)),
        "status_polls": len(polls),
        "status_poll_failures": sum(1 for p in polls if "error" in p),
        "status_poll_ms_max": max((p["poll_ms"] for p in polls), default=None),
        "sidecar_counted": counted,
    }


def timeline(answers: list[Answer], polls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per second of the load: what was answered, how fast, and the sidecar's state."""
    buckets: dict[int, list[Answer]] = defaultdict(list)
    for a in answers:
        buckets[int(a.t)].append(a)
    poll_buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in polls:
        poll_buckets[int(p["t"])].append(p)
    rows = []
    for second in sorted(set(buckets) | set(poll_buckets)):
        got = buckets.get(second, [])
        ps = [p for p in poll_buckets.get(second, []) if "breaker" in p]
        lat = latency_ms(got)
        rows.append(
            {
                "s": second,
                "phase": got[0].phase if got else (ps[0]["phase"] if ps else None),
                "requests": len(got),
                "answers": dict(sorted(Counter(answer_key(a) for a in got).items())),
                "replica": sum(1 for a in got if a.source == "replica"),
                "p50_ms": lat["p50"],
                "p99_ms": lat["p99"],
                "breaker": ps[-1]["breaker"] if ps else None,
                "journal_depth_max": max((p["journal_depth"] or 0 for p in ps), default=None),
                "queued_max": max((p["queued"] or 0 for p in ps), default=None),
                "lag_ms_max": max((p["lag_ms"] or 0 for p in ps), default=None),
            }
        )
    return rows


def heal_figures(run: Run, heal_s: float, deadline_s: float) -> dict[str, Any]:
    """From the polls after the heal: when the breaker closed and the journal emptied."""
    t_heal = run.marks["heal"]
    t_end = run.marks["load_end"]
    after = [p for p in run.polls if p["t"] >= t_heal and "breaker" in p]
    closed_at = next((p["t"] for p in after if p["breaker"] == "closed"), None)
    drained_at = next((p["t"] for p in after if p["journal_depth"] == 0), None)
    both_at = next(
        (p["t"] for p in after if p["breaker"] == "closed" and p["journal_depth"] == 0), None
    )
    reopened = closed_at is not None and any(
        p["breaker"] != "closed" for p in after if p["t"] > closed_at
    )
    regrew = drained_at is not None and any(
        (p["journal_depth"] or 0) > 0 for p in after if p["t"] > drained_at
    )

    def since_heal(t: float | None) -> float | None:
        return round(t - t_heal, 2) if t is not None else None

    both = since_heal(both_at)
    return {
        "heal_at_s": round(t_heal, 3),
        "load_went_on_after_heal_s": round(t_end - t_heal, 2),
        "breaker_closed_after_s": since_heal(closed_at),
        "journal_empty_after_s": since_heal(drained_at),
        "closed_and_empty_after_s": both,
        "closed_and_empty_during_load": both_at is not None and both_at <= t_end,
        "within_deadline": (
            both is not None and both_at is not None and both <= deadline_s and both_at <= t_end
        ),
        "deadline_s": deadline_s,
        "breaker_left_closed_again": reopened,
        "journal_grew_again": regrew,
        "peak_journal_depth": max(
            (p["journal_depth"] or 0 for p in run.polls if "breaker" in p), default=0
        ),
        "polls_first_5s_after_heal": [p for p in after if p["t"] <= t_heal + 5.0],
    }
