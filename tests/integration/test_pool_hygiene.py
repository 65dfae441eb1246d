"""A connection whose query was cut off by a deadline never serves the next request."""

from __future__ import annotations

import asyncpg

from tests.conftest import AppFactory, Tokens, agent_body


async def test_interrupted_query_does_not_poison_the_pool(
    make_api: AppFactory, tokens: Tokens, migrated_dsn: str
) -> None:
    api = await make_api(
        database={"pool_min_size": 1, "pool_max_size": 1, "acquire_timeout_ms": 2000},
        request={"default_timeout_ms": 3000},
    )
    assert (await api.call("POST", "/v1/agents", agent_body("held")))[0] == 201
    load = {"active_tasks": 1, "queued_tasks": 0, "observed_at": "2026-01-01T00:00:00+00:00"}
    blocker = await asyncpg.connect(migrated_dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute(
        "SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = 'held' FOR UPDATE", tokens.tenant
    )
    for _ in range(3):
        status, body, _ = await api.call(
            "PUT", "/v1/agents/held/load", load, headers={"X-Request-Timeout": "150"}
        )
        assert status == 504, body
    await tx.rollback()
    await blocker.close()
    for i in range(20):
        status, body, _ = await api.call("GET", "/v1/agents/held")
        assert status == 200, (i, body)
        load["active_tasks"] = i
        status, body, _ = await api.call("PUT", "/v1/agents/held/load", load)
        assert status == 200, (i, body)
