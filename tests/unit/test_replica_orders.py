"""The replica's capability query walks one of the orders it keeps (the task type's, or a
language's within it, whichever is shorter) and must answer exactly what ranking every agent
would: checked against a plain filter-and-sort over many changes and queries."""

from __future__ import annotations

import random
from datetime import timedelta

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
