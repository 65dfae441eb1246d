"""Every write of a pressure run checked against PostgreSQL once the journal has drained.

The answer a client got is a promise: an acknowledged write (200, 201, 202, 204) must be applied
exactly once, and a refused one (503, 4xx) never. The operations ledger, the performance events
and the agents table are read directly, not through the sidecar.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.dataset import READ_TENANT
from bench.ledger import miscounted_agents
from bench.pressure_traffic import WRITES, Answer

ACKNOWLEDGED = frozenset({200, 201, 202, 204})


async def verify(dsn: str, answers: list[Answer]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        ledger = {
            r["op_id"]: (r["status"], r["reason"])
            for r in await conn.fetch(
                "SELECT op_id, status, reason FROM operations "
                "WHERE tenant_id = $1 AND op_id LIKE 'pr-%'",
                READ_TENANT,
            )
        }
        events = {
            r["event_id"]: r["agent_id"]
            for r in await conn.fetch(
                "SELECT event_id, agent_id FROM performance_events "
                "WHERE tenant_id = $1 AND event_id LIKE 'pr-ev-%'",
                READ_TENANT,
            )
        }
        registered = {
            r["agent_id"]
            for r in await conn.fetch(
                "SELECT agent_id FROM agents WHERE tenant_id = $1 AND agent_id LIKE 'pr-agent-%'",
                READ_TENANT,
            )
        }
        miscounted = await miscounted_agents(conn, READ_TENANT)
    finally:
        await conn.close()

    def effect(a: Answer) -> bool:
        if a.kind == "performance":
            return events.get(a.event_id) == a.target
        if a.kind == "register":
            return a.target in registered
        return True  # load and heartbeat: the ledger row is the trace

    missing: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    refused_applied: list[dict[str, Any]] = []
    unknown: Counter[str] = Counter()
    acknowledged = journaled = refused = 0
    for a in answers:
        if a.kind not in WRITES:
            continue
        entry = ledger.get(a.op_id)
        applied = entry is not None and entry[0] == "applied"
        row = {"op_id": a.op_id, "kind": a.kind, "status": a.status, "phase": a.phase}
        if a.status in ACKNOWLEDGED:
            acknowledged += 1
            journaled += a.status == 202
            if entry is None:
                missing.append({**row, "why": "op id not in the ledger"})
            elif not applied:
                rejected.append({**row, "reason": entry[1]})
            elif not effect(a):
                missing.append({**row, "why": "effect absent"})
        elif a.status == 503 or 400 <= a.status < 500:
            refused += 1
            if applied or (a.kind in ("performance", "register") and effect(a)):
                refused_applied.append({**row, "problem": a.problem})
        else:
            # No answer, or an answer that says nothing of the write's fate.
            fate = "applied" if applied else ("rejected" if entry else "absent")
            unknown[f"{a.status or 'no answer'}:{fate}"] += 1
    return {
        "acknowledged": acknowledged,
        "journaled_202": journaled,
        "refused": refused,
        "missing": len(missing),
        "missing_examples": missing[:20],
        "rejected": len(rejected),
        "rejected_examples": rejected[:20],
        "refused_but_applied": len(refused_applied),
        "refused_but_applied_examples": refused_applied[:20],
        "fate_unknown": dict(unknown),
        "agents_counted_wrong": len(miscounted),
        "agents_counted_wrong_examples": [dict(r) for r in miscounted[:20]],
        "ledger_rows": len(ledger),
        "events_stored": len(events),
        "registered": len(registered),
    }
