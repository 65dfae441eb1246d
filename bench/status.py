"""The sidecar's own account of its state (``/v1/status``), as the harness reads it.

Every run waits on it (the breaker open or closed, the replica loaded, the journal drained) and
records from it, instead of inferring the sidecar's state from the answers it gives.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.client import http
from bench.servers import Server


async def status_of(server: Server, token: str) -> dict[str, Any]:
    status, body = await http(server.url + "/v1/status", token=token)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"{server.name} /v1/status: {status} {body}")
    return body


def transitions_since(doc: dict[str, Any], since: float) -> list[str]:
    """Breaker transitions at or after wall time `since` (the status keeps a bounded history)."""
    return [
        f"{t['from']}->{t['to']} ({t.get('cause', '')})"
        for t in doc["breaker"].get("transitions", [])
        if t["at"] >= since
    ]


def breaker_summary(doc: dict[str, Any], since: float) -> dict[str, Any]:
    return {
        "state": doc["breaker"]["state"],
        "transitions_during_step": transitions_since(doc, since),
        "replica_agents": doc["replica"]["agents"],
        "replica_age_seconds": doc["replica"]["age_seconds"],
    }


async def full_status(server: Server, token: str) -> dict[str, Any] | None:
    try:
        status, body = await http(server.url + "/v1/status", token=token, timeout_s=5.0)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def compact_status(doc: dict[str, Any]) -> dict[str, Any]:
    overload = doc.get("overload") or {}
    bulkhead = overload.get("bulkhead") or {}
    lag = overload.get("loop_lag") or {}
    breaker = doc.get("breaker") or {}
    return {
        "breaker": breaker.get("state"),
        "journal_depth": (doc.get("journal") or {}).get("depth"),
        "in_use": bulkhead.get("in_use"),
        "queued": bulkhead.get("queued"),
        "shed_total": sum((bulkhead.get("shed_total") or {}).values()),
        "max_wait_s": bulkhead.get("max_wait_seconds"),
        "lag_ms": lag.get("last_ms"),
        "lag_max_ms": lag.get("max_ms"),
        "shedding": lag.get("shedding"),
        "backlog_waiters": overload.get("backlog_waiters"),
        "replay": {k: v for k, v in (doc.get("replay") or {}).items() if isinstance(v, int)},
        "pool_in_use": (doc.get("pool") or {}).get("in_use"),
    }


async def wait_replica(server: Server, token: str, agents: int, timeout_s: float) -> None:
    """Until the sidecar's replica holds `agents` agents (bounded by `timeout_s`)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        doc = await full_status(server, token)
        if doc and (doc.get("replica") or {}).get("agents", 0) >= agents:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(
        f"{server.name}: the replica did not hold the {agents} seeded agents in {timeout_s}s"
    )


async def wait_drained(
    server: Server, token: str, timeout_s: float, every_s: float = 0.2
) -> tuple[bool, float]:
    """Until the breaker is closed and the journal empty: whether that came within `timeout_s`,
    and the seconds waited."""
    started = time.monotonic()
    end = started + timeout_s
    while time.monotonic() < end:
        doc = await full_status(server, token)
        if doc and doc["breaker"]["state"] == "closed" and doc["journal"]["depth"] == 0:
            return True, round(time.monotonic() - started, 2)
        await asyncio.sleep(every_s)
    return False, round(time.monotonic() - started, 2)
