"""What the replica shows of an agent while the replay settles its journaled writes in pieces.

A replay batch that fails after it was sent leaves its agents held: PostgreSQL may have
committed it, so rows from there wait in a buffer and the journaled writes stay in the overlay.
A later batch may settle only some of those writes (writes waiting for other agents fill part of
it). Those must stay shown until the hold ends, since the base row under them is still the one
from before. The batches' outcomes are scripted here; the journal, the replica and the replay's
bookkeeping are the real ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from proxy.resilience import CircuitBreaker
from proxy.service.backlog import Backlog
from proxy.service.context import ServiceHooks
from proxy.service.database_call import DatabaseCall, DatabaseUnavailable
from proxy.service.replay import Replay
from proxy.settings import Settings
from proxy.store.db import Database
from proxy.store.journal import Journal, JournalEntry, OpStatus
from proxy.store.replica import Replica
from tests.unit.test_replica_overlay import NOW, T, base, count


class ScriptedCall:
    """Answers each replay batch with the next outcome given: a failure, or what
    `apply_batch` returns for the entries it applied."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def applied(entries: list[JournalEntry], task_count: int, version: int) -> Any:
    """A batch that applied `entries`; the agent's row at its commit."""
    return (
        [(entry, OpStatus.APPLIED, None, None) for entry in entries],
        [base(version, task_count)],
        None,
    )


async def _setup(
    tmp_path: Path, posts: int
) -> tuple[Replay, ScriptedCall, Replica, Journal, list[JournalEntry], Callable[[], int]]:
    journal = await Journal.open(tmp_path / "journal", fsync=False)
    rep = Replica()
    rep.replace_all([T], [base(10, 0)])
    backlog = Backlog(rep)
    entries = []
    for n in range(posts):
        body = {"event_id": f"e{n}", "success": True, "quality_score": 0.5, "latency_ms": 1}
        entry = await journal.append(
            op_id=f"{T}/op{n}",
            kind="performance",
            tenant=T,
            key="a",
            payload={
                "payload": {"agent_id": "a", "body": body},
                "hash": "",
                "received_at": NOW.isoformat(),
            },
        )
        backlog.show(entry)
        entries.append(entry)
    call = ScriptedCall()
    settings = Settings(
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        tokens=SecretStr("[]"),
        journal={"dir": tmp_path / "journal"},
    )
    replay = Replay(
        settings=settings,
        database=cast(Database, None),
        breaker=CircuitBreaker("db"),
        replica=rep,
        journal=journal,
        hooks=ServiceHooks(),
        call=cast(DatabaseCall, call),
        backlog=backlog,
        drained=lambda: None,
    )
    return replay, call, rep, journal, entries, lambda: count(rep)


async def test_writes_settled_while_their_agent_is_held_stay_shown_until_the_hold_ends(
    tmp_path: Path,
) -> None:
    replay, call, rep, journal, entries, shown = await _setup(tmp_path, 4)
    try:
        assert shown() == 4
        # The first batch's connection died after it was sent: nothing known, all still shown.
        call.outcomes.append(DatabaseUnavailable("connection lost", 1.0, sent=True))
        assert await replay._lane(entries) == (0, True)
        assert shown() == 4 and rep.pending_count(T) == 4

        # It had not committed; a smaller batch now applies the first two. The agent stays held
        # for the other two, so the row PostgreSQL sent (two events) waits in the buffer, and
        # the two settled writes must still be shown on the old base.
        call.outcomes.append(applied(entries[:2], task_count=2, version=12))
        assert await replay._lane(entries[:2]) == (2, False)
        assert journal.depth == 2
        assert shown() == 4

        # The rest settles: the hold ends, the base is PostgreSQL's row, the overlay is empty.
        call.outcomes.append(applied(entries[2:], task_count=4, version=13))
        assert await replay._lane(entries[2:]) == (2, False)
        assert shown() == 4
        assert rep.pending_count(T) == 0 and not rep.has_pending(T, "a")
        assert journal.depth == 0
    finally:
        await journal.close()


async def test_writes_settled_with_no_batch_of_unknown_fate_leave_the_overlay_at_once(
    tmp_path: Path,
) -> None:
    replay, call, rep, journal, entries, shown = await _setup(tmp_path, 3)
    try:
        call.outcomes.append(applied(entries[:2], task_count=2, version=12))
        assert await replay._lane(entries[:2]) == (2, False)
        assert rep.pending_count(T) == 1
        assert shown() == 3
    finally:
        await journal.close()
