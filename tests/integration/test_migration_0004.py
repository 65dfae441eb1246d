"""Migration 0004 (the write statement) applies to an empty database and to one at 0003, whose
ledger was written by the separate statements: its answers are still given back as they were."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import asyncpg
import orjson
import pytest

from proxy.registry.requests import request_hash
from proxy.store import migrate as migrations
from proxy.store import repository
from tests.conftest import agent_body


@pytest.fixture
async def fresh_dsn(db: asyncpg.Connection, migrated_dsn: str) -> AsyncIterator[str]:
    """A database of its own on the test server, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    await db.execute(f"CREATE DATABASE {name}")
    try:
        yield urlparse(migrated_dsn)._replace(path=f"/{name}").geturl()
    finally:
        await db.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def _register(conn: asyncpg.Connection, agent_id: str, op_id: str) -> repository.WriteOutcome:
    body = agent_body(agent_id)
    return await repository.execute_write(
        conn,
        repository.WriteContext("t1", "tester", None, 10),
        kind="register",
        payload={"body": body},
        op_id=op_id,
        req_hash=request_hash("register", None, body),
    )


async def test_it_applies_to_an_empty_database(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await migrations.migrate(conn) == ["0001", "0002", "0003", "0004"]
        outcome = await _register(conn, "a1", "op-1")
        assert outcome.applied and outcome.status == 201
        assert await migrations.migrate(conn) == []
    finally:
        await conn.close()


async def test_it_applies_at_0003_and_answers_from_the_ledger_written_before(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = migrations.load_migrations()
    monkeypatch.setattr(
        migrations, "load_migrations", lambda: [m for m in every if m.version <= "0003"]
    )
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await migrations.migrate(conn) == ["0001", "0002", "0003"]
        # A registration as the separate statements wrote it: the row, the count, the ledger
        # row with the answer the sidecar had rendered, the audit row.
        body = agent_body("old")
        answer = {"agent_id": "old", "name": "Agent old", "revision": 1, "status": "active"}
        await conn.execute(
            "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
            "VALUES ('t1', 'old', 'Agent old', 'gpt', '{code}')"
        )
        await conn.execute("INSERT INTO tenants (tenant_id, agent_count) VALUES ('t1', 1)")
        await conn.execute(
            "INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, "
            "response_status, response_body) VALUES ('t1', 'op-old', 'register', $1, "
            "'applied', 201, $2::jsonb)",
            request_hash("register", None, body),
            orjson.dumps(answer).decode(),
        )
        monkeypatch.setattr(migrations, "load_migrations", lambda: every)
        assert await migrations.migrate(conn) == ["0004"]

        replayed = await _register(conn, "old", "op-old")
        assert replayed.from_ledger and replayed.applied and replayed.status == 201
        assert orjson.loads(replayed.body) == answer
        beat = await repository.execute_write(
            conn,
            repository.WriteContext("t1", "tester", None, 10),
            kind="heartbeat",
            payload={"agent_id": "old", "observed_at": "2030-01-01T00:00:00+00:00"},
            op_id="op-beat",
            req_hash="h",
        )
        assert beat.record is not None and beat.record.revision == 1
        fresh = await _register(conn, "new", "op-new")
        assert fresh.applied and fresh.record is not None
        assert await conn.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = 't1'") == 2
    finally:
        await conn.close()
