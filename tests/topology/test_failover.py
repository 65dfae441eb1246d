"""A sidecar on a Patroni cluster's multi-host DSN, written to without a pause, through a
switchover and then a crash of the leader.

The sidecar is never restarted. New pooled connections find the node that takes writes
(`target_session_attrs=read-write`); the old ones fail (a demoted primary shuts down, a killed
one is gone) and are replaced, or, still open to a server in recovery, are expired by the 25006
they meet. While no node takes writes the breaker opens and writes are journaled; the journal
drains into the new primary. The replica's LISTEN reconnects to the new primary and catches up.

The cluster replicates asynchronously (Patroni's default): a crash of the leader may lose what
it acknowledged last. The sidecar's failover guard keeps those writes until a standby has flushed
them and applies again, through the ledger, the ones the new primary lacks.

What is checked: every write acknowledged (201, or 202 and journaled) is in PostgreSQL after the
journal drains, once (its op id has one ledger row and one audit row), writes commit again within
15 s of the new leader running, the replica follows a change made on the new primary, and the
breaker is closed again. Readers run throughout; what they were answered is reported. About 60 s,
most of it the crash's takeover (Patroni's ttl).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import pytest

from proxy.app import REPLICA
from proxy.http import keys
from tests.conftest import Api, AppFactory, agent_body, app_of, eventually
from tests.topology.fast_breaker import FAILOVER_BREAKER
from tests.topology.patroni import PatroniCluster
from tests.topology.stored import stored

WRITERS = 3


@dataclass
class Ledger:
    """What the writers were told, by Idempotency-Key (the write's op id)."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    other: dict[int, int] = field(default_factory=dict)
    committed_at: list[float] = field(default_factory=list)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch between `start` and `end` in which no write was committed."""
        times = [start, *(t for t in self.committed_at if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


async def _write_forever(api: Api, writer: int, ledger: Ledger, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        agent_id = f"w{writer}-{n}"
        n += 1
        try:
            status, _, _ = await api.call(
                "POST", "/v1/agents", agent_body(agent_id), {"Idempotency-Key": agent_id}
            )
        except OSError:
            status = 0
        if status in (201, 202):
            ledger.acknowledged[agent_id] = status
            if status == 201:
                ledger.committed_at.append(time.monotonic())
        else:
            ledger.other[status] = ledger.other.get(status, 0) + 1
        await asyncio.sleep(0.1)


async def _read_forever(
    api: Api, ledger: Ledger, answers: dict[int, int], stop: asyncio.Event
) -> None:
    """Read back acknowledged agents, newest first, counting the answers."""
    while not stop.is_set():
        for agent_id in list(ledger.acknowledged)[-5:]:
            try:
                status, _, _ = await api.call("GET", f"/v1/agents/{agent_id}")
            except OSError:
                status = 0
            answers[status] = answers.get(status, 0) + 1
        await asyncio.sleep(0.05)


async def _committed_again(ledger: Ledger, since: float, timeout: float) -> None:
    """Until a write is committed (201) after `since`."""
    await eventually(
        lambda: bool(ledger.committed_at) and ledger.committed_at[-1] > since,
        timeout=timeout,
        message="a write committed",
    )


async def _replica_follows(api: Api, cluster: PatroniCluster, leader: str, agent_id: str) -> None:
    """A change made on the leader itself reaches the sidecar's replica (through LISTEN)."""
    replica = app_of(api)[REPLICA]
    assert replica is not None
    tenant = next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))
    name = f"renamed on {leader} {uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(cluster.node_dsn(leader), timeout=10)
    try:
        updated = await conn.execute(
            "UPDATE agents SET name = $3, version = nextval('agent_version_seq') "
            "WHERE tenant_id = $1 AND agent_id = $2",
            tenant,
            agent_id,
            name,
        )
        assert updated == "UPDATE 1"
    finally:
        await conn.close()

    def renamed() -> bool:
        rec = replica.get(tenant, agent_id)
        return rec is not None and rec.name == name

    await eventually(renamed, timeout=10, message=f"the replica saw the change on {leader}")


@pytest.mark.slow
async def test_writes_survive_a_switchover_and_a_crash_of_the_leader(
    make_api: AppFactory,
) -> None:
    async with PatroniCluster(synchronous=False) as cluster:
        api = await make_api(
            cluster.dsn, breaker=FAILOVER_BREAKER, database={"connect_timeout_ms": 2000}
        )
        ledger = Ledger()
        stop = asyncio.Event()
        reads: dict[int, int] = {}
        writers = [
            asyncio.create_task(_write_forever(api, i, ledger, stop)) for i in range(WRITERS)
        ]
        writers.append(asyncio.create_task(_read_forever(api, ledger, reads, stop)))
        figures: dict[str, float] = {}
        try:
            await _committed_again(ledger, 0.0, 10)

            started = time.monotonic()
            old = await cluster.leader()
            new = await cluster.switchover()
            figures["switchover_s"] = time.monotonic() - started
            await _committed_again(ledger, time.monotonic(), 30)
            figures["no_commit_at_switchover_s"] = ledger.longest_gap(started, time.monotonic())
            assert new != old and new is not None
            await _replica_follows(api, cluster, new, "w0-0")

            started = time.monotonic()
            _, survivor, figures["takeover_s"] = await cluster.kill_leader()
            elected = time.monotonic()
            await _committed_again(ledger, elected, 60)
            figures["first_commit_after_election_s"] = ledger.committed_at[-1] - elected
            figures["no_commit_at_crash_s"] = ledger.longest_gap(started, time.monotonic())
            await _replica_follows(api, cluster, survivor, "w1-0")
        finally:
            stop.set()
            await asyncio.gather(*writers)

        service = app_of(api)[keys.SERVICE]

        def drained() -> bool:
            assert service.journal is not None
            return service.journal.depth == 0 and service.breaker.state.value == "closed"

        await eventually(drained, timeout=30, message="the journal drained, the breaker closed")
        journaled = sum(1 for status in ledger.acknowledged.values() if status == 202)

        tenant = next(t for t in app_of(api)[keys.TOKENS].tenants() if t.startswith("t-"))
        rows = await stored(cluster.node_dsn(survivor), tenant)

        acknowledged = set(ledger.acknowledged)
        assert acknowledged <= rows.agents, f"lost: {sorted(acknowledged - rows.agents)[:10]}"
        for op_id in acknowledged:
            assert rows.ledger.get(op_id) == ("applied", 1), (op_id, rows.ledger.get(op_id))
            assert rows.applied.get(op_id) == 1, (op_id, rows.applied.get(op_id))
        # Anything applied that the writers were not told about was at least not applied twice.
        assert all(n == 1 for n in rows.applied.values())
        assert service.breaker.state.value == "closed"
        assert figures["first_commit_after_election_s"] < 15, figures
        assert 500 not in reads, reads
        replica = app_of(api)[REPLICA]
        assert replica is not None and replica.connected
        print(
            f"\nfailover figures: { {k: round(v, 2) for k, v in figures.items()} }; "
            f"acknowledged {len(acknowledged)} "
            f"({journaled} journaled), other answers {ledger.other}; reads {reads}; "
            f"failover guard {service.guard.status() if service.guard is not None else None}"
        )
        assert journaled > 0, "the crash never reached the journal: nothing was tested"
