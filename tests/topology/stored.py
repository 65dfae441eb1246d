"""What a tenant's writes left in PostgreSQL, read straight from one node after a failover."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Stored:
    agents: set[str]
    """Live agents of the tenant."""
    ledger: dict[str, tuple[str, int]]
    """Op id -> (its status, how many ledger rows it has)."""
    applied: dict[str, int]
    """Op id -> how many audit rows say it was applied."""


async def stored(dsn: str, tenant: str) -> Stored:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        agents = await conn.fetch(
            "SELECT agent_id FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL", tenant
        )
        ledger = await conn.fetch(
            "SELECT op_id, min(status) AS status, count(*) AS n FROM operations "
            "WHERE tenant_id = $1 GROUP BY op_id",
            tenant,
        )
        applied = await conn.fetch(
            "SELECT op_id, count(*) AS n FROM audit_log "
            "WHERE tenant_id = $1 AND outcome = 'applied' GROUP BY op_id",
            tenant,
        )
    finally:
        await conn.close()
    return Stored(
        agents={r["agent_id"] for r in agents},
        ledger={r["op_id"]: (r["status"], r["n"]) for r in ledger},
        applied={r["op_id"]: r["n"] for r in applied},
    )
