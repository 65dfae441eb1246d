"""A write step's targets each find the database vacuumed, analysed and checkpointed."""

from __future__ import annotations

import asyncpg
import pytest

from bench.quiesce import WRITTEN_TABLES, quiesce

STATS = """
SELECT relname, vacuum_count, analyze_count, n_dead_tup
  FROM pg_stat_user_tables
 WHERE schemaname = current_schema() AND relname = ANY($1::text[])
"""


async def _stats(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return {r["relname"]: r for r in await conn.fetch(STATS, list(WRITTEN_TABLES))}


async def test_every_written_table_is_vacuumed_analysed_and_checkpointed(
    migrated_dsn: str,
) -> None:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("VACUUM of every table and CHECKPOINT need a superuser")
        # Dead row versions a target before would leave behind.
        await conn.execute(
            "INSERT INTO audit_log (tenant_id, actor, action, outcome)"
            " SELECT 'quiesce-test', 'test', 'noop', 'ok' FROM generate_series(1, 50);"
            "DELETE FROM audit_log WHERE tenant_id = 'quiesce-test'"
        )
        before = await _stats(conn)
        assert before["audit_log"]["n_dead_tup"] >= 50
        checkpoints = await conn.fetchval("SELECT num_requested FROM pg_stat_checkpointer")
        found = await quiesce(migrated_dsn)
        after = await _stats(conn)
        assert await conn.fetchval("SELECT num_requested FROM pg_stat_checkpointer") > checkpoints
    finally:
        await conn.close()
    assert set(after) == set(WRITTEN_TABLES)
    for table in WRITTEN_TABLES:
        assert after[table]["vacuum_count"] == before[table]["vacuum_count"] + 1, table
        assert after[table]["analyze_count"] == before[table]["analyze_count"] + 1, table
        assert after[table]["n_dead_tup"] == 0, table
    assert found["autovacuum_still_busy"] == 0
    assert found["seconds"] >= 0
