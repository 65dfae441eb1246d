"""Which ``registry_proxy_*`` series the shipped alert rules and dashboard use.

The alert rules (``config/alerts.yml`` and the chart's copy) and the Grafana dashboard
(``config/grafana-dashboard.json`` and the chart's copy) may only name series the sidecar exports.
:func:`metric_names_used` collects every such name exactly as written (``..._total``,
``..._bucket``, ...); :func:`metric_family` maps a series name to the metric family that
``prometheus_client`` exposes it under, so a test can compare with a live ``/metrics`` scrape
parsed by ``prometheus_client.parser.text_string_to_metric_families``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "registry-proxy"

ALERT_FILES = (REPO_ROOT / "config" / "alerts.yml", CHART_DIR / "files" / "alerts.yml")
DASHBOARD_FILES = (
    REPO_ROOT / "config" / "grafana-dashboard.json",
    CHART_DIR / "files" / "grafana-dashboard.json",
)

PREFIX = "registry_proxy_"
_NAME = re.compile(r"(?<![A-Za-z0-9_:])registry_proxy_[a-zA-Z0-9_:]+")

# Suffixes of the samples of one family, in prometheus_client's text exposition:
# counters expose <family>_total (and <family>_created), histograms <family>_bucket, _sum, _count
# (and _created). Gauges are exposed under the family name itself.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COUNTER_SUFFIXES = ("_total",)
CREATED_SUFFIX = "_created"


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML or JSON document (keys and values)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def names_in_text(text: str) -> set[str]:
    """``registry_proxy_*`` series names in a PromQL expression or any other text."""
    return set(_NAME.findall(text))


def names_in_alerts(path: Path) -> set[str]:
    document = yaml.safe_load(path.read_text())
    return {name for text in _strings(document) for name in names_in_text(text)}


def names_in_dashboard(path: Path) -> set[str]:
    document = json.loads(path.read_text())
    return {name for text in _strings(document) for name in names_in_text(text)}


def metric_names_used(
    alert_files: Iterable[Path] = ALERT_FILES, dashboard_files: Iterable[Path] = DASHBOARD_FILES
) -> set[str]:
    """Every ``registry_proxy_*`` series named anywhere in the alert rules and dashboards."""
    used: set[str] = set()
    for path in alert_files:
        used |= names_in_alerts(path)
    for path in dashboard_files:
        used |= names_in_dashboard(path)
    return used


def metric_family(series: str) -> str:
    """The family a series belongs to, as ``prometheus_client`` names it.

    ``registry_proxy_requests_total`` -> ``registry_proxy_requests`` (counter);
    ``registry_proxy_request_duration_seconds_bucket`` (or ``_sum``, ``_count``) ->
    ``registry_proxy_request_duration_seconds`` (histogram); a gauge such as
    ``registry_proxy_journal_depth`` is its own family. No gauge of the sidecar ends in one of
    these suffixes, so stripping them is unambiguous.
    """
    for suffix in (*HISTOGRAM_SUFFIXES, *COUNTER_SUFFIXES, CREATED_SUFFIX):
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def metric_families_used(names: Iterable[str] | None = None) -> set[str]:
    """The families of :func:`metric_names_used` (or of the given series names)."""
    return {metric_family(name) for name in (metric_names_used() if names is None else names)}
