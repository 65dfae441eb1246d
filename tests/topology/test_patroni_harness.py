"""The Patroni harness works: a two-node cluster on etcd that fails over, on purpose or not.

Also pinned here, for the sidecar's coming failover handling: asyncpg takes libpq's multi-host
DSN with target_session_attrs=read-write, and a new connection through the same DSN reaches the
new leader after a switchover and after a crash of the old one, whichever host is listed first.
The crash's takeover time is bounded by Patroni's ttl (20 s at its minimum). One cluster
serves the whole story (a start costs seconds): the scenario runs in order and ends with
synchronous mode switched on. About 40 s.
"""

from __future__ import annotations

import shutil
import time

import asyncpg
import pytest

from tests.topology.patroni import PatroniCluster
from tests.topology.support import wait_until

# A leader that dies without a word keeps its key for the ttl (20 s); then the replica needs a
# loop or two (1 s each) to take the key and promote.
TAKEOVER_BOUND_S = 30


async def write_through(cluster: PatroniCluster, n: int) -> int:
    """Insert row `n` through the multi-host DSN; return the port of the server that took it."""
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        await conn.execute("CREATE TABLE IF NOT EXISTS topology (n int PRIMARY KEY)")
        await conn.execute("INSERT INTO topology VALUES ($1)", n)
        return int(await conn.fetchval("SELECT current_setting('port')"))
    finally:
        await conn.close()


async def rows_on(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [r["n"] for r in await conn.fetch("SELECT n FROM topology ORDER BY n")]
    finally:
        await conn.close()


async def wait_replicated(cluster: PatroniCluster, name: str, rows: list[int]) -> None:
    async def caught_up() -> bool:
        return await rows_on(cluster.node_dsn(name)) == rows

    await wait_until(
        f"{name} replaying {rows}",
        caught_up,
        20,
        ignore=(OSError, asyncpg.PostgresError),
        details=cluster.logs,
    )


@pytest.mark.slow
async def test_writes_follow_the_leader_through_switchover_and_crash() -> None:
    async with PatroniCluster() as cluster:
        first = await cluster.leader()
        assert first is not None
        (replica,) = (node.name for node in cluster.nodes if node.name != first)

        # Written through the multi-host DSN, read back, streamed to the replica.
        assert await write_through(cluster, 1) == cluster.node(first).pg_port
        assert await rows_on(cluster.dsn) == [1]
        await wait_replicated(cluster, replica, [1])

        # Patroni's figure comes from what each node last wrote to etcd: polled, not read once.
        async def no_lag() -> bool:
            return await cluster.replication_lag() == {replica: 0}

        await wait_until("no replication lag", no_lag, 10, details=cluster.logs)

        # A switchover: the same DSN, a new connection, the new leader, whatever comes first
        # in the host list (the old leader is now a replica that refuses writes).
        second = await cluster.switchover()
        assert second == replica
        assert await write_through(cluster, 2) == cluster.node(second).pg_port
        assert await rows_on(cluster.dsn) == [1, 2]
        await wait_replicated(cluster, first, [1, 2])

        # A crash of the leader: its node is gone; the other takes over within the bound.
        started = time.monotonic()
        dead, third, takeover_s = await cluster.kill_leader(timeout=TAKEOVER_BOUND_S)
        assert (dead, third) == (second, first)
        assert takeover_s < TAKEOVER_BOUND_S
        assert await write_through(cluster, 3) == cluster.node(third).pg_port
        assert await rows_on(cluster.dsn) == [1, 2, 3]
        # The dead node listed first: its refused connection is passed over as well.
        assert await rows_on(cluster.multi_host_dsn([dead, third])) == [1, 2, 3]
        assert time.monotonic() - started < TAKEOVER_BOUND_S + 10

        # The crashed node comes back as a replica of the new leader (pg_rewind if needed).
        cluster.restart(dead)
        assert await cluster.wait_healthy(timeout=30) == third
        await wait_replicated(cluster, dead, [1, 2, 3])

        # Synchronous mode, turned on in the running cluster: the replica becomes the
        # leader's synchronous standby, which PostgreSQL itself confirms.
        await cluster.set_synchronous_mode(True)
        members = {m["name"]: m for m in await cluster.members()}
        assert members[dead]["role"] == "sync_standby"

        async def synchronous() -> bool:
            conn = await asyncpg.connect(cluster.dsn, timeout=10)
            try:
                states = await conn.fetch(
                    "SELECT application_name, sync_state FROM pg_stat_replication"
                )
            finally:
                await conn.close()
            return [(r["application_name"], r["sync_state"]) for r in states] == [(dead, "sync")]

        await wait_until("the standby replicating synchronously", synchronous, 10)
        assert await write_through(cluster, 4) == cluster.node(third).pg_port


def test_synchronous_mode_is_part_of_the_bootstrap_configuration() -> None:
    cluster = PatroniCluster(synchronous=True)
    try:
        dcs = cluster._config(cluster.nodes[0])["bootstrap"]["dcs"]
        assert dcs["synchronous_mode"] is True
        assert dcs["ttl"] == 20
    finally:
        shutil.rmtree(cluster.root)
