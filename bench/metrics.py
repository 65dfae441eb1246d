"""The sidecar's Prometheus counters (``/metrics``), read between two moments of a run.

The sidecar counts what it answered and where from; reading its counters before and after a step
tells replica answers from database answers without trusting the client's view.
"""

from __future__ import annotations

import re

from bench.client import http
from bench.servers import Server

_SAMPLE = re.compile(r"^registry_proxy_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def request_counts(server: Server, route: str) -> dict[str, float]:
    """The sidecar's own count of answers to `route`, by "status/source"."""
    status, text = await http(server.url + "/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    out: dict[str, float] = {}
    for labels, value in _SAMPLE.findall(text):
        lab = dict(_LABEL.findall(labels))
        if lab.get("route") == route:
            key = f"{lab.get('status')}/{lab.get('source')}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def diff_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    keys = sorted(set(before) | set(after))
    return {
        k: int(after.get(k, 0) - before.get(k, 0))
        for k in keys
        if after.get(k, 0) != before.get(k, 0)
    }
