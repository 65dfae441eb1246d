"""The registry's reads: one agent, the rows behind the replica's change feed, statistics,
and the capability query with its scoring SQL.

Reads only: nothing here writes or takes part in a write's transaction, so any pooled
connection serves them.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from proxy.registry import matching
from proxy.registry.agent import HEARTBEAT_TIMEOUT, AgentRecord
from proxy.registry.models import AgentQuery
from proxy.store.repository.rows import COLUMNS, record_from_row


async def fetch_agent(conn: asyncpg.Connection, tenant: str, agent_id: str) -> AgentRecord | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM agents "
        "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL",
        tenant,
        agent_id,
    )
    return record_from_row(row) if row else None


async def fetch_rows(
    conn: asyncpg.Connection, tenant: str, agent_ids: list[str]
) -> list[AgentRecord]:
    """The rows of these agents as they stand, unregistered ones included (their tombstones
    tell the replica to drop them)."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND agent_id = ANY($2::text[])",
        tenant,
        sorted(set(agent_ids)),
    )
    return [record_from_row(r) for r in rows]


def _f8(value: float) -> str:
    return f"{value!r}::float8"


# `proxy.registry.matching.score`, term for term and in the same order, in float8 arithmetic.
_SCORE = (
    f"{_f8(matching.W_SUCCESS)} * ((success_count::float8 + "
    f"{_f8(matching.PRIOR_WEIGHT * matching.PRIOR)}) / (task_count::float8 + "
    f"{_f8(matching.PRIOR_WEIGHT)})) + "
    f"{_f8(matching.W_QUALITY)} * ((quality_sum + "
    f"{_f8(matching.PRIOR_WEIGHT * matching.PRIOR)}) / (task_count::float8 + "
    f"{_f8(matching.PRIOR_WEIGHT)})) + "
    f"{_f8(matching.W_CAPACITY)} * (1.0::float8 - "
    "LEAST(1.0::float8, active_tasks::float8 / max_concurrent_tasks))"
)
# The order is decided in Python on scores rounded to 9 decimals, ties by id. Rows scoring this
# much below the limit-th best cannot reach the top after rounding, whatever the last bits of
# either computation: 2e-9 leaves a whole rounding step between them and the winners.
_CUTOFF_MARGIN = 2e-9

_QUERY = (
    f"WITH f AS (SELECT {COLUMNS}, {_SCORE} AS score FROM agents "
    "WHERE tenant_id = $1 AND deleted_at IS NULL "
    "AND ($2::text IS NULL OR $2 = ANY(task_types)) "
    "AND languages @> $3::text[] AND specializations @> $4::text[] "
    "AND ($5::float8 IS NULL OR "
    "     LEAST(1.0, active_tasks::float8 / max_concurrent_tasks) < $5) "
    "AND ($6::float8 IS NULL OR "
    "     (task_count > 0 AND success_count::float8 / task_count >= $6))), "
    "cut AS (SELECT score FROM f ORDER BY score DESC LIMIT 1 OFFSET $7::int - 1) "
    f"SELECT {COLUMNS} FROM f "
    "WHERE f.score >= COALESCE((SELECT score FROM cut), '-infinity'::float8) "
    f"- {_f8(_CUTOFF_MARGIN)}"
)


async def query_agents(conn: asyncpg.Connection, tenant: str, q: AgentQuery) -> list[AgentRecord]:
    """The rows that pass every hard filter and may rank among the best ``q.limit``.

    PostgreSQL filters and scores every agent, and returns only the few that can win (the
    limit-th best score, less a margin, and above); `proxy.registry.matching.rank` then orders
    those exactly as it orders the replica's, so both paths answer the same. Building and
    ranking every filtered row in Python instead cost several times the CPU of the query.
    """
    min_rate = q.min_success_rate if q.min_success_rate else None
    rows = await conn.fetch(
        _QUERY,
        tenant,
        q.task_type,
        q.languages,
        q.specializations,
        q.max_utilization,
        min_rate,
        q.limit,
    )
    return [record_from_row(r) for r in rows]


async def fetch_stats(conn: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    """The same definitions as `proxy.registry.matching.stats`, computed by PostgreSQL."""
    row = await conn.fetchrow(
        "SELECT count(*) AS total, "
        "count(*) FILTER (WHERE last_heartbeat_at >= now() - $2::interval) AS active, "
        "count(*) FILTER (WHERE last_heartbeat_at >= now() - $2::interval "
        "                 AND active_tasks = 0) AS idle, "
        "coalesce(avg(LEAST(1.0, active_tasks::float8 / max_concurrent_tasks)), 0) AS util, "
        "avg(success_count::float8 / task_count) FILTER (WHERE task_count > 0) AS success "
        "FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL",
        tenant,
        HEARTBEAT_TIMEOUT,
    )
    assert row is not None
    return {
        "total_agents": row["total"],
        "active_agents": row["active"],
        "idle_agents": row["idle"],
        "average_utilization": float(row["util"]),
        "average_success_rate": float(row["success"]) if row["success"] is not None else None,
    }


async def fetch_changes_since(
    conn: asyncpg.Connection, tenants: list[str], version: int, limit: int
) -> list[asyncpg.Record]:
    """Which rows changed after `version` (tenant_id, agent_id, version), deleted ones
    included, oldest change first. Only the keys: a caller that holds most of them already
    fetches the others whole (`fetch_rows`)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT tenant_id, agent_id, version FROM agents "
        "WHERE tenant_id = ANY($1::text[]) AND version > $2 "
        "ORDER BY version LIMIT $3",
        tenants,
        version,
        limit,
    )
    return rows


async def fetch_all(conn: asyncpg.Connection, tenants: list[str], limit: int) -> list[AgentRecord]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM agents WHERE tenant_id = ANY($1::text[]) AND deleted_at IS NULL "
        "ORDER BY version LIMIT $2",
        tenants,
        limit,
    )
    return [record_from_row(r) for r in rows]
