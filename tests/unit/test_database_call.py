"""What a database call reports when it gets no answer: the reason, and whether a write may have
reached PostgreSQL. The connections here are scripted (each attempt's outcome is given), since
the rule under test is the call's bookkeeping across attempts, not PostgreSQL's behaviour; the
chaos suite's history check drives the same path through real faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

from proxy.resilience import CircuitBreaker, Deadline
from proxy.resilience._bulkhead import Overloaded
from proxy.service.context import OVERLOAD, UNREACHABLE, ServiceHooks
from proxy.service.database_call import DatabaseCall, DatabaseUnavailable
from proxy.settings import Settings
from proxy.store.db import Database


class ScriptedDatabase:
    """Hands out a connection per attempt, or refuses it, in the order given."""

    def __init__(self, *refusals: BaseException | None) -> None:
        self._refusals = list(refusals)
        self.attempts = 0

    @asynccontextmanager
    async def connection(
        self, timeout: float | None = None, *, bounded: bool = False
    ) -> AsyncIterator[object]:
        refusal = self._refusals[self.attempts]
        self.attempts += 1
        if refusal is not None:
            raise refusal
        yield object()


def _call(tmp_path: Path, database: ScriptedDatabase) -> DatabaseCall:
    settings = Settings(
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        tokens=SecretStr("[]"),
        journal={"dir": tmp_path / "journal"},
        retry={"attempts": 2, "base_ms": 1, "max_ms": 1},
    )
    return DatabaseCall(
        settings=settings,
        database=cast(Database, database),
        breaker=CircuitBreaker("db", failure_threshold=10),
        budget=None,
        hooks=ServiceHooks(),
        bulkhead=None,
        lag=None,
    )


async def _lost_answer(conn: Any) -> None:
    # What a write whose COMMIT went out and whose answer never came back raises.
    raise ConnectionResetError("connection reset by peer")


async def test_a_retry_refused_for_capacity_after_an_attempt_reached_postgresql_is_not_nothing_done(
    tmp_path: Path,
) -> None:
    db = ScriptedDatabase(
        None, Overloaded("all database connections are busy", reason="queue-timeout")
    )
    with pytest.raises(DatabaseUnavailable) as raised:
        await _call(tmp_path, db).run(Deadline.after(5.0), "performance", _lost_answer)
    assert db.attempts == 2
    # The first attempt may have committed: a write's fate is unknown, never "overload".
    assert (raised.value.reason, raised.value.sent) == (UNREACHABLE, True)


async def test_capacity_refused_before_any_attempt_reached_postgresql_is_overload(
    tmp_path: Path,
) -> None:
    db = ScriptedDatabase(Overloaded("all database connections are busy", reason="queue-timeout"))
    with pytest.raises(DatabaseUnavailable) as raised:
        await _call(tmp_path, db).run(Deadline.after(5.0), "performance", _lost_answer)
    assert db.attempts == 1
    assert (raised.value.reason, raised.value.sent) == (OVERLOAD, False)


async def test_a_lost_answer_on_every_attempt_is_unreachable_and_sent(tmp_path: Path) -> None:
    db = ScriptedDatabase(None, None)
    with pytest.raises(DatabaseUnavailable) as raised:
        await _call(tmp_path, db).run(Deadline.after(5.0), "performance", _lost_answer)
    assert db.attempts == 2
    assert (raised.value.reason, raised.value.sent) == (UNREACHABLE, True)
