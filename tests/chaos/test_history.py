"""Histories through real faults: concurrent writers and readers while Toxiproxy cuts PostgreSQL
off and heals it; every read must be explainable, and the database must end up holding exactly
what the clients were told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from toxiproxy.proxy import Proxy

from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.chaos.conftest import in_thread, proxied_dsn, start_sidecar, state, wait_state
from tests.conftest import AppFactory, agent_body, app_of, eventually
from tests.history import History, run_clients, stored_events

pytestmark = pytest.mark.chaos

HOT = ["hot-0", "hot-1", "hot-2", "hot-3"]


def _grown(history: History, by: int) -> Callable[[], bool]:
    """A check that holds once `by` more requests were recorded than now."""
    mark = len(history.ops)
    return lambda: len(history.ops) > mark + by


@pytest.mark.parametrize("cut", ["disable", "reset_peer"])
async def test_history_through_cuts_and_heals_explains_every_read(
    make_api: AppFactory, pg_proxy: Proxy, pg: EmbeddedPostgres, tokens: Any, cut: str
) -> None:
    api = await start_sidecar(make_api, proxied_dsn(pg_proxy))
    for agent_id in HOT:
        assert (await api.call("POST", "/v1/agents", agent_body(agent_id)))[0] == 201
    history = History()
    phase = {"stop": False}
    clients = asyncio.create_task(
        run_clients(api, history, HOT, clients=16, until=lambda: phase["stop"], seed=7)
    )
    try:
        for _round in range(2):
            await eventually(_grown(history, 150), message="healthy traffic")
            if cut == "disable":
                await in_thread(pg_proxy.disable)
            else:
                await in_thread(pg_proxy.add_toxic, type="reset_peer", attributes={"timeout": 0})
            await wait_state(api, "open")
            await eventually(_grown(history, 150), message="outage traffic")
            if cut == "disable":
                await in_thread(pg_proxy.enable)
            else:
                await in_thread(pg_proxy.destroy_toxic, "reset_peer_downstream")
            await wait_state(api, "closed", timeout=20)
        service = app_of(api)[keys.SERVICE]
        assert service.journal is not None
        await eventually(
            lambda: service.journal is not None and service.journal.depth == 0,
            timeout=20,
            message="journal drained while the clients go on",
        )
    finally:
        phase["stop"] = True
        await clients
    assert state(api) == "closed"

    statuses = history.statuses()
    assert statuses.get(("post", 202), 0) > 0, statuses
    assert not [k for k in statuses if k[1] >= 500 and k[1] not in (503, 504)], statuses
    problems = history.unexplained()
    assert not problems, problems[:10]
    conn = await asyncpg.connect(pg.dsn)
    try:
        stored = await stored_events(conn.fetch, tokens.tenant)
        counts = {
            r["agent_id"]: r["task_count"]
            for r in await conn.fetch(
                "SELECT agent_id, task_count FROM agents WHERE tenant_id = $1", tokens.tenant
            )
        }
    finally:
        await conn.close()
    mismatches = history.final_mismatches(stored)
    assert not mismatches, mismatches
    for agent in HOT:
        assert counts[agent] == len(stored.get(agent, set())), agent
