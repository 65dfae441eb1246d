"""Every write the soak's clients saw acknowledged, checked against PostgreSQL at the end.

An outage must not lose an acknowledged write nor count a performance event twice; the
operations ledger, the agents and the performance events are read directly, not through the
sidecar.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.dataset import READ_TENANT, WRITE_TENANT
from bench.ledger import miscounted_agents
from bench.soak_traffic import Ack


async def verify(dsn: str, acks: list[Ack]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        tenants = [READ_TENANT, WRITE_TENANT]
        ledger = {
            (r["tenant_id"], r["op_id"]): (r["status"], r["reason"])
            for r in await conn.fetch(
                "SELECT tenant_id, op_id, status, reason FROM operations "
                "WHERE tenant_id = ANY($1::text[])",
                tenants,
            )
        }
        events = {
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM performance_events WHERE tenant_id = $1", READ_TENANT
            )
        }
        agents = {
            r["agent_id"]: r["deleted_at"] is not None
            for r in await conn.fetch(
                "SELECT agent_id, deleted_at FROM agents WHERE tenant_id = $1", WRITE_TENANT
            )
        }
        twice = await miscounted_agents(conn, READ_TENANT)
    finally:
        await conn.close()
    missing: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    by_status: Counter[str] = Counter()
    for a in acks:
        by_status[f"{a.kind}:{a.status}"] += 1
        entry = ledger.get((a.tenant, a.op_id))
        if entry is None:
            missing.append({"op_id": a.op_id, "kind": a.kind, "status": a.status, "why": "ledger"})
            continue
        if entry[0] == "rejected":
            rejected.append({"op_id": a.op_id, "kind": a.kind, "reason": entry[1]})
            continue
        effect = True
        if a.kind == "register":
            effect = a.target in agents
        elif a.kind == "unregister":
            effect = agents.get(a.target, False)
        elif a.kind == "performance":
            effect = a.event_id in events
        if not effect:
            missing.append({"op_id": a.op_id, "kind": a.kind, "status": a.status, "why": "effect"})
    return {
        "acknowledged": len(acks),
        "acknowledged_by_kind_status": dict(sorted(by_status.items())),
        "journaled_202": sum(1 for a in acks if a.status == 202),
        "missing": len(missing),
        "missing_examples": missing[:20],
        "rejected": len(rejected),
        "rejected_examples": rejected[:20],
        "counted_twice_agents": len(twice),
    }
