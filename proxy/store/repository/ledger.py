"""Exactly once per op id: the ledger of operations and the audit log, written with each write.

`execute_write` sends one write as one statement, `registry_write_v2` (migration 0005), that
checks the ledger, has the effect and writes the ledger row and the audit row: the effect, the
record that it happened and the trace of who asked commit together or not at all, in one round
trip.
An op id (or Idempotency-Key) seen before gets the stored answer instead of a second effect.
The ledger's and the audit log's reads and the ledger's retention are here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from proxy.registry import errors
from proxy.registry.agent import AgentRecord
from proxy.store.repository.rows import record_from_row
from proxy.store.repository.writes import WRITES, WriteContext, target_of


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    status: int
    body: bytes | None
    """The answer's document, encoded JSON; None when it has none."""
    record: AgentRecord | None
    applied: bool
    reason: str | None = None
    problem: errors.RegistryError | None = None
    from_ledger: bool = False


# The refusals `registry_write_v2` answers with, by slug.
_PROBLEMS: dict[str, type[errors.RegistryError]] = {
    cls.slug: cls
    for cls in (
        errors.NotFound,
        errors.DuplicateAgent,
        errors.RegistryFull,
        errors.PreconditionFailed,
    )
}


def _is_ledger_conflict(exc: asyncpg.UniqueViolationError) -> bool:
    return getattr(exc, "constraint_name", None) == "operations_pkey"


async def _send(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> asyncpg.Record:
    if not conn.is_in_transaction():
        # Autocommit: the statement is its own transaction, so it is the write's only round
        # trip.
        row = await conn.fetchrow(sql, *args)
    else:
        # Inside the caller's transaction (a journal replay's batch): in a savepoint, so that a
        # write that fails leaves the caller's transaction usable for the writes after it.
        async with conn.transaction():
            row = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


async def execute_write(
    conn: asyncpg.Connection,
    ctx: WriteContext,
    *,
    kind: str,
    payload: dict[str, Any],
    op_id: str,
    req_hash: str,
) -> WriteOutcome:
    """Run one write exactly once per `op_id`, with its ledger entry and audit row.

    One statement: the ledger is looked up first, and an operation already carried out (a
    retry after a lost commit acknowledgement, a journal replay, a reused Idempotency-Key) gets
    its stored answer; a different request under the same op id is an `IdempotencyMismatch`.
    A domain rejection (duplicate, full, not found, stale If-Match) is an outcome too: it is
    recorded with its reason, so a rejected replay leaves a readable trace.

    The answer's body is the agent's document (`AgentRecord.public_json`, rendered here from the
    row the statement answers with, at the time of the write) or the document PostgreSQL
    rendered (the write's own answer, or the problem); the ledger keeps what it is made from,
    so a retry gets back the document the first attempt got.
    `kind` is a `WriteKind` or its value, as a journal record gives it back.
    """
    write = WRITES.get(kind)
    if write is None:
        raise ValueError(f"unknown write kind {kind!r}")
    args = (
        ctx.tenant,
        op_id,
        req_hash,
        ctx.actor,
        ctx.request_id,
        ctx.at,
        target_of(kind, payload),
        *write.args(ctx, payload),
    )
    try:
        row = await _send(conn, write.sql, args)
    except asyncpg.UniqueViolationError as exc:
        # The same op id, new, sent twice at once: this one waited for the other, failed on its
        # ledger row and was undone whole; sent again it finds the other's answer.
        if not _is_ledger_conflict(exc):
            raise
        row = await _send(conn, write.sql, args)
    except asyncpg.SerializationError:
        # The tenant was filled by concurrent registrations while this one ran: undone; sent
        # again it finds the tenant as they left it.
        row = await _send(conn, write.sql, args)
    return _outcome(row)


def _outcome(row: asyncpg.Record) -> WriteOutcome:
    seen = row["w_seen"]
    if seen and not row["w_same"]:
        raise errors.IdempotencyMismatch(
            "this Idempotency-Key was used before with a different request"
        )
    record = record_from_row(row) if row["agent_id"] is not None else None
    body = row["w_body"]
    if body is not None:
        encoded: bytes | None = body.encode()
    elif record is not None and row["w_status"] != 204:
        # The agent's document as it stood at the write (its status is "unresponsive" once its
        # heartbeat is old enough): the same bytes for a retry as for the first answer.
        encoded = record.public_json(row["w_at"])
    else:
        encoded = None
    if seen:
        return WriteOutcome(
            status=row["w_status"],
            body=encoded,
            record=None,
            applied=row["w_state"] == "applied",
            reason=row["w_reason"],
            from_ledger=True,
        )
    slug = row["w_slug"]
    if slug is not None:
        return WriteOutcome(
            status=row["w_status"],
            body=encoded,
            record=None,
            applied=False,
            reason=row["w_reason"],
            problem=_PROBLEMS[slug](row["w_detail"]),
        )
    return WriteOutcome(status=row["w_status"], body=encoded, record=record, applied=True)


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
    await conn.execute(
        "WITH ledger AS ("
        " INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, reason,"
        " response_status) VALUES ($1, $2, $3, $4, 'rejected', $5, 500)"
        " ON CONFLICT (tenant_id, op_id) DO NOTHING RETURNING 1) "
        "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, op_id, at) "
        "SELECT $1, $6, $3, NULL, 'rejected:internal-error', $7, $2, coalesce($8, now()) "
        "FROM ledger",
        ctx.tenant,
        op_id,
        kind,
        req_hash,
        reason,
        ctx.actor,
        ctx.request_id,
        ctx.at,
    )


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
