"""Queries that read back from PostgreSQL what a run's writes did, for the checks after a run.

The pressure run, the soak and the chaos suite's short pressure test ask the same question of the
agents table (does each agent's task_count equal its stored performance events?), so they ask it
with the same query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

_MISCOUNTED_AGENTS = (
    "SELECT a.agent_id, a.task_count, count(e.event_id) AS events FROM agents a "
    "LEFT JOIN performance_events e "
    "ON e.tenant_id = a.tenant_id AND e.agent_id = a.agent_id "
    "WHERE a.tenant_id = $1 GROUP BY a.agent_id, a.task_count "
    "HAVING a.task_count <> count(e.event_id)"
)


async def miscounted_agents(conn: asyncpg.Connection, tenant: str) -> list[asyncpg.Record]:
    """The agents of `tenant` whose task_count differs from their stored performance events (an
    event counted twice, or counted and not stored): agent_id, task_count, events."""
    return list(await conn.fetch(_MISCOUNTED_AGENTS, tenant))
