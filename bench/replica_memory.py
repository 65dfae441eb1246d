"""The memory the sidecar's replica takes per agent, measured on records shaped like real rows.

The replica holds every agent of the tenant in the sidecar's memory, so its size per agent is
what sizing a sidecar starts from; the benchmark and the soak both report it (the benchmark from
a child process, ``python -m bench.soak --replica-memory N``).
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.dataset import LANGUAGES, READ_TENANT, SPECIALIZATIONS, TASK_TYPES

_MIB = 1024 * 1024


def _record(i: int, rng: random.Random, now: datetime) -> Any:
    """An AgentRecord built the way rows arrive from asyncpg: every string its own object."""
    from proxy.registry.agent import AgentRecord

    def fresh(s: str) -> str:
        return s.encode().decode()

    agent_id = f"agent-{i:06d}"
    return AgentRecord(
        tenant_id=fresh(READ_TENANT),
        agent_id=agent_id,
        name=f"Agent {agent_id}",
        model_family=fresh(rng.choice(("gpt", "claude", "llama"))),
        task_types=tuple(fresh(t) for t in rng.sample(TASK_TYPES, 2)),
        languages=tuple(fresh(t) for t in rng.sample(LANGUAGES, 2)),
        specializations=tuple(fresh(t) for t in rng.sample(SPECIALIZATIONS, 1)),
        max_concurrent_tasks=10,
        active_tasks=rng.randint(0, 10),
        queued_tasks=rng.randint(0, 3),
        load_observed_at=now - timedelta(seconds=i),
        registered_at=now - timedelta(seconds=i, microseconds=1),
        last_heartbeat_at=now - timedelta(seconds=i, microseconds=2),
        updated_at=now - timedelta(seconds=i, microseconds=3),
        version=i + 1,
        deleted_at=None,
        task_count=rng.randint(0, 10_000),
        success_count=rng.randint(0, 10_000),
        quality_sum=rng.random() * 1000,
        latency_ms_sum=rng.random() * 1e6,
        revision=1,
    )


def replica_memory(n: int) -> dict[str, Any]:
    """Memory of `n` agents in `proxy.store.replica.Replica`: RSS delta and tracemalloc."""
    import tracemalloc

    import psutil

    from proxy.store.replica import Replica

    proc = psutil.Process()
    now = datetime.now(UTC)
    gc.collect()
    rss0 = proc.memory_info().rss
    first = Replica(max_agents=n * 2)
    rng = random.Random(1)
    for i in range(n):
        first.upsert(_record(i, rng, now))
    gc.collect()
    rss = proc.memory_info().rss - rss0
    assert first.size == n

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    second = Replica(max_agents=n * 2)
    rng = random.Random(1)
    for i in range(n):
        second.upsert(_record(i, rng, now))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert second.size == n
    per10k = 10_000 / n
    return {
        "agents": n,
        "rss_bytes": rss,
        "tracemalloc_bytes": traced,
        "bytes_per_agent": round(traced / n),
        "rss_mib_per_10k": round(rss * per10k / _MIB, 2),
        "tracemalloc_mib_per_10k": round(traced * per10k / _MIB, 2),
        "record": "2 task types, 2 languages, 1 specialization, 4 timestamps, ids ~12 chars",
    }


def replica_memory_in_child(agents: int) -> dict[str, Any]:
    """:func:`replica_memory` of `agents`, measured in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--replica-memory", str(agents)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace")[-1000:]}
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def replica_memory_lines(mem: dict[str, Any]) -> list[str]:
    """The summary's line on the replica's memory; none when it was not measured."""
    if "rss_mib_per_10k" not in mem:
        return []
    return [
        f"replica memory per 10,000 agents: {mem['tracemalloc_mib_per_10k']} MiB "
        f"(tracemalloc), {mem['rss_mib_per_10k']} MiB (RSS)"
    ]
