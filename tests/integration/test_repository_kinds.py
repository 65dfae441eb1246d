"""A write's kind reaches PostgreSQL as the string stored before the kinds were an enum: a
member and its value run the same write and leave the same ledger and audit rows, and a replay
under either form finds the other's ledger entry."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from proxy.registry.requests import WriteKind, request_hash
from proxy.store import repository
from tests.conftest import agent_body


async def _register(
    db: asyncpg.Connection, ctx: repository.WriteContext, kind: str, agent_id: str
) -> repository.WriteOutcome:
    body: dict[str, Any] = agent_body(agent_id)
    return await repository.execute_write(
        db,
        ctx,
        kind=kind,
        payload={"body": body},
        op_id=f"op-{agent_id}",
        req_hash=request_hash(kind, None, body),
    )


async def test_a_member_and_its_string_write_and_replay_alike(db: asyncpg.Connection) -> None:
    tenant = f"kinds-{uuid.uuid4().hex[:12]}"
    ctx = repository.WriteContext(tenant, "tester", None, max_agents=10)
    forms: list[tuple[str, str, str]] = [
        ("by-member", WriteKind.REGISTER, "register"),
        ("by-string", "register", WriteKind.REGISTER),
    ]
    for agent_id, kind, other_form in forms:
        first = await _register(db, ctx, kind, agent_id)
        assert (first.status, first.applied) == (201, True)
        assert orjson.loads(first.body)["agent_id"] == agent_id
        # The same op id under the other form: the ledger's answer, and no second effect.
        again = await _register(db, ctx, other_form, agent_id)
        assert (again.status, again.from_ledger) == (201, True)
        assert orjson.loads(again.body) == orjson.loads(first.body)

    ledger = await db.fetch(
        "SELECT op_id, kind FROM operations WHERE tenant_id = $1 ORDER BY op_id", tenant
    )
    assert [tuple(r) for r in ledger] == [
        ("op-by-member", "register"),
        ("op-by-string", "register"),
    ]
    audit = await db.fetch(
        "SELECT target, action FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant
    )
    assert [tuple(r) for r in audit] == [("by-member", "register"), ("by-string", "register")]
