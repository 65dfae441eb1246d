"""Fixtures of the topology tests: a PgBouncer factory in front of the session's PostgreSQL, and
an ordinary role (row-level security holds only for one that is not a superuser).

The Patroni cluster is no fixture here: it is started by the one test module that uses it, which
keeps its own start-up cost out of every other test's way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.topology.pgbouncer import PgBouncer

BouncerFactory = Callable[..., Awaitable[PgBouncer]]


@pytest.fixture
async def make_bouncer(pg_dsn: str) -> AsyncIterator[BouncerFactory]:
    """Start PgBouncers in front of the session's PostgreSQL; each is stopped after the test."""
    started: list[PgBouncer] = []

    async def factory(**options: Any) -> PgBouncer:
        bouncer = PgBouncer(pg_dsn, **options)
        started.append(bouncer)
        return await bouncer.__aenter__()

    yield factory
    for bouncer in reversed(started):
        await bouncer.__aexit__(None, None, None)


@pytest.fixture
async def app_role(migrated_dsn: str) -> str:
    """The DSN of a new role that may use the registry's tables and bypasses nothing."""
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
    url = urlsplit(migrated_dsn)
    return f"postgresql://{role}@{url.hostname}:{url.port}{url.path or '/postgres'}"
