"""The registry's SQL: reads, and every write as one function of (kind, payload).

Writes take a plain JSON payload so a write answered directly and the same write replayed from the
journal run exactly the same code. `execute_write` wraps one write in a transaction with the
idempotency ledger and the audit row, so the effect, its ledger entry and its audit record commit
together or not at all. Callers never supply SQL; column names are fixed here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from proxy.registry import errors, matching
from proxy.registry.agent import HEARTBEAT_TIMEOUT, AgentRecord
from proxy.registry.models import AgentQuery

# The service and the backlog bench still take it from here.
from proxy.registry.requests import request_hash as request_hash

COLUMNS = (
    "tenant_id, agent_id, name, model_family, task_types, languages, specializations, "
    "max_concurrent_tasks, active_tasks, queued_tasks, load_observed_at, registered_at, "
    "last_heartbeat_at, updated_at, version, deleted_at, task_count, success_count, "
    "quality_sum, latency_ms_sum, revision"
)

WRITE_KINDS = ("register", "patch", "load", "heartbeat", "performance", "unregister")


def record_from_row(row: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        tenant_id=row["tenant_id"],
        agent_id=row["agent_id"],
        name=row["name"],
        model_family=row["model_family"],
        task_types=tuple(row["task_types"]),
        languages=tuple(row["languages"]),
        specializations=tuple(row["specializations"]),
        max_concurrent_tasks=row["max_concurrent_tasks"],
        active_tasks=row["active_tasks"],
        queued_tasks=row["queued_tasks"],
        load_observed_at=row["load_observed_at"],
        registered_at=row["registered_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        deleted_at=row["deleted_at"],
        task_count=row["task_count"],
        success_count=row["success_count"],
        quality_sum=float(row["quality_sum"]),
        latency_ms_sum=float(row["latency_ms_sum"]),
        revision=row["revision"],
    )


# ---- reads -----------------------------------------------------------------------------------


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
) -> list[AgentRecord]:
    """Rows changed after `version`, deleted ones included, oldest change first."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM agents WHERE tenant_id = ANY($1::text[]) AND version > $2 "
        "ORDER BY version LIMIT $3",
        tenants,
        version,
        limit,
    )
    return [record_from_row(r) for r in rows]


async def fetch_all(conn: asyncpg.Connection, tenants: list[str], limit: int) -> list[AgentRecord]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM agents WHERE tenant_id = ANY($1::text[]) AND deleted_at IS NULL "
        "ORDER BY version LIMIT $2",
        tenants,
        limit,
    )
    return [record_from_row(r) for r in rows]


async def fetch_audit(
    conn: asyncpg.Connection,
    tenant: str,
    *,
    actor: str | None,
    action: str | None,
    target: str | None,
    since: datetime | None,
    until: datetime | None,
    after_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, actor, action, target, outcome, request_id, op_id, at FROM audit_log "
        "WHERE tenant_id = $1 AND id > $2 AND ($3::text IS NULL OR actor = $3) "
        "AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR target = $5) "
        "AND ($6::timestamptz IS NULL OR at >= $6) AND ($7::timestamptz IS NULL OR at < $7) "
        "ORDER BY id LIMIT $8",
        tenant,
        after_id,
        actor,
        action,
        target,
        since,
        until,
        limit,
    )
    return [dict(r) for r in rows]


async def prune_ledger(conn: asyncpg.Connection, hours: int, batch: int = 5_000) -> int:
    """Forget op ids older than the retention; in batches, so no long lock is held."""
    removed = 0
    while True:
        status = await conn.execute(
            "DELETE FROM operations WHERE ctid = ANY (ARRAY(SELECT ctid FROM operations "
            "WHERE completed_at < now() - make_interval(hours => $1) LIMIT $2))",
            hours,
            batch,
        )
        count = int(status.split()[-1])
        removed += count
        if count < batch:
            return removed


async def fetch_operation(
    conn: asyncpg.Connection, tenant: str, op_id: str
) -> Mapping[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT op_id, kind, status, reason FROM operations WHERE tenant_id = $1 AND op_id = $2",
        tenant,
        op_id,
    )
    return dict(row) if row else None


# ---- writes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    status: int
    body: Any
    record: AgentRecord | None
    applied: bool
    reason: str | None = None
    problem: errors.RegistryError | None = None
    from_ledger: bool = False


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


WRITES: dict[str, WriteFn] = {
    "register": _register,
    "patch": _patch,
    "load": _load,
    "heartbeat": _heartbeat,
    "performance": _performance,
    "unregister": _unregister,
    "admin": _admin,
}
REGISTRY_KINDS = frozenset(WRITES) - {"admin"}


def target_of(kind: str, payload: dict[str, Any]) -> str:
    if kind == "admin":
        return str(payload["target"])
    if kind == "register":
        return str(payload["body"]["agent_id"])
    return str(payload["agent_id"])


class _Rejected(Exception):
    def __init__(self, problem: errors.RegistryError) -> None:
        self.problem = problem


_RECORD_SQL = (
    "WITH ledger AS ("
    " INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, reason,"
    " response_status, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)) "
    "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, op_id, at) "
    "VALUES ($1, $9, $13, $10, $11, $12, $2, coalesce($14, now()))"
)


async def _record(
    conn: asyncpg.Connection,
    ctx: WriteContext,
    *,
    op_id: str,
    kind: str,
    target: str,
    req_hash: str,
    status: int,
    body: Any,
    problem: errors.RegistryError | None,
    action: str,
) -> str | None:
    reason = None if problem is None else f"{problem.slug}: {problem.detail}"
    await conn.execute(
        _RECORD_SQL,
        ctx.tenant,
        op_id,
        kind,
        req_hash,
        "applied" if problem is None else "rejected",
        reason,
        status,
        orjson.dumps(body).decode() if body is not None else None,
        ctx.actor,
        target,
        "applied" if problem is None else f"rejected:{problem.slug}",
        ctx.request_id,
        action,
        ctx.at,
    )
    return reason


def _is_ledger_conflict(exc: asyncpg.UniqueViolationError) -> bool:
    return getattr(exc, "constraint_name", None) == "operations_pkey"


async def execute_write(
    conn: asyncpg.Connection,
    ctx: WriteContext,
    *,
    kind: str,
    payload: dict[str, Any],
    render: Callable[[AgentRecord], Any],
    op_id: str,
    req_hash: str,
) -> WriteOutcome:
    """Run one write exactly once per `op_id`, with its ledger entry and audit row.

    The ledger row is inserted last, in the same transaction as the effect: if the operation was
    already carried out (a retry after a lost commit acknowledgement, a journal replay, a reused
    Idempotency-Key), the primary key conflict rolls the whole attempt back and the stored answer
    is returned instead. A domain rejection (duplicate, full, not found, stale If-Match) is an
    outcome too: it is recorded with its reason, so a rejected replay leaves a readable trace.
    """
    target = target_of(kind, payload)
    action = f"admin:{payload['action']}" if kind == "admin" else kind
    try:
        async with conn.transaction():
            try:
                status, body, rec = await WRITES[kind](conn, ctx, payload)
            except errors.RegistryError as exc:
                raise _Rejected(exc) from exc
            if body is None and rec is not None and status != 204:
                body = render(rec)
            await _record(
                conn,
                ctx,
                op_id=op_id,
                kind=kind,
                target=target,
                req_hash=req_hash,
                status=status,
                body=body,
                problem=None,
                action=action,
            )
        return WriteOutcome(status=status, body=body, record=rec, applied=True)
    except asyncpg.UniqueViolationError as exc:
        if not _is_ledger_conflict(exc):
            raise
        return await _from_ledger(conn, ctx.tenant, op_id, req_hash)
    except _Rejected as rejected:
        problem = rejected.problem
    body = problem_body(problem)
    try:
        async with conn.transaction():
            reason = await _record(
                conn,
                ctx,
                op_id=op_id,
                kind=kind,
                target=target,
                req_hash=req_hash,
                status=problem.status,
                body=body,
                problem=problem,
                action=action,
            )
    except asyncpg.UniqueViolationError as exc:
        if not _is_ledger_conflict(exc):
            raise
        return await _from_ledger(conn, ctx.tenant, op_id, req_hash)
    return WriteOutcome(
        status=problem.status,
        body=body,
        record=None,
        applied=False,
        reason=reason,
        problem=problem,
    )


async def record_rejection(
    conn: asyncpg.Connection,
    ctx: WriteContext,
    *,
    op_id: str,
    kind: str,
    req_hash: str,
    reason: str,
) -> None:
    """A journaled write given up on: its ledger row and audit row say why (first one wins)."""
    async with conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, reason, "
            "response_status) VALUES ($1, $2, $3, $4, 'rejected', $5, 500) "
            "ON CONFLICT (tenant_id, op_id) DO NOTHING RETURNING 1",
            ctx.tenant,
            op_id,
            kind,
            req_hash,
            reason,
        )
        if inserted:
            await conn.execute(
                "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, "
                "op_id, at) VALUES ($1, $2, $3, NULL, 'rejected:internal-error', $4, $5, "
                "coalesce($6, now()))",
                ctx.tenant,
                ctx.actor,
                kind,
                ctx.request_id,
                op_id,
                ctx.at,
            )


async def _from_ledger(
    conn: asyncpg.Connection, tenant: str, op_id: str, req_hash: str | None
) -> WriteOutcome:
    row = await conn.fetchrow(
        "SELECT request_hash, status, reason, response_status, response_body "
        "FROM operations WHERE tenant_id = $1 AND op_id = $2",
        tenant,
        op_id,
    )
    assert row is not None
    if req_hash is not None and row["request_hash"] != req_hash:
        raise errors.IdempotencyMismatch(
            "this Idempotency-Key was used before with a different request"
        )
    body = orjson.loads(row["response_body"]) if row["response_body"] is not None else None
    return WriteOutcome(
        status=row["response_status"],
        body=body,
        record=None,
        applied=row["status"] == "applied",
        reason=row["reason"],
        from_ledger=True,
    )


def problem_body(exc: errors.RegistryError) -> dict[str, Any]:
    return {"type": exc.type, "title": exc.title, "status": exc.status, "detail": exc.detail}
