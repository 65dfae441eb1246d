"""PostgreSQL's score of an agent (`repository.reads._SCORE`) is `matching.score`, to the last bit.

The database path keeps only the agents that can rank in the top of a query by that score; the
order itself is decided in Python. Equality here is what the cutoff's margin does not rely on,
but a formula that drifted from `matching.score` would show first here."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import asyncpg

from proxy.registry import matching
from proxy.registry.agent import AgentRecord
from proxy.store.repository.reads import _SCORE

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_sql_score_is_the_python_score(db: asyncpg.Connection) -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(5000):
        tasks = rng.choice([0, 1, 2, 3, 7, 10, 99, rng.randrange(0, 10**6)])
        rows.append(
            (
                tasks,
                rng.randint(0, tasks),
                rng.uniform(0, tasks) if rng.random() < 0.7 else float(rng.randint(0, tasks)),
                rng.randrange(0, 50),
                rng.randrange(1, 40),
            )
        )
    got = await db.fetch(
        f"SELECT {_SCORE} AS score FROM unnest($1::bigint[], $2::bigint[], $3::float8[], "
        "$4::int[], $5::int[]) WITH ORDINALITY AS t(task_count, success_count, quality_sum, "
        "active_tasks, max_concurrent_tasks, n) ORDER BY n",
        *([r[i] for r in rows] for i in range(5)),
    )
    for (tasks, successes, quality, active, most), row in zip(rows, got, strict=True):
        rec = AgentRecord(
            "t", "a", "n", "m", (), (), (), most, active, 0, None, NOW, NOW, NOW, 1, None,
            tasks, successes, quality, 0.0, 1,
        )  # fmt: skip
        assert row["score"] == matching.score(rec), (tasks, successes, quality, active, most)
