"""The alert rules and the dashboard use only metrics a running sidecar really exports."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api, Tokens
from tests.deploy.metric_names import metric_names_used


async def test_every_metric_in_alerts_and_dashboard_is_exported(api: Api) -> None:
    # Touch the paths that create labelled series: a read, a write, a 404.
    await api.call("GET", "/v1/stats")
    await api.call("GET", "/v1/agents/nobody")
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    exported: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        # A labelled family with no series yet is still declared (HELP and TYPE lines).
        exported.add(family.name)
        exported.update(family.name + s for s in suffixes.get(family.type, ()))
        for sample in family.samples:
            exported.add(sample.name)
    used = metric_names_used()
    assert used, "no metric names found in the alert rules and dashboard"
    missing = sorted(name for name in used if name not in exported)
    assert not missing, missing


async def test_status_shows_every_item(api: Api, tokens: Tokens) -> None:
    # The whole document is the admin's: other roles see their tenant's part of it.
    status, doc, _ = await api.as_token(tokens.admin).call("GET", "/v1/status")
    assert status == 200
    assert doc["breaker"]["state"] == "closed"
    assert isinstance(doc["breaker"]["transitions"], list)
    assert {"requests", "retries", "allowed_now", "exhausted_count"} <= set(doc["retry_budget"])
    assert {"agents", "age_seconds", "partial"} <= set(doc["replica"])
    assert {"depth", "size_bytes"} <= set(doc["journal"])
    assert {"in_use", "idle", "max"} <= set(doc["pool"])
