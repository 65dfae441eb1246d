"""Get by id decides "replica now, or PostgreSQL?" in one pass (`Reads.get_agent_at_once`); the
query and the stats take the long way (`_replica_first`, then `_replica_during_outage`). Both
must give the same answer, the same problem and the same metrics in every state of the replica,
the read mode and the breaker; and where `Reads.may_answer_at_once` says no, the first must give
None."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr

from proxy.resilience import CircuitBreaker, Deadline, FakeClock
from proxy.service.context import UNREACHABLE, RequestContext, ServiceHooks
from proxy.service.database_call import DatabaseCall
from proxy.service.reads import Reads
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.replica import Replica
from tests.unit.test_replica_overlay import T, base, post

REPLICAS = ("none", "cold", "other-tenant", "holds-tenant")


def _replica(kind: str, clock: FakeClock, *, pending: bool, connected: bool) -> Replica | None:
    if kind == "none":
        return None
    rep = Replica(clock=clock)
    if kind == "cold":
        return rep
    if kind == "holds-tenant":
        rep.replace_all([T], [base(10)])
    else:
        rep.replace_all(["other"], [])
    rep.connected = connected
    rep.touch()
    if pending and kind == "holds-tenant":
        rep.add_pending(T, "a", post("op1", "e1"))
    return rep


def _reads(
    tmp_path: Path, rep: Replica | None, *, replica_mode: bool, refusing: bool, clock: FakeClock
) -> tuple[Reads, list[tuple[str, str, float]]]:
    settings = Settings(
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        tokens=SecretStr("[]"),
        journal={"dir": tmp_path / "journal"},
        read_mode="replica" if replica_mode else "database",
    )
    calls: list[tuple[str, str, float]] = []
    # Both hooks record into one list: the metrics make the same sample of either.
    hooks = ServiceHooks(
        db_call=lambda op, outcome, s: calls.append((op, outcome, s)),
        db_refused=lambda op: calls.append((op, "rejected", 0.0)),
    )
    breaker = CircuitBreaker("db", failure_threshold=1, open_base_s=60.0, clock=clock)
    if refusing:
        breaker.force_open("test")
    call = DatabaseCall(
        settings=settings,
        database=cast(Database, object()),
        breaker=breaker,
        budget=None,
        hooks=hooks,
        bulkhead=None,
        lag=None,
    )
    return Reads(settings=settings, replica=rep, journal=None, hooks=hooks, call=call), calls


def _long_way(reads: Reads, ctx: RequestContext, agent_id: str) -> Any:
    reason = reads._replica_first(ctx.tenant, agent_id)
    if reason is not None:
        rep = reads._replica
        assert rep is not None
    else:
        found = reads._replica_during_outage(ctx, "get_agent")
        if found is None:
            return None
        rep, reason = found, UNREACHABLE
    return reads._agent_from_replica(rep, ctx, agent_id, None, reason)


def _outcome(read: Callable[[], Any]) -> Any:
    try:
        answer = read()
    except Exception as exc:  # noqa: BLE001 - the problem raised is part of the outcome
        return type(exc).__name__, str(exc)
    if answer is None:
        return None
    return answer.status, answer.source, answer.headers, answer.body


@pytest.mark.parametrize(
    ("kind", "pending", "connected", "replica_mode", "refusing"),
    [
        (kind, *flags)
        for kind, flags in itertools.product(REPLICAS, itertools.product((False, True), repeat=4))
    ],
)
def test_get_by_id_decides_as_the_long_way_does(
    tmp_path: Path, kind: str, pending: bool, connected: bool, replica_mode: bool, refusing: bool
) -> None:
    outcomes, metrics = [], []
    foretold = None
    for way in ("at once", "long"):
        clock = FakeClock()
        rep = _replica(kind, clock, pending=pending, connected=connected)
        reads, calls = _reads(
            tmp_path, rep, replica_mode=replica_mode, refusing=refusing, clock=clock
        )
        ctx = RequestContext(tenant=T, actor="t", request_id="r", deadline=Deadline.after(5))
        if way == "at once":
            foretold = reads.may_answer_at_once()
            assert calls == []  # foretelling records nothing
        read = reads.get_agent_at_once if way == "at once" else partial(_long_way, reads)
        outcomes.append(_outcome(partial(read, ctx, "a")))
        metrics.append(calls)
    assert outcomes[0] == outcomes[1]
    assert metrics[0] == metrics[1]
    # May foretell an answer where there is none; never none where there is one.
    assert foretold or outcomes[0] is None
    # The table has every kind of outcome in it, not only "ask PostgreSQL".
    if kind == "holds-tenant" and refusing:
        assert outcomes[0] is not None and outcomes[0][1] == "replica"
    if kind != "holds-tenant" and refusing:
        assert outcomes[0][0] == "Unavailable"
    if not refusing and not pending and not (replica_mode and connected):
        assert outcomes[0] is None
