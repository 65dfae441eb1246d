"""Row-level security: the second wall behind every query's tenant filter.

The sidecar runs here as an ordinary role (superusers bypass row-level security), in a database
shared with every other test's tenants.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import asyncpg
import pytest

from proxy.store.db import tenant_settings
from tests.conftest import AppFactory, Tokens, agent_body


@pytest.fixture
async def app_role(migrated_dsn: str) -> str:
    role = f"app_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    finally:
        await conn.close()
    url = urlparse(migrated_dsn)
    return f"postgresql://{role}@{url.hostname}:{url.port}/postgres"


async def test_sidecar_works_as_an_ordinary_role_and_sees_only_its_tenants(
    make_api: AppFactory, app_role: str, tokens: Tokens, migrated_dsn: str
) -> None:
    api = await make_api(app_role)
    assert (await api.call("POST", "/v1/agents", agent_body("walled")))[0] == 201
    status, body, _ = await api.call(
        "POST",
        "/v1/agents/walled/performance",
        {"success": True, "quality_score": 0.9, "latency_ms": 3},
    )
    assert status == 201, body
    status, body, _ = await api.call("GET", "/v1/agents?task_type=code")
    assert status == 200 and [r["agent"]["agent_id"] for r in body["results"]] == ["walled"]
    other = api.as_token(tokens.other_writer)
    assert (await other.call("POST", "/v1/agents", agent_body("theirs")))[0] == 201

    superuser = await asyncpg.connect(migrated_dsn)
    try:
        await superuser.execute(
            "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
            "VALUES ($1, 'x', 'n', 'm', '{code}')",
            f"stranger-{uuid.uuid4().hex[:6]}",
        )
        everyone = await superuser.fetchval("SELECT count(DISTINCT tenant_id) FROM agents")
    finally:
        await superuser.close()
    assert everyone >= 3

    # A query with no tenant filter at all, on a connection like the sidecar's.
    conn = await asyncpg.connect(app_role, server_settings=tenant_settings([tokens.tenant]))
    try:
        seen = await conn.fetch("SELECT DISTINCT tenant_id FROM agents")
        assert [r["tenant_id"] for r in seen] == [tokens.tenant]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE tenant_id <> $1", tokens.tenant
            )
            == 0
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO agents (tenant_id, agent_id, name, model_family, task_types) "
                "VALUES ($1, 'sneaky', 'n', 'm', '{code}')",
                tokens.other_tenant,
            )
    finally:
        await conn.close()

    # Without the startup parameter, an ordinary role sees nothing.
    bare = await asyncpg.connect(app_role)
    try:
        assert await bare.fetchval("SELECT count(*) FROM agents") == 0
    finally:
        await bare.close()
