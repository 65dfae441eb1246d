"""Fixtures of the topology tests: a PgBouncer factory in front of the session's PostgreSQL.

The Patroni cluster is no fixture here: it is started by the one test module that uses it, which
keeps its own start-up cost out of every other test's way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
