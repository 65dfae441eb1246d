"""Every read shows a state that existed: histories of concurrent writers and readers through a
burst and an outage, checked read by read, then against what PostgreSQL holds."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.http import keys
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually
from tests.history import History, run_clients, stored_events

HOT = ["hot-0", "hot-1", "hot-2"]


async def _seed(api: Api) -> None:
    for agent_id in HOT:
        assert (await api.call("POST", "/v1/agents", agent_body(agent_id)))[0] == 201


async def _drained(api: Api) -> None:
    service = app_of(api)[keys.SERVICE]

    def done() -> bool:
        journal = service.journal
        return service.breaker.state.value == "closed" and (journal is None or not journal.depth)

    await eventually(done, timeout=30, message="breaker closed and journal drained")


async def _check(history: History, db: Any, tenant: str) -> None:
    problems = history.unexplained()
    assert not problems, problems[:10]
    stored = await stored_events(db.fetch, tenant)
    mismatches = history.final_mismatches(stored)
    assert not mismatches, mismatches
    counts = {
        r["agent_id"]: r["task_count"]
        for r in await db.fetch(
            "SELECT agent_id, task_count FROM agents WHERE tenant_id = $1", tenant
        )
    }
    for agent in HOT:
        assert counts[agent] == len(stored.get(agent, set())), (agent, counts[agent])


async def test_history_through_a_burst_and_an_outage_explains_every_read(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    api = await make_api()
    admin = api.as_token(tokens.admin)
    await _seed(api)
    history = History()
    phase = {"stop": False}
    clients = asyncio.create_task(
        run_clients(api, history, HOT, clients=24, until=lambda: phase["stop"], seed=1)
    )
    await eventually(lambda: len(history.ops) > 300, message="a burst on a healthy database")
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    mark = len(history.ops)
    await eventually(lambda: len(history.ops) > mark + 300, message="writes during the outage")
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200
    mark = len(history.ops)
    await eventually(lambda: len(history.ops) > mark + 300, message="load through the drain")
    phase["stop"] = True
    await clients
    await _drained(api)

    statuses = history.statuses()
    assert statuses.get(("post", 202), 0) > 0, statuses  # the outage was seen
    assert statuses.get(("post", 201), 0) > 0, statuses
    assert not [k for k in statuses if k[1] >= 500 and k[1] != 503], statuses
    await _check(history, db, tokens.tenant)


async def test_a_burst_then_an_immediate_read_never_counts_a_write_twice(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    api = await make_api()
    admin = api.as_token(tokens.admin)
    await _seed(api)
    history = History()
    # Journaled during an outage, then read again and again while the replay applies them.
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    await asyncio.gather(*(history.post(api, n, "hot-0", history.new_event()) for n in range(100)))
    assert {o.status for o in history.ops} == {202}
    assert (await history.read(api, 0, "hot-0")).count == 100
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200
    service = app_of(api)[keys.SERVICE]
    assert service.journal is not None
    while service.journal.depth:
        assert (await history.read(api, 0, "hot-0")).count == 100
    assert (await history.read(api, 0, "hot-0")).count == 100
    await _drained(api)
    await _check(history, db, tokens.tenant)


async def test_one_event_id_posted_twice_during_an_outage_counts_once(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    api = await make_api()
    admin = api.as_token(tokens.admin)
    await _seed(api)
    history = History()
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "forced_open"}))[0] == 200
    first = await history.post(api, 0, "hot-1", "twice")
    again = await history.post(api, 0, "hot-1", "twice")
    assert (first.status, again.status) == (202, 202)
    seen = await history.read(api, 0, "hot-1")
    assert seen.count == 1 and seen.source == "replica"
    assert (await admin.call("POST", "/v1/admin/breaker", {"state": "automatic"}))[0] == 200
    await _drained(api)
    assert (await history.read(api, 0, "hot-1")).count == 1
    count = await db.fetchval(
        "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = 'hot-1'",
        tokens.tenant,
    )
    assert count == 1
    await _check(history, db, tokens.tenant)
