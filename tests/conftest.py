"""Shared fixtures: a real PostgreSQL for the session and a real sidecar app per test.

PostgreSQL is the one at REGISTRY_PROXY_TEST_DATABASE_URL when set, otherwise an embedded server
started once for the session. Tests isolate themselves by tenant: each test gets fresh tenant
names, so they never see each other's rows and need no truncation.

With REGISTRY_PROXY_TEST_PGBOUNCER=1 a PgBouncer in transaction pooling stands in front of that
PostgreSQL for the session, and every sidecar `make_api` builds on the session's database goes
through it (`database.pooler=transaction`, the direct DSN for its listener and migrations): the
suite then runs against the fleet topology of docs/fleet.md. Tests that bring a DSN of their own
(an outage's own PostgreSQL, a Toxiproxy) are left as they are.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

import proxy.resilience as resilience
from proxy.app import SYNC, create_app
from proxy.http import keys
from proxy.http.server import SidecarRunner
from proxy.observability.logging import configure
from proxy.settings import Settings
from proxy.store.embedded import EmbeddedPostgres
from proxy.store.migrate import migrate

configure(level="warning", fmt="json")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    url = os.environ.get("REGISTRY_PROXY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn


@pytest.fixture(scope="session")
def pooled_dsn(migrated_dsn: str) -> Iterator[str | None]:
    """PgBouncer's DSN in front of the session's PostgreSQL, if REGISTRY_PROXY_TEST_PGBOUNCER."""
    if not os.environ.get("REGISTRY_PROXY_TEST_PGBOUNCER"):
        yield None
        return
    from tests.topology.pgbouncer import PgBouncer

    bouncer = PgBouncer(migrated_dsn, default_pool_size=20, max_client_conn=5000)
    asyncio.run(bouncer.__aenter__())
    try:
        yield bouncer.dsn
    finally:
        asyncio.run(bouncer.__aexit__(None, None, None))


@pytest.fixture(scope="session")
def migrated_dsn(pg_dsn: str) -> str:
    async def run() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())
    return pg_dsn


@pytest.fixture
async def db(migrated_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to check what PostgreSQL really holds."""
    conn = await asyncpg.connect(migrated_dsn)
    yield conn
    await conn.close()


@dataclass
class Tokens:
    tenant: str
    other_tenant: str
    reader: str
    writer: str
    admin: str
    other_writer: str

    def spec(self) -> str:
        return orjson.dumps(
            [
                {"token": self.reader, "tenant": self.tenant, "role": "reader", "id": "reader"},
                {"token": self.writer, "tenant": self.tenant, "role": "writer", "id": "writer"},
                {"token": self.admin, "tenant": self.tenant, "role": "admin", "id": "admin"},
                {
                    "token": self.other_writer,
                    "tenant": self.other_tenant,
                    "role": "writer",
                    "id": "other-writer",
                },
            ]
        ).decode()


@pytest.fixture
def tokens() -> Tokens:
    suffix = uuid.uuid4().hex[:10]
    return Tokens(
        tenant=f"t-{suffix}",
        other_tenant=f"o-{suffix}",
        reader="reader-" + uuid.uuid4().hex,
        writer="writer-" + uuid.uuid4().hex,
        admin="admin-" + uuid.uuid4().hex,
        other_writer="other-" + uuid.uuid4().hex,
    )


def make_settings(dsn: str, tokens: Tokens, journal_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": SecretStr(dsn),
        "tokens": SecretStr(tokens.spec()),
        "journal": {"dir": journal_dir, "fsync": True},
        "rate_limit": {"enabled": False},
        "replica": {"resync_interval_s": 30, "snapshot_interval_s": 30},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


class Api:
    """A test client bound to one token, with short helpers for the registry calls."""

    def __init__(self, client: TestClient[Any, Any], token: str) -> None:
        self.client = client
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"}
        if extra:
            h.update(extra)
        return h

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, Any, Any]:
        resp = await self.client.request(
            method, path, json=json, headers=self.headers(headers), **kw
        )
        raw = await resp.read()
        body = orjson.loads(raw) if raw else None
        return resp.status, body, resp.headers

    def as_token(self, token: str) -> Api:
        return Api(self.client, token)


def agent_body(agent_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": agent_id,
        "name": f"Agent {agent_id}",
        "model_family": "gpt",
        "capabilities": {
            "task_types": kw.pop("task_types", ["code"]),
            "languages": kw.pop("languages", ["python"]),
            "specializations": kw.pop("specializations", []),
        },
    }
    body.update(kw)
    return body


AppFactory = Callable[..., Awaitable[Api]]


class SidecarTestServer(TestServer):
    """The test server runs the app exactly as `registry-proxy serve` does."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return SidecarRunner(self.app, **kwargs)


@pytest.fixture
async def make_api(
    migrated_dsn: str,
    pooled_dsn: str | None,
    tokens: Tokens,
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AppFactory:
    """Build a sidecar app with settings overrides and wait until it can serve."""
    resilience.set_testing(False)

    async def factory(
        dsn: str | None = None, *, wait_replica: bool = True, **overrides: Any
    ) -> Api:
        if dsn is None and pooled_dsn is not None:
            dsn = pooled_dsn
            overrides.setdefault("database_direct_url", SecretStr(migrated_dsn))
            overrides["database"] = {"pooler": "transaction", **overrides.get("database", {})}
        settings = make_settings(dsn or migrated_dsn, tokens, tmp_path / "journal", **overrides)
        app = create_app(settings)
        client = await aiohttp_client(SidecarTestServer(app))
        service = app[keys.SERVICE]
        assert await service.db.wait_ready(20), "database did not become ready"
        sync = app[SYNC]
        if wait_replica and sync is not None:
            async with asyncio.timeout(20):
                await sync.synced.wait()
        return Api(client, tokens.writer)

    return factory


@pytest.fixture
async def api(make_api: AppFactory) -> Api:
    return await make_api()


def app_of(api: Api) -> web.Application:
    app = api.client.app
    assert app is not None
    return app


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition not met",
) -> None:
    """Poll `check` until it holds or the deadline passes (no blind sleeps)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"{message} within {timeout}s")
        await asyncio.sleep(interval)
