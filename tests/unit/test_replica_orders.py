"""The replica's capability query walks one of the orders it keeps (the task type's, or a
language's within it, whichever is shorter) and must answer exactly what ranking every agent
would: checked against a plain filter-and-sort over many changes and queries. An order is built
the first time a query walks it and kept in step from then on, so the checks also ask for each
order first at a different point of the changes."""

from __future__ import annotations

import random
from datetime import timedelta

from proxy.registry.agent import AgentRecord
from proxy.registry.matching import matches, sort_key
from proxy.registry.models import AgentQuery
from proxy.store.replica import Replica
from tests.unit.test_replica_overlay import T, base

TASKS = ("code", "review", "test")
LANGS = ("python", "go", "rust", "sql")
SECOND = timedelta(seconds=1)


def test_the_query_answers_what_ranking_every_agent_would() -> None:
    rng = random.Random(5)
    rep = Replica()
    template = base(1)
    records = {}
    version = 1
    for n in range(120):
        version += 1
        records[n] = template.evolve(
            agent_id=f"a{n:03d}",
            version=version,
            task_types=tuple(rng.sample(TASKS, rng.randint(1, 3))),
            languages=tuple(rng.sample(LANGS, rng.randint(1, 3))),
            task_count=rng.randint(0, 20),
            active_tasks=rng.randint(0, 4),
        )
    rep.replace_all([T], list(records.values()))
    for step in range(400):
        n = rng.randrange(len(records))
        version += 1
        change = rng.choice(("beat", "score", "capabilities"))
        rec = records[n]
        if change == "score":
            rec = rec.evolve(version=version, task_count=rec.task_count + 1, success_count=1)
        elif change == "capabilities":
            rec = rec.evolve(version=version, languages=tuple(rng.sample(LANGS, 2)))
        else:
            rec = rec.evolve(version=version, last_heartbeat_at=rec.last_heartbeat_at + SECOND)
        records[n] = rec
        rep.upsert(rec)
        if step % 20:
            continue
        for task in (None, *TASKS):
            for langs in ([], ["python"], ["go", "sql"], ["rust"]):
                q = AgentQuery(task_type=task, languages=langs, limit=7)
                expected = sorted((r for r in records.values() if matches(r, q)), key=sort_key)
                got = rep.query(T, q)
                assert [r.agent_id for r in got] == [r.agent_id for r in expected[:7]], (
                    task,
                    langs,
                )


def _expected(records: dict[int, AgentRecord], q: AgentQuery) -> list[str]:
    live = (r for r in records.values() if r.deleted_at is None and matches(r, q))
    return [r.agent_id for r in sorted(live, key=sort_key)[: q.limit]]


def test_orders_built_at_any_point_answer_as_ranking_every_agent_would() -> None:
    rng = random.Random(11)
    rep = Replica()
    template = base(1)
    version = 1
    records: dict[int, AgentRecord] = {}
    shapes = [(task, langs) for task in (None, *TASKS) for langs in ([], ["go"], ["rust", "sql"])]
    rng.shuffle(shapes)
    for step in range(600):
        n = rng.randrange(60)
        version += 1
        old = records.get(n)
        if old is None or old.deleted_at is not None:
            rec = template.evolve(
                agent_id=f"a{n:03d}",
                version=version,
                task_types=tuple(rng.sample(TASKS, rng.randint(1, 2))),
                languages=tuple(rng.sample(LANGS, rng.randint(1, 2))),
                active_tasks=rng.randint(0, 4),
                deleted_at=None,
            )
        elif rng.random() < 0.2:
            rec = old.evolve(version=version, deleted_at=old.updated_at)
        else:
            rec = old.evolve(version=version, active_tasks=rng.randint(0, 4))
        records[n] = rec
        rep.upsert(rec)
        if step % 50 == 49:
            # One more shape asked for each time: the others' orders are not built yet.
            for task, langs in shapes[: step // 50 + 1]:
                q = AgentQuery(task_type=task, languages=langs, limit=5)
                assert [r.agent_id for r in rep.query(T, q)] == _expected(records, q)


def test_orders_are_built_only_for_what_queries_ask_and_kept_across_a_resync() -> None:
    rep = Replica()
    template = base(1)
    agents = [
        template.evolve(agent_id=f"a{n}", version=n + 2, task_types=("code",), languages=("go",))
        for n in range(10)
    ]
    for rec in agents:
        rep.upsert(rec)
    assert rep.count(T) == 10  # files the changes
    t = rep._tenants[T]
    assert t.ranked == {} and t.sizes[("code", "go")] == 10
    q = AgentQuery(task_type="code", languages=["go"], limit=3)
    assert len(rep.query(T, q)) == 3
    # Of two orders as long, the task type's is walked; the other is not built.
    assert list(t.ranked) == ["code"]
    # A language no agent speaks builds nothing and answers nothing.
    assert rep.query(T, AgentQuery(task_type="code", languages=["cobol"])) == []
    assert list(t.ranked) == ["code"]
    rep.replace_all([T], agents[:4])
    t = rep._tenants[T]
    assert list(t.ranked) == ["code"] and len(t.ranked["code"]) == 4
    # The last agent of an order gone, the order is forgotten with its count.
    for rec in agents[:4]:
        rep.upsert(rec.evolve(version=rec.version + 100, deleted_at=rec.updated_at))
    rep.query(T, AgentQuery())
    assert t.ranked == {} and t.sizes == {}
