"""Capability matching: the hard filters, the score and the order of a capability query.

Filters (all must hold):
- the agent handles ``task_type`` (when given);
- it speaks every requested language and has every requested specialization;
- its utilization (active / max_concurrent) is strictly below ``max_utilization`` (when given);
- its success rate is at least ``min_success_rate`` (when given); an agent without any task
  outcome has no success rate and passes only when ``min_success_rate`` is 0.

Score, in [0, 1]::

    score = 0.5 * smoothed_success + 0.2 * smoothed_quality + 0.3 * free_capacity

- ``smoothed_success = (success_count + PRIOR_WEIGHT * PRIOR) / (task_count + PRIOR_WEIGHT)``,
  a Bayesian average: an agent with no history scores PRIOR (0.5), so it is never ranked above an
  agent with a proven record, and one lucky task does not make an agent perfect.
- ``smoothed_quality`` is the same average over quality scores.
- ``free_capacity = 1 - utilization``.

Order: score descending, then agent id ascending, so the order is total and deterministic. Scores
are compared after rounding to 9 decimals so the database path and the replica path, which compute
the same floats in the same way, can never disagree because of the last bit.

The database path filters and scores in SQL, keeps the few rows that can reach the top ``limit``
(`proxy.store.repository.reads.query_agents`) and calls `rank` on them; the replica path
filters with `matches` and calls the same `rank`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson

from proxy.registry.agent import AgentRecord, MatchFacts, RankedParts
from proxy.registry.models import AgentQuery

PRIOR = 0.5
PRIOR_WEIGHT = 5.0
W_SUCCESS = 0.5
W_QUALITY = 0.2
W_CAPACITY = 0.3


def matches(rec: AgentRecord, q: AgentQuery) -> bool:
    if rec.deleted_at is not None:
        return False
    if q.task_type is not None and q.task_type not in rec.task_types:
        return False
    # A loop, not a set per call: the replica tests every agent of its walk, and a query asks
    # for one or two of each.
    for language in q.languages:
        if language not in rec.languages:
            return False
    for specialization in q.specializations:
        if specialization not in rec.specializations:
            return False
    if q.max_utilization is not None and not rec.utilization < q.max_utilization:
        return False
    if q.min_success_rate is not None and q.min_success_rate > 0:
        rate = rec.success_rate
        if rate is None or rate < q.min_success_rate:
            return False
    return True


def score(rec: AgentRecord) -> float:
    n = rec.task_count
    success = (rec.success_count + PRIOR_WEIGHT * PRIOR) / (n + PRIOR_WEIGHT)
    quality = (rec.quality_sum + PRIOR_WEIGHT * PRIOR) / (n + PRIOR_WEIGHT)
    free = 1.0 - rec.utilization
    return W_SUCCESS * success + W_QUALITY * quality + W_CAPACITY * free


def sort_key(rec: AgentRecord) -> tuple[float, str]:
    return (-round(rec.match_facts(_facts)[0], 9), rec.agent_id)


def reasons(rec: AgentRecord, q: AgentQuery) -> list[str]:
    return [*_query_reasons(q), *rec.match_facts(_facts)[1]]


def _query_reasons(q: AgentQuery) -> list[str]:
    """The reasons every result of the query shares: what was asked for."""
    out: list[str] = []
    if q.task_type is not None:
        out.append(f"handles task type {q.task_type}")
    if q.languages:
        out.append("speaks " + ", ".join(q.languages))
    if q.specializations:
        out.append("specializes in " + ", ".join(q.specializations))
    return out


def _facts(rec: AgentRecord) -> MatchFacts:
    """The score and the reasons that depend on the agent alone; kept with the record, which
    never changes, so a replica that ranks the same agents query after query computes them once."""
    out: list[str] = []
    rate = rec.success_rate
    if rate is None:
        out.append("no task history yet (neutral prior)")
    else:
        out.append(f"success rate {rate:.0%} over {rec.task_count} tasks")
        out.append(f"average quality {rec.quality_sum / rec.task_count:.2f}")
    out.append(f"utilization {rec.utilization:.0%} ({rec.active_tasks}/{rec.max_concurrent_tasks})")
    return score(rec), tuple(out)


def _parts(rec: AgentRecord) -> RankedParts:
    """`_facts` as `rank` writes them: the score, then the agent's reasons closing the entry."""
    value, reasons = rec.match_facts(_facts)
    return (
        b',"match_score":' + orjson.dumps(round(value, 6)) + b',"match_reasons":[',
        b",".join(map(orjson.dumps, reasons)) + b"]}",
    )


def rank(
    records: Iterable[AgentRecord], q: AgentQuery, now: datetime, *, ordered: bool = False
) -> list[orjson.Fragment]:
    """Best match first, at most ``q.limit`` results, each with its score and reasons.

    ``ordered``: the records already come best first (the replica keeps them so), and only the
    first ``q.limit`` are taken. Each result is its encoded JSON, an orjson fragment
    ``{"agent": ..., "match_score": ..., "match_reasons": [...]}``, put together from pieces
    encoded once per record (the agent's document per status, its score and its own reasons):
    a replica query answers the same agents again and again, and walking a dict per result to
    encode it cost more than the rest of ranking. Answers must be encoded with orjson.
    """
    best = list(records)[: q.limit] if ordered else sorted(records, key=sort_key)[: q.limit]
    # The query's reasons come first in every result's list, its own after them (never none).
    asked = b"".join([orjson.dumps(reason) + b"," for reason in _query_reasons(q)])
    out = []
    for rec in best:
        head, tail = rec.ranked_parts(_parts)
        out.append(orjson.Fragment(b'{"agent":' + rec.public_json(now) + head + asked + tail))
    return out


def stats(records: Iterable[AgentRecord], now: datetime) -> dict[str, Any]:
    total = active = idle = rated = 0
    util_sum = success_sum = 0.0
    for rec in records:
        if rec.deleted_at is not None:
            continue
        total += 1
        util_sum += rec.utilization
        if rec.status(now) == "active":
            active += 1
            if rec.active_tasks == 0:
                idle += 1
        rate = rec.success_rate
        if rate is not None:
            rated += 1
            success_sum += rate
    return {
        "total_agents": total,
        "active_agents": active,
        "idle_agents": idle,
        "average_utilization": util_sum / total if total else 0.0,
        "average_success_rate": success_sum / rated if rated else None,
    }
