"""Per-token rate limit: a flood from one token gets 429 with Retry-After; others are served.

The limiter is a token bucket per token id (burst 5, 5 per second here). A refused request
never reaches its handler, so a flood of writes changes nothing beyond the ones let through.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.conftest import AppFactory, Tokens, agent_body, eventually
from tests.security import assert_problem, more_tokens, pictures

LIMIT = {"enabled": True, "rate_per_s": 5, "burst": 5}


async def test_a_flood_from_one_token_is_429_while_other_tokens_are_served(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api(rate_limit=LIMIT)
    flooder = api.as_token(tokens.writer)
    started = time.monotonic()
    statuses: list[int] = []
    for _ in range(40):
        resp = await flooder.client.get(
            "/v1/stats", headers={"Authorization": f"Bearer {tokens.writer}"}
        )
        raw = await resp.read()
        statuses.append(resp.status)
        if resp.status == 429:
            assert_problem(resp.status, raw, resp.headers)
            assert resp.headers["Content-Type"].startswith("application/problem+json")
            retry_after = int(resp.headers["Retry-After"])
            assert 1 <= retry_after <= 2, retry_after
        else:
            assert resp.status == 200, raw
    elapsed = time.monotonic() - started
    allowed = statuses.count(200)
    assert statuses.count(429) > 0, statuses
    assert statuses[:5] == [200] * 5, statuses  # the burst
    assert allowed <= 5 + 5 * elapsed + 1, (allowed, elapsed)

    # Other tokens, of the same tenant and of another, are not held back by the flood.
    for token in (tokens.reader, tokens.admin, tokens.other_writer):
        for _ in range(3):
            status, body, _ = await api.as_token(token).call("GET", "/v1/stats")
            assert status == 200, (token, body)
    status, body, _ = await api.as_token(tokens.other_writer).call(
        "POST", "/v1/agents", agent_body("rl-other")
    )
    assert status == 201, body

    # The flooder is served again once its bucket refills.
    async def served_again() -> bool:
        status, _, _ = await flooder.call("GET", "/v1/stats")
        return status == 200

    await eventually(served_again, timeout=5, interval=0.05, message="bucket refilled")


async def test_refused_writes_change_nothing_and_public_routes_are_not_limited(
    make_api: AppFactory, tokens: Tokens, db: asyncpg.Connection
) -> None:
    api = await make_api(rate_limit=LIMIT)
    more = more_tokens(tokens)
    more.install(api)
    writer = api.as_token(more.hashed_writer)

    async def flood(n: int) -> list[tuple[int, str]]:
        async def one(i: int) -> tuple[int, str]:
            status, body, headers = await writer.call("POST", "/v1/agents", agent_body(f"rl-{i}"))
            return status, headers.get("Retry-After", "")

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    before = await pictures(db, tokens.tenant, tokens.other_tenant)
    started = time.monotonic()
    answers = await flood(30)
    elapsed = time.monotonic() - started
    created = [s for s, _ in answers if s == 201]
    refused = [r for s, r in answers if s == 429]
    assert len(created) + len(refused) == 30, answers
    assert 5 <= len(created) <= 5 + 5 * elapsed + 1 and refused, (answers, elapsed)
    assert all(int(r) >= 1 for r in refused)
    after = await pictures(db, tokens.tenant, tokens.other_tenant)
    assert after[tokens.other_tenant] == before[tokens.other_tenant]
    added = len(after[tokens.tenant]["agents"]) - len(before[tokens.tenant]["agents"])
    assert added == len(created)
    assert len(after[tokens.tenant]["audit_log"]) - len(before[tokens.tenant]["audit_log"]) == (
        len(created)
    )

    # Probes, metrics and the API document answer whatever the flood did.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        for _ in range(10):
            resp = await api.client.get(path)
            assert resp.status == 200, path
    # Unknown tokens are refused as such (401), never counted against a real token.
    for _ in range(10):
        status, _, _ = await api.as_token("nobody-" + "x" * 20).call("GET", "/v1/stats")
        assert status == 401
    status, _, _ = await api.as_token(tokens.reader).call("GET", "/v1/stats")
    assert status == 200
