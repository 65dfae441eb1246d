"""The sidecar as a real process: SIGKILL mid-outage, SIGTERM drain, start before PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from proxy.store.embedded import EmbeddedPostgres, free_port
from proxy.store.journal import Journal
from tests.conftest import Tokens, agent_body, eventually
from tests.sidecar import SidecarProcess, request

FAST = {
    "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD": "3",
    "REGISTRY_PROXY_BREAKER__OPEN_BASE_MS": "200",
    "REGISTRY_PROXY_BREAKER__OPEN_MAX_MS": "1000",
    "REGISTRY_PROXY_BREAKER__PROBE_INTERVAL_MS": "50",
    "REGISTRY_PROXY_BREAKER__HALF_OPEN_SUCCESSES": "2",
    "REGISTRY_PROXY_REQUEST__DEFAULT_TIMEOUT_MS": "500",
}


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.cleanup()


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.kill()


def _sidecar(
    sidecars: list[SidecarProcess],
    dsn: str,
    tokens: Tokens,
    tmp_path: Path,
    name: str,
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    s = SidecarProcess(
        dsn=dsn,
        tokens_json=tokens.spec(),
        journal_dir=tmp_path / "journal",
        log_path=tmp_path / f"{name}.log",
        env={**FAST, **(env or {})},
    )
    sidecars.append(s)
    s.start()
    return s


async def test_sigkill_mid_outage_then_restart_serves_snapshot_and_applies_journal(
    own_pg: EmbeddedPostgres, tokens: Tokens, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    first = _sidecar(sidecars, own_pg.dsn, tokens, tmp_path, "first")
    await first.wait_ready()
    w = tokens.writer
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            st, body, _ = await request(s, "POST", f"{first.url}/v1/agents", w, agent_body(f"k{i}"))
            assert st == 201, body

        async def replica_has_them() -> bool:
            st, body, _ = await request(s, "GET", f"{first.url}/v1/status", w)
            return bool(body["replica"]["agents"] == 3)

        await eventually(replica_has_them, timeout=10, message="replica loaded")
        await asyncio.to_thread(own_pg.stop)
        journaled: list[str] = []
        st, body, _ = await request(s, "POST", f"{first.url}/v1/agents", w, agent_body("late"))
        assert st == 202, body
        journaled.append(body["op_id"])
        for i in range(5):
            st, body, _ = await request(
                s,
                "POST",
                f"{first.url}/v1/agents/k0/performance",
                w,
                {"event_id": f"e{i}", "success": True, "quality_score": 0.8, "latency_ms": 3},
            )
            assert st == 202, body
            journaled.append(body["op_id"])

        async def snapshot_written() -> bool:
            return (tmp_path / "journal" / "replica.snapshot").exists()

        await eventually(snapshot_written, timeout=10, message="snapshot written on open")
        first.kill()

        second = _sidecar(sidecars, own_pg.dsn, tokens, tmp_path, "second")
        await second.wait_healthy()
        for agent_id in ("k1", "k2", "late"):
            st, body, headers = await request(s, "GET", f"{second.url}/v1/agents/{agent_id}", w)
            assert st == 200, (agent_id, body)
            assert headers["X-Registry-Source"] == "replica"
            assert "Age" in headers
        st, body, _ = await request(s, "GET", f"{second.url}/v1/agents/k0", w)
        assert body["performance"]["task_count"] == 5
        st, body, _ = await request(s, "GET", f"{second.url}/v1/operations/{journaled[0]}", w)
        assert st == 200 and body["status"] == "pending"

        await asyncio.to_thread(own_pg.start)

        async def drained() -> bool:
            st, body, _ = await request(s, "GET", f"{second.url}/v1/status", w)
            return bool(body["journal"]["depth"] == 0 and body["breaker"]["state"] == "closed")

        await eventually(drained, timeout=30, message="journal drained after restart")
        for op_id in journaled:
            st, body, _ = await request(s, "GET", f"{second.url}/v1/operations/{op_id}", w)
            assert body["status"] == "applied", body

    conn = await asyncpg.connect(own_pg.dsn)
    try:
        row = await conn.fetchrow(
            "SELECT task_count, success_count FROM agents WHERE tenant_id = $1 AND agent_id = 'k0'",
            tokens.tenant,
        )
        assert row["task_count"] == 5 and row["success_count"] == 5
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM agents WHERE tenant_id = $1 AND deleted_at IS NULL",
                tokens.tenant,
            )
            == 4
        )
    finally:
        await conn.close()


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    own_pg: EmbeddedPostgres, tokens: Tokens, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    drain_s = 5.0
    proc = _sidecar(
        sidecars,
        own_pg.dsn,
        tokens,
        tmp_path,
        "drain",
        env={
            "REGISTRY_PROXY_REQUEST__DRAIN_TIMEOUT_S": str(drain_s),
            "REGISTRY_PROXY_REQUEST__DEFAULT_TIMEOUT_MS": "10000",
            "REGISTRY_PROXY_DATABASE__ACQUIRE_TIMEOUT_MS": "10000",
            "REGISTRY_PROXY_DATABASE__POOL_MAX_SIZE": "20",
        },
    )
    await proc.wait_ready()
    w = tokens.writer
    async with aiohttp.ClientSession() as s:
        st, body, _ = await request(s, "POST", f"{proc.url}/v1/agents", w, agent_body("busy"))
        assert st == 201, body
        # Hold the agent's row so the load updates below stay in flight until we let go.
        blocker = await asyncpg.connect(own_pg.dsn)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND agent_id = 'busy' FOR UPDATE",
            tokens.tenant,
        )
        in_flight = [
            asyncio.create_task(
                request(
                    s,
                    "PUT",
                    f"{proc.url}/v1/agents/busy/load",
                    w,
                    {
                        "active_tasks": i,
                        "queued_tasks": 0,
                        "observed_at": f"2026-01-01T00:00:{i:02d}+00:00",
                    },
                )
            )
            for i in range(10)
        ]

        # pg_stat_activity is frozen for the length of a transaction: ask from outside it.
        watcher = await asyncpg.connect(own_pg.dsn)

        async def all_waiting() -> bool:
            n = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%registry_write_v2(''load''%'"
            )
            return bool(n >= 10)

        await eventually(all_waiting, timeout=10, message="requests blocked on the row")
        await watcher.close()
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the sidecar must keep them, not drop them, while draining
        await tx.rollback()
        await blocker.close()
        results = await asyncio.gather(*in_flight)
        assert [r[0] for r in results] == [200] * 10, results
        code = await asyncio.to_thread(proc.wait_exit, drain_s + 5)
        assert code == 0, proc.log()
        assert time.monotonic() - started < drain_s + 2
    journal = await Journal.open(tmp_path / "journal")
    try:
        stats = journal.stats()
        assert stats["depth"] == 0
        assert stats["torn_records_dropped"] == 0
    finally:
        await journal.close()


async def test_starts_before_postgres_exists_and_becomes_ready_without_restart(
    tokens: Tokens, tmp_path: Path, sidecars: list[SidecarProcess]
) -> None:
    port = free_port()
    pg = EmbeddedPostgres(port=port)
    dsn = pg.dsn
    proc = _sidecar(sidecars, dsn, tokens, tmp_path, "early")
    try:
        await proc.wait_healthy()
        async with aiohttp.ClientSession() as s:
            async with s.get(proc.url + "/readyz") as r:
                assert r.status == 503
            st, body, _ = await request(s, "GET", f"{proc.url}/v1/agents/none", tokens.reader)
            assert st == 503 and "Retry-After" in _
            await asyncio.to_thread(pg.start)
            started = time.monotonic()
            await proc.wait_ready(timeout=15)
            assert time.monotonic() - started < 10
            st, body, _ = await request(
                s, "POST", f"{proc.url}/v1/agents", tokens.writer, agent_body(uuid.uuid4().hex)
            )
            assert st in (201, 202), body
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        pg.cleanup()
