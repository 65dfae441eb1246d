"""Migration 0005 (a tenant's count in slots) applies to a database at 0004 with agents counted
in the one row: the count carries over, and registrations and unregistrations on both sides of
the migration keep it right, up to the limit and not past it."""

from __future__ import annotations

import asyncpg
import pytest

from proxy.registry.requests import request_hash
from proxy.store import migrate as migrations
from proxy.store import repository
from tests.conftest import agent_body
from tests.integration.test_migration_0004 import fresh_dsn, only_up_to  # noqa: F401

LIMIT = 5


async def _write(
    conn: asyncpg.Connection, kind: str, agent_id: str, attempt: int = 1
) -> repository.WriteOutcome:
    payload = {"body": agent_body(agent_id)} if kind == "register" else {"agent_id": agent_id}
    return await repository.execute_write(
        conn,
        repository.WriteContext("t1", "tester", None, LIMIT),
        kind=kind,
        payload=payload,
        op_id=f"{kind}-{agent_id}-{attempt}",
        req_hash=request_hash(kind, None, payload.get("body")),
    )


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT sum(agent_count) FROM tenants WHERE tenant_id = 't1'"))


async def test_the_count_carries_over_and_stays_exact(
    fresh_dsn: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = only_up_to(monkeypatch, "0004")
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await migrations.migrate(conn) == ["0001", "0002", "0003", "0004"]
        for n in range(3):
            assert (await _write(conn, "register", f"old-{n}")).status == 201
        assert await conn.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = 't1'") == 3
        monkeypatch.setattr(migrations, "load_migrations", lambda: every)
        assert await migrations.migrate(conn) == ["0005"]
        assert await _count(conn) == 3

        # An agent counted before, unregistered from its own slot: the sum goes down by one.
        assert (await _write(conn, "unregister", "old-0")).status == 204
        assert await _count(conn) == 2
        added = 0
        for n in range(10):
            outcome = await _write(conn, "register", f"new-{n}")
            if outcome.status == 201:
                added += 1
            else:
                assert outcome.status == 409 and outcome.reason is not None
                assert outcome.reason.startswith("registry-full")
        assert added == LIMIT - 2
        assert await _count(conn) == LIMIT
        live = await conn.fetchval(
            "SELECT count(*) FROM agents WHERE tenant_id = 't1' AND deleted_at IS NULL"
        )
        assert live == LIMIT
        # A duplicate in a full tenant is still a duplicate.
        again = await _write(conn, "register", "old-1", attempt=2)
        assert again.status == 409 and again.reason is not None
        assert again.reason.startswith("duplicate-agent"), again.reason
    finally:
        await conn.close()
