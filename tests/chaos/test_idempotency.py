"""An Idempotency-Key means one thing through the journal: the same key and body give the first
outcome, another body is 422, in every state (pending, being written, finished), across outages."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from toxiproxy.proxy import Proxy

from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.chaos.conftest import in_thread, proxied_dsn, start_sidecar, wait_state
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually

pytestmark = pytest.mark.chaos


def event(event_id: str, quality: float = 0.5) -> dict[str, Any]:
    return {"event_id": event_id, "success": True, "quality_score": quality, "latency_ms": 5}


async def outage(api: Api, proxy: Proxy) -> None:
    await in_thread(proxy.disable)
    # A read the replica cannot skip: it asks PostgreSQL, fails, and the breaker counts it.
    for _ in range(20):
        await api.call("GET", "/v1/stats")
        if app_of(api)[keys.SERVICE].breaker.state.value == "open":
            return
    await wait_state(api, "open")


async def heal(api: Api, proxy: Proxy) -> None:
    await in_thread(proxy.enable)
    await wait_state(api, "closed", timeout=20)
    service = app_of(api)[keys.SERVICE]
    await eventually(
        lambda: service.journal is not None and service.journal.depth == 0,
        timeout=20,
        message="journal drained",
    )


async def task_count(dsn: str, tenant: str, agent: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = $2", tenant, agent
        )
    finally:
        await conn.close()
    return int(value)


@pytest.fixture
async def sidecar(make_api: AppFactory, pg_proxy: Proxy) -> Api:
    api = await start_sidecar(make_api, proxied_dsn(pg_proxy))
    assert (await api.call("POST", "/v1/agents", agent_body("idem")))[0] == 201
    return api


async def test_a_key_reused_with_another_body_in_a_later_outage_is_422(
    sidecar: Api, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Any
) -> None:
    api = sidecar
    key = {"Idempotency-Key": "k-a"}
    await outage(api, pg_proxy)
    status, body, _ = await api.call("POST", "/v1/agents/idem/performance", event("a1"), key)
    assert status == 202, body
    await heal(api, pg_proxy)
    assert (await api.call("GET", "/v1/operations/k-a"))[1]["status"] == "applied"

    await outage(api, pg_proxy)
    status, body, _ = await api.call("POST", "/v1/agents/idem/performance", event("a2", 0.9), key)
    assert status == 422 and body["type"].endswith("/idempotency-key-reused"), body
    await heal(api, pg_proxy)
    assert await task_count(pg.dsn, tokens.tenant, "idem") == 1  # the second body never applied
    assert (await api.call("GET", "/v1/operations/k-a"))[1]["status"] == "applied"


async def test_the_same_key_and_body_in_a_later_outage_leaves_no_ghost(
    sidecar: Api, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Any
) -> None:
    api = sidecar
    key = {"Idempotency-Key": "k-b"}
    await outage(api, pg_proxy)
    assert (await api.call("POST", "/v1/agents/idem/performance", event("b1"), key))[0] == 202
    await heal(api, pg_proxy)

    await outage(api, pg_proxy)
    status, body, headers = await api.call("POST", "/v1/agents/idem/performance", event("b1"), key)
    assert status == 202 and body["status"] == "applied", body
    assert headers["Idempotent-Replayed"] == "true"
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None and service.journal.depth == 0
    assert service.replica is not None and service.replica.pending_count() == 0
    _, agent, _ = await api.call("GET", "/v1/agents/idem")
    assert agent["performance"]["task_count"] == 1
    await heal(api, pg_proxy)

    # Nothing left behind: a healthy write goes straight to PostgreSQL, reads come from there.
    status, _, headers = await api.call("POST", "/v1/agents/idem/performance", event("b2"))
    assert status == 201 and headers["X-Registry-Source"] == "database"
    _, agent, headers = await api.call("GET", "/v1/agents/idem")
    assert agent["performance"]["task_count"] == 2 and headers["X-Registry-Source"] == "database"
    _, _, headers = await api.call("GET", "/v1/stats")
    assert headers["X-Registry-Source"] == "database"
    assert await task_count(pg.dsn, tokens.tenant, "idem") == 2


async def test_concurrent_requests_with_one_key_and_different_bodies_in_an_outage(
    sidecar: Api, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Any
) -> None:
    api = sidecar
    key = {"Idempotency-Key": "k-c"}
    await outage(api, pg_proxy)
    answers = await asyncio.gather(
        *(
            api.call("POST", "/v1/agents/idem/performance", event(f"c{n}", n / 10), key)
            for n in range(6)
        )
    )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [202, 422, 422, 422, 422, 422], answers
    await heal(api, pg_proxy)
    assert await task_count(pg.dsn, tokens.tenant, "idem") == 1
    status, op, _ = await api.call("GET", "/v1/operations/k-c")
    assert status == 200 and op["status"] == "applied"
