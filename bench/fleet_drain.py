"""Every sidecar of a fleet watched through an outage, until the last journal has drained.

The sidecars say themselves when they are back (``/v1/status``: the breaker closed, the journal
empty); asked with an admin token, the journal's depth covers every tenant. The fleet has
recovered when every sidecar is back at the same moment (one that drained and tripped again has
not), so that is the fleet's time; each sidecar's first times are kept too. Times count from the
moment PostgreSQL accepted connections again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.servers import Server
from bench.status import full_status


class DrainWatch:
    def __init__(self, servers: list[Server], token: str, every_s: float = 0.25) -> None:
        self.servers = servers
        self.token = token
        self.every_s = every_s
        self.back_at: float | None = None
        self.per: dict[str, dict[str, Any]] = {
            s.name: {
                "journal_peak": 0,
                "states": [],
                "closed_s": None,
                "drained_s": None,
                # Trips after PostgreSQL was back: the recovery's own trouble, not the outage.
                "reopened": 0,
            }
            for s in servers
        }
        self.total_peak = 0
        # The first poll at which every breaker was closed (and every journal empty) at once:
        # a sidecar that drained and then tripped again has not recovered.
        self.all_closed_s: float | None = None
        self.all_drained_s: float | None = None

    def postgres_back(self) -> None:
        self.back_at = time.monotonic()

    def _note(self, name: str, doc: dict[str, Any], since: float | None) -> None:
        mine = self.per[name]
        state = doc["breaker"]["state"]
        depth = (doc.get("journal") or {}).get("depth") or 0
        mine["journal_peak"] = max(mine["journal_peak"], depth)
        if mine["states"] and mine["states"][-1] != state:
            mine["reopened"] += since is not None and mine["states"][-1] == "closed"
        if not mine["states"] or mine["states"][-1] != state:
            mine["states"].append(state)
        if since is None or state != "closed":
            return
        if mine["closed_s"] is None:
            mine["closed_s"] = since
        if mine["drained_s"] is None and depth == 0:
            mine["drained_s"] = since
            mine["replay"] = {
                k: v for k, v in (doc.get("replay") or {}).items() if isinstance(v, int)
            }

    async def run(self, timeout_s: float) -> dict[str, Any]:
        """Poll until PostgreSQL is back and every journal drained (or `timeout_s` after it)."""
        while True:
            docs = await asyncio.gather(*(full_status(s, self.token) for s in self.servers))
            now = time.monotonic()
            since = None if self.back_at is None else round(now - self.back_at, 2)
            seen = [d for d in docs if d is not None]
            for server, doc in zip(self.servers, docs, strict=True):
                if doc is not None:
                    self._note(server.name, doc, since)
            depths = [(d.get("journal") or {}).get("depth") or 0 for d in seen]
            self.total_peak = max(self.total_peak, sum(depths))
            if since is not None and len(seen) == len(docs):
                closed = all(d["breaker"]["state"] == "closed" for d in seen)
                if closed and self.all_closed_s is None:
                    self.all_closed_s = since
                if closed and not any(depths):
                    self.all_drained_s = since
                    break
            if since is not None and since > timeout_s:
                break
            await asyncio.sleep(self.every_s)
        return {
            "drained": self.all_drained_s is not None,
            "fleet_breakers_closed_s": self.all_closed_s,
            "fleet_drained_s": self.all_drained_s,
            "journal_peak_total": self.total_peak,
            "per_sidecar": self.per,
        }
