"""A deadline the caller chose never counts against PostgreSQL, on any route.

One table names a request for every route of the route table; the test fails when a route is
missing from it, so a new route cannot forget the rule. Each route gets 50 requests with
`X-Request-Timeout: 1`: whatever they run out of, the breaker stays closed, no answer claims
PostgreSQL is unavailable, and a 5xx is only ever the 504 of a deadline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from proxy.http import keys
from proxy.http.routes import ROUTES
from tests.conftest import AppFactory, agent_body, app_of

REQUESTS = 50

Sample = Callable[[int], tuple[str, Any]]  # n -> (path, json body or None)

SAMPLES: dict[str, Sample] = {
    "register": lambda n: ("/v1/agents", agent_body(f"dl-new-{n}")),
    "query_agents": lambda n: ("/v1/agents?task_type=code&languages=python", None),
    "get_agent": lambda n: ("/v1/agents/dl-0", None),
    "patch_agent": lambda n: ("/v1/agents/dl-0", {"name": f"renamed {n}"}),
    "put_load": lambda n: (
        "/v1/agents/dl-0/load",
        {"active_tasks": n % 5, "queued_tasks": 0, "observed_at": f"2026-01-01T00:00:{n:02d}Z"},
    ),
    "heartbeat": lambda n: ("/v1/agents/dl-0/heartbeat", {}),
    "post_performance": lambda n: (
        "/v1/agents/dl-0/performance",
        {"event_id": f"dl-{n}", "success": True, "quality_score": 0.5, "latency_ms": 3},
    ),
    "delete_agent": lambda n: (f"/v1/agents/dl-del-{n % 5}", None),
    "stats": lambda n: ("/v1/stats", None),
    "operation": lambda n: (f"/v1/operations/op-{n}", None),
    "status": lambda n: ("/v1/status", None),
    "admin_breaker": lambda n: ("/v1/admin/breaker", {"state": "automatic"}),
    "audit": lambda n: ("/v1/audit?limit=10", None),
    "healthz": lambda n: ("/healthz", None),
    "readyz": lambda n: ("/readyz", None),
    "metrics": lambda n: ("/metrics", None),
    "openapi": lambda n: ("/openapi.json", None),
}


def test_every_route_has_a_sample() -> None:
    names = {r.name for r in ROUTES}
    assert names == set(SAMPLES), (
        f"routes without a sample: {sorted(names - set(SAMPLES))}; "
        f"samples without a route: {sorted(set(SAMPLES) - names)}"
    )


async def test_a_callers_deadline_never_opens_the_breaker_on_any_route(
    make_api: AppFactory, tokens: Any
) -> None:
    api = await make_api()
    admin = api.as_token(tokens.admin)
    for agent_id in ["dl-0", *(f"dl-del-{i}" for i in range(5))]:
        assert (await api.call("POST", "/v1/agents", agent_body(agent_id)))[0] == 201
    breaker = app_of(api)[keys.SERVICE].breaker

    seen: dict[str, Counter[int]] = {}
    for route in ROUTES:
        sample = SAMPLES[route.name]
        caller = admin if route.role is not None else api
        statuses: Counter[int] = Counter()
        for n in range(REQUESTS):
            path, body = sample(n)
            if route.name == "metrics":  # not JSON
                resp = await api.client.get(path, headers={"X-Request-Timeout": "1"})
                status, answer, headers = resp.status, None, resp.headers
            else:
                status, answer, headers = await caller.call(
                    route.method, path, body, headers={"X-Request-Timeout": "1"}
                )
            statuses[status] += 1
            if status >= 500:
                assert status == 504, (route.name, status, answer)
                assert answer["type"].endswith("/deadline-exceeded"), answer
            if headers.get("X-Registry-Source") == "replica":
                assert headers.get("X-Registry-Fallback") in ("deadline", "pending-writes"), (
                    route.name,
                    dict(headers),
                )
        seen[route.name] = statuses
        assert breaker.state.value == "closed", (route.name, breaker.snapshot())
        assert breaker.consecutive_failures == 0, (route.name, breaker.snapshot())
    # The deadline did run out somewhere, or the test proves nothing.
    assert any(c[504] for c in seen.values()), seen
    assert not any(t.to_state.value == "open" for t in breaker.transitions)


async def test_a_write_past_the_callers_deadline_says_how_to_settle_it(
    make_api: AppFactory, db: Any, tokens: Any
) -> None:
    """Follow the 504's own words: exactly one write is applied."""
    api = await make_api()
    assert (await api.call("POST", "/v1/agents", agent_body("slow-1")))[0] == 201
    event = {"event_id": "slow-e1", "success": True, "quality_score": 0.5, "latency_ms": 3}

    # Hold the agent's row so the write cannot finish within the caller's 200 ms.
    async with db.transaction():
        await db.execute(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = 'slow-1' FOR UPDATE",
            tokens.tenant,
        )
        status, body, _ = await api.call(
            "POST",
            "/v1/agents/slow-1/performance",
            event,
            headers={"X-Request-Timeout": "200"},
        )
    assert status == 504, body
    op_id = body["op_id"]
    assert f"Idempotency-Key: {op_id}" in body["detail"]
    assert "Idempotency-Key is safe" not in body["detail"]  # the caller sent none
    breaker = app_of(api)[keys.SERVICE].breaker
    assert breaker.state.value == "closed" and breaker.consecutive_failures == 0

    # As the answer says: send it again under its op id.
    status, first, _ = await api.call(
        "POST", "/v1/agents/slow-1/performance", event, headers={"Idempotency-Key": op_id}
    )
    assert status == 201, first
    status, again, headers = await api.call(
        "POST", "/v1/agents/slow-1/performance", event, headers={"Idempotency-Key": op_id}
    )
    assert status == 201 and again == first
    assert headers["Idempotent-Replayed"] == "true"
    status, op, _ = await api.call("GET", f"/v1/operations/{op_id}")
    assert status == 200 and op["status"] == "applied", op
    count = await db.fetchval(
        "SELECT task_count FROM agents WHERE tenant_id = $1 AND agent_id = 'slow-1'",
        tokens.tenant,
    )
    assert count == 1
