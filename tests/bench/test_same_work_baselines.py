"""The same-work write baselines leave the rows the sidecar leaves, in both of their shapes.

The benchmark's claim that the sidecar's writes are compared with an app doing the same durable
work rests on these rows being written: the effect, the ledger row with the answer, the audit
row, the tenant's count, the notification; and on a refused write leaving none of them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from bench.client import http
from bench.servers import Server, free_port
from bench.workload import PERFORMANCE_BODY, register_body

ROOT = Path(__file__).resolve().parents[2]


def _server(kind: str, dsn: str, tenant: str, write_tenant: str, tmp: Path) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bench.baselines",
        "asyncpg",
        "--port",
        str(port),
        "--dsn",
        dsn,
        "--tenant",
        tenant,
        "--write-tenant",
        write_tenant,
        "--writes",
        kind,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return Server(f"asyncpg-{kind}", cmd, port, tmp / f"{kind}.log", env)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ledger", "ledger-1rt"])
async def test_a_write_leaves_effect_ledger_audit_and_count_and_a_refusal_leaves_nothing(
    migrated_dsn: str, db: asyncpg.Connection, tmp_path: Path, kind: str
) -> None:
    tenant, write_tenant = f"bt-{uuid.uuid4().hex[:10]}", f"bw-{uuid.uuid4().hex[:10]}"
    await db.execute(
        "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
        "VALUES ($1, 'a1', 'A', 'gpt', '{code}')",
        tenant,
    )
    notified: list[str] = []
    await db.add_listener("registry_agents", lambda *args: notified.append(args[3]))
    server = _server(kind, migrated_dsn, tenant, write_tenant, tmp_path)
    server.start()
    try:
        await server.wait_until("/healthz", 30)
        status, agent = await http(
            server.url + "/v1/agents", method="POST", body=orjson.loads(register_body("r1"))
        )
        assert status == 201, agent
        status, again = await http(
            server.url + "/v1/agents", method="POST", body=orjson.loads(register_body("r1"))
        )
        assert status == 409, again
        status, outcome = await http(
            server.url + "/v1/agents/a1/performance",
            method="POST",
            body=orjson.loads(PERFORMANCE_BODY),
        )
        assert status == 201, outcome
        assert outcome["performance"]["task_count"] == 1

        ledger = await db.fetch(
            "SELECT tenant_id, op_id, kind, status, response_status, response_body "
            "FROM operations WHERE tenant_id = ANY($1::text[]) ORDER BY kind DESC",
            [tenant, write_tenant],
        )
        assert [(r["tenant_id"], r["kind"]) for r in ledger] == [
            (write_tenant, "register"),
            (tenant, "performance"),
        ]
        assert all(r["status"] == "applied" and r["response_status"] == 201 for r in ledger)
        assert orjson.loads(ledger[0]["response_body"])["agent_id"] == "r1"
        stored = orjson.loads(ledger[1]["response_body"])
        assert stored["event_id"] == outcome["event_id"]
        assert stored["performance"]["task_count"] == 1

        audit = await db.fetch(
            "SELECT tenant_id, action, target, outcome, op_id, request_id FROM audit_log "
            "WHERE tenant_id = ANY($1::text[]) ORDER BY action DESC",
            [tenant, write_tenant],
        )
        assert [(r["action"], r["target"], r["outcome"]) for r in audit] == [
            ("register", "r1", "applied"),
            ("performance", "a1", "applied"),
        ]
        assert [r["op_id"] for r in audit] == [r["op_id"] for r in ledger]
        assert all(r["request_id"] for r in audit)

        assert (
            await db.fetchval("SELECT agent_count FROM tenants WHERE tenant_id = $1", write_tenant)
            == 1
        )
        assert (
            await db.fetchval(
                "SELECT count(*) FROM performance_events WHERE tenant_id = $1 AND event_id = $2",
                tenant,
                outcome["event_id"],
            )
            == 1
        )

        # A full tenant refuses, and the agent's row goes with the refusal.
        await db.execute(
            "UPDATE tenants SET agent_count = 1000000 WHERE tenant_id = $1", write_tenant
        )
        status, _ = await http(
            server.url + "/v1/agents", method="POST", body=orjson.loads(register_body("r2"))
        )
        assert status == 409
        assert (
            await db.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", write_tenant) == 1
        )
        assert (
            await db.fetchval("SELECT count(*) FROM operations WHERE tenant_id = $1", write_tenant)
            == 1
        )
        # Notifications come asynchronously; the two writes' are in well before this.
        for _ in range(50):
            mine = [n for n in notified if tenant in n or write_tenant in n]
            if len(mine) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(mine) == 2, mine
    finally:
        server.stop()
