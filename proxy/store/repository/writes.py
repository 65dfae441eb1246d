"""Every write to the registry as one function of (connection, context, payload).

A write takes a plain JSON payload, so a write answered directly and the same write replayed
from the journal run exactly the same code. Each function only has the effect: it raises a
`RegistryError` to refuse, and leaves the transaction, the ledger and the audit row to
`proxy.store.repository.ledger.execute_write`. Callers never supply SQL; column names are fixed
here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.requests import WriteKind
from proxy.store.repository.reads import fetch_agent
from proxy.store.repository.rows import COLUMNS, record_from_row


@dataclass(frozen=True, slots=True)
class WriteContext:
    tenant: str
    actor: str
    request_id: str | None
    max_agents: int
    at: datetime | None = None
    """When the write was asked for, if not now (a journaled write being replayed)."""


WriteFn = Callable[
    [asyncpg.Connection, WriteContext, dict[str, Any]],
    Awaitable[tuple[int, Any, AgentRecord | None]],
]


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def _register(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    body = p["body"]
    caps = body["capabilities"]
    row = await conn.fetchrow(
        "INSERT INTO agents AS a (tenant_id, agent_id, name, model_family, task_types, languages,"
        " specializations, max_concurrent_tasks) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (tenant_id, agent_id) DO UPDATE SET name = EXCLUDED.name, "
        " model_family = EXCLUDED.model_family, task_types = EXCLUDED.task_types, "
        " languages = EXCLUDED.languages, specializations = EXCLUDED.specializations, "
        " max_concurrent_tasks = EXCLUDED.max_concurrent_tasks, active_tasks = 0, "
        " queued_tasks = 0, load_observed_at = NULL, status = 'active', registered_at = now(), "
        " last_heartbeat_at = now(), updated_at = now(), deleted_at = NULL, task_count = 0, "
        " success_count = 0, quality_sum = 0, latency_ms_sum = 0, "
        " version = nextval('agent_version_seq'), revision = a.revision + 1 "
        f"WHERE a.deleted_at IS NOT NULL RETURNING {COLUMNS}",
        ctx.tenant,
        body["agent_id"],
        body["name"],
        body["model_family"],
        caps["task_types"],
        caps.get("languages", []),
        caps.get("specializations", []),
        body.get("max_concurrent_tasks", 10),
    )
    if row is None:
        raise errors.DuplicateAgent(f"agent {body['agent_id']!r} is already registered")
    # The capacity slot is taken after the duplicate check (a duplicate is a duplicate even
    # in a full tenant); the tenant row lock still serializes concurrent registrations.
    taken = await conn.fetchval(
        "INSERT INTO tenants AS t (tenant_id, agent_count) VALUES ($1, 1) "
        "ON CONFLICT (tenant_id) DO UPDATE SET agent_count = t.agent_count + 1 "
        "WHERE t.agent_count < $2 RETURNING agent_count",
        ctx.tenant,
        ctx.max_agents,
    )
    if taken is None:
        raise errors.RegistryFull(
            f"tenant {ctx.tenant!r} already has the maximum of {ctx.max_agents} agents"
        )
    rec = record_from_row(row)
    return 201, None, rec


async def _missing_or_stale(
    conn: asyncpg.Connection, ctx: WriteContext, agent_id: str
) -> AgentRecord:
    rec = await fetch_agent(conn, ctx.tenant, agent_id)
    if rec is None:
        raise errors.NotFound(f"agent {agent_id!r} is not registered")
    return rec


async def _patch(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    body = p["body"]
    sets: list[str] = []
    differs: list[str] = []
    args: list[Any] = [ctx.tenant, p["agent_id"], p.get("if_match")]
    for column in ("name", "model_family", "max_concurrent_tasks"):
        if column in body:
            args.append(body[column])
            sets.append(f"{column} = ${len(args)}")
            differs.append(f"{column} IS DISTINCT FROM ${len(args)}")
    if "capabilities" in body:
        caps = body["capabilities"]
        for column in ("task_types", "languages", "specializations"):
            args.append(caps.get(column, []))
            sets.append(f"{column} = ${len(args)}")
            differs.append(f"{column} IS DISTINCT FROM ${len(args)}")
    # The revision moves only when a value really changes (`proxy.registry.apply` counts the
    # same way), so a patch repeated with the same values leaves other clients' ETags valid.
    if differs:
        sets.append(f"revision = revision + CASE WHEN {' OR '.join(differs)} THEN 1 ELSE 0 END")
    sets.append("updated_at = now(), version = nextval('agent_version_seq')")
    row = await conn.fetchrow(
        f"UPDATE agents SET {', '.join(sets)} "
        "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL "
        f"AND ($3::bigint IS NULL OR revision = $3) RETURNING {COLUMNS}",
        *args,
    )
    if row is None:
        current = await _missing_or_stale(conn, ctx, p["agent_id"])
        raise errors.PreconditionFailed(
            f"If-Match revision {p.get('if_match')} does not match current revision "
            f"{current.revision}"
        )
    return 200, None, record_from_row(row)


async def _load(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    body = p["body"]
    row = await conn.fetchrow(
        "UPDATE agents SET active_tasks = $3, queued_tasks = $4, load_observed_at = $5, "
        "updated_at = now(), version = nextval('agent_version_seq') "
        "WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL "
        f"AND (load_observed_at IS NULL OR load_observed_at <= $5) RETURNING {COLUMNS}",
        ctx.tenant,
        p["agent_id"],
        body["active_tasks"],
        body["queued_tasks"],
        _dt(body["observed_at"]),
    )
    if row is None:
        # A report older than the one we hold loses (last writer wins by observed_at).
        return 200, None, await _missing_or_stale(conn, ctx, p["agent_id"])
    return 200, None, record_from_row(row)


async def _heartbeat(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    row = await conn.fetchrow(
        "UPDATE agents SET last_heartbeat_at = GREATEST(last_heartbeat_at, $3), "
        "status = 'active', updated_at = now(), version = nextval('agent_version_seq') "
        f"WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL RETURNING {COLUMNS}",
        ctx.tenant,
        p["agent_id"],
        _dt(p["observed_at"]),
    )
    if row is None:
        raise errors.NotFound(f"agent {p['agent_id']!r} is not registered")
    rec = record_from_row(row)
    return 200, heartbeat_body(rec), rec


def heartbeat_body(rec: AgentRecord) -> dict[str, Any]:
    return {
        "agent_id": rec.agent_id,
        "status": "active",
        "last_heartbeat_at": rec.last_heartbeat_at,
        "version": rec.version,
    }


def performance_body(rec: AgentRecord, event_id: str, counted: bool) -> dict[str, Any]:
    return {
        "agent_id": rec.agent_id,
        "event_id": event_id,
        "counted": counted,
        "performance": rec.performance(),
    }


async def _performance(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    body = p["body"]
    inserted = await conn.fetchval(
        "INSERT INTO performance_events (tenant_id, event_id, agent_id, success, quality_score,"
        " latency_ms, task_type) SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS ("
        " SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = $3 AND deleted_at IS NULL) "
        "ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING 1",
        ctx.tenant,
        body["event_id"],
        p["agent_id"],
        body["success"],
        body["quality_score"],
        body["latency_ms"],
        body.get("task_type"),
    )
    if inserted is None:
        rec = await _missing_or_stale(conn, ctx, p["agent_id"])
        return 200, performance_body(rec, body["event_id"], False), rec
    row = await conn.fetchrow(
        "UPDATE agents SET task_count = task_count + 1, "
        "success_count = success_count + $3, quality_sum = quality_sum + $4, "
        "latency_ms_sum = latency_ms_sum + $5, updated_at = now(), "
        "version = nextval('agent_version_seq') "
        f"WHERE tenant_id = $1 AND agent_id = $2 RETURNING {COLUMNS}",
        ctx.tenant,
        p["agent_id"],
        1 if body["success"] else 0,
        body["quality_score"],
        body["latency_ms"],
    )
    assert row is not None
    rec = record_from_row(row)
    return 201, performance_body(rec, body["event_id"], True), rec


async def _admin(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    """An admin action has no effect on the registry; it is here for its audit row."""
    return 204, None, None


async def _unregister(
    conn: asyncpg.Connection, ctx: WriteContext, p: dict[str, Any]
) -> tuple[int, Any, AgentRecord | None]:
    row = await conn.fetchrow(
        "UPDATE agents SET deleted_at = now(), updated_at = now(), "
        "version = nextval('agent_version_seq') "
        f"WHERE tenant_id = $1 AND agent_id = $2 AND deleted_at IS NULL RETURNING {COLUMNS}",
        ctx.tenant,
        p["agent_id"],
    )
    if row is not None:
        await conn.execute(
            "UPDATE tenants SET agent_count = agent_count - 1 WHERE tenant_id = $1", ctx.tenant
        )
        return 204, None, record_from_row(row)
    return 204, None, None


WRITES: dict[WriteKind, WriteFn] = {
    WriteKind.REGISTER: _register,
    WriteKind.PATCH: _patch,
    WriteKind.LOAD: _load,
    WriteKind.HEARTBEAT: _heartbeat,
    WriteKind.PERFORMANCE: _performance,
    WriteKind.UNREGISTER: _unregister,
    WriteKind.ADMIN: _admin,
}


def target_of(kind: str, payload: dict[str, Any]) -> str:
    """What the write is about, as its audit row names it: an agent id, or an admin target."""
    if kind == WriteKind.ADMIN:
        return str(payload["target"])
    if kind == WriteKind.REGISTER:
        return str(payload["body"]["agent_id"])
    return str(payload["agent_id"])
