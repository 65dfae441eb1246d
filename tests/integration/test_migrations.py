"""The write statement's migrations apply to an empty database and to one written before them.

0004 (the write in one statement) at 0003, whose ledger was written by separate statements: its
answers are still given back as they were. 0005 (the agent's document rendered by the sidecar)
at 0004: a retry of a write of either release gets its document, whichever release's sidecar
sends it, as during a rolling upgrade."""

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
from proxy.store.repository.writes import WRITES, target_of
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
        every = [m.version for m in migrations.load_migrations()]
        assert every[:5] == ["0001", "0002", "0003", "0004", "0005"]
        assert await migrations.migrate(conn) == every
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
        monkeypatch.setattr(
            migrations, "load_migrations", lambda: [m for m in every if m.version <= "0005"]
        )
        assert await migrations.migrate(conn) == ["0004", "0005"]

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


async def _previous_release(conn: asyncpg.Connection, agent_id: str, op_id: str) -> asyncpg.Record:
    """A registration as a sidecar of the previous release sends it: 0004's `registry_write`."""
    body = agent_body(agent_id)
    ctx = repository.WriteContext("t1", "tester", None, 10)
    payload = {"body": body}
    sql = WRITES["register"].sql.replace("registry_write_v2(", "registry_write(")
    sql = sql.replace("w.w_at, ", "")
    row = await conn.fetchrow(
        sql,
        ctx.tenant,
        op_id,
        request_hash("register", None, body),
        ctx.actor,
        ctx.request_id,
        ctx.at,
        target_of("register", payload),
        *WRITES["register"].args(ctx, payload),
    )
    assert row is not None
    return row


async def test_it_applies_at_0004_and_both_releases_answer_each_others_retries(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = migrations.load_migrations()
    monkeypatch.setattr(
        migrations, "load_migrations", lambda: [m for m in every if m.version <= "0004"]
    )
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await migrations.migrate(conn)
        before = await _previous_release(conn, "before", "op-before")
        assert before["w_status"] == 201 and not before["w_seen"]
        monkeypatch.setattr(
            migrations, "load_migrations", lambda: [m for m in every if m.version <= "0005"]
        )
        assert await migrations.migrate(conn) == ["0005"]

        # A write of the previous release, retried by this one: 0004's stored document.
        retried = await _register(conn, "before", "op-before")
        assert retried.from_ledger and retried.status == 201 and retried.body is not None
        assert orjson.loads(retried.body) == orjson.loads(before["w_body"])

        # A write of this release, answered by both: the same document.
        fresh = await _register(conn, "after", "op-after")
        assert fresh.applied and fresh.record is not None and fresh.body is not None
        assert await conn.fetchval(
            "SELECT response_body IS NULL AND response_row IS NOT NULL FROM operations "
            "WHERE op_id = 'op-after'"
        )
        again = await _register(conn, "after", "op-after")
        assert again.from_ledger and again.body == fresh.body
        old_retry = await _previous_release(conn, "after", "op-after")
        assert old_retry["w_seen"] and old_retry["agent_id"] is None
        assert orjson.loads(old_retry["w_body"]) == orjson.loads(fresh.body)
        assert list(orjson.loads(old_retry["w_body"])) == list(orjson.loads(fresh.body))

        # A new write sent by the previous release: its document rendered in SQL, as before.
        old_new = await _previous_release(conn, "old-new", "op-old-new")
        assert old_new["w_status"] == 201 and old_new["agent_id"] == "old-new"
        doc = orjson.loads(old_new["w_body"])
        assert doc["agent_id"] == "old-new" and doc["status"] == "active"
        assert doc == orjson.loads(
            repository.record_from_row(old_new).public_json(old_new["updated_at"])
        )
    finally:
        await conn.close()
