"""Exactly once per op id: the ledger of operations and the audit log, written with each write.

`execute_write` runs one write in a transaction with its ledger entry and its audit row, so the
effect, the record that it happened and the trace of who asked commit together or not at all.
An op id (or Idempotency-Key) seen before gets the stored answer instead of a second effect.
The ledger's and the audit log's reads and the ledger's retention are here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.registry.requests import WriteKind
from proxy.store.repository.writes import WRITES, WriteContext, target_of


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    status: int
    body: Any
    record: AgentRecord | None
    applied: bool
    reason: str | None = None
    problem: errors.RegistryError | None = None
    from_ledger: bool = False


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
    `kind` is a `WriteKind` or its value, as a journal record gives it back.
    """
    write = WRITES[WriteKind(kind)]
    target = target_of(kind, payload)
    action = f"admin:{payload['action']}" if kind == WriteKind.ADMIN else kind
    try:
        async with conn.transaction():
            try:
                status, body, rec = await write(conn, ctx, payload)
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
