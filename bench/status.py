"""The sidecar's own account of its state (``/v1/status``), as the harness reads it.

Every run waits on it (the breaker open or closed, the replica loaded, the journal drained) and
records from it, instead of inferring the sidecar's state from the answers it gives.
"""

from __future__ import annotations

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
