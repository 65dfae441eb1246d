"""A write behind its agent's journaled backlog: it waits for the replay while PostgreSQL
answers, and is journaled behind the backlog as soon as PostgreSQL is away again."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from toxiproxy.proxy import Proxy

from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.chaos.conftest import app_of, in_thread, proxied_dsn, seed, start_sidecar, state
from tests.conftest import AppFactory, eventually

pytestmark = pytest.mark.chaos

LOAD = {"active_tasks": 1, "queued_tasks": 0, "observed_at": "2026-06-01T00:00:00+00:00"}


@pytest.mark.skipif(
    bool(os.environ.get("REGISTRY_PROXY_TEST_PGBOUNCER")),
    reason="needs a trial call that hangs; through PgBouncer a server login that hangs is "
    "answered by PgBouncer itself, at once, while it waits out server_login_retry",
)
async def test_a_write_waiting_for_its_backlog_is_journaled_when_the_breaker_reopens(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres
) -> None:
    api = await start_sidecar(
        make_api,
        proxied_dsn(pg_proxy),
        breaker={"open_base_ms": 300, "open_max_ms": 300, "probe_interval_ms": 60_000},
        request={"default_timeout_ms": 3000},
    )
    agent = (await seed(api, 1))[0]
    service = app_of(api)[keys.SERVICE]
    await in_thread(pg_proxy.disable)
    n = 0
    while state(api) != "open":
        n += 1
        status, answer, _ = await api.call(
            "PUT", f"/v1/agents/{agent}/load", LOAD, headers={"Idempotency-Key": f"k{n}"}
        )
        assert status == 202, (status, answer)
    # Still away, but now a connection hangs until its timeout: the trial call after the open
    # period keeps the breaker half-open for a while, then fails.
    await in_thread(pg_proxy.add_toxic, type="timeout", name="hang", attributes={"timeout": 0})
    await in_thread(pg_proxy.enable)
    await eventually(lambda: service.breaker.retry_after() <= 0, message="open period over")
    trial = asyncio.create_task(api.call("GET", "/v1/agents/someone-else"))
    await eventually(lambda: state(api) == "half_open", timeout=5, message="half-open")

    status, answer, _ = await api.call(
        "PUT", f"/v1/agents/{agent}/load", LOAD, headers={"Idempotency-Key": "during-trial"}
    )
    await trial
    # Journaled behind the backlog once the trial failed, not left to run out its deadline
    # (which ends in 503 overloaded).
    assert status == 202, (status, answer)
    assert state(api) == "open"
    await in_thread(pg_proxy.destroy_toxic, "hang")


async def test_after_the_heal_a_write_waits_for_its_agent_and_goes_to_postgresql(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Any
) -> None:
    api = await start_sidecar(make_api, proxied_dsn(pg_proxy))
    agents = await seed(api, 3)
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None
    admin = api.as_token(tokens.admin)
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    for n in range(300):
        body = {"event_id": f"b-{n}", "success": True, "quality_score": 0.5, "latency_ms": 1}
        agent = agents[n % 3]
        assert (await api.call("POST", f"/v1/agents/{agent}/performance", body))[0] == 202
    depth = service.journal.depth
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200
    # A write for the last agent: its entries are taken first, then it is committed.
    body = {"event_id": "after", "success": True, "quality_score": 0.5, "latency_ms": 1}
    status, answer, headers = await api.call("POST", f"/v1/agents/{agents[2]}/performance", body)
    assert status == 201, answer
    assert headers["X-Registry-Source"] == "database"
    await eventually(lambda: service.journal is not None and service.journal.depth == 0)
    assert depth >= 300  # and the audit row of the admin action, journaled too
    _, agent_doc, _ = await api.call("GET", f"/v1/agents/{agents[2]}")
    assert agent_doc["performance"]["task_count"] == 101
