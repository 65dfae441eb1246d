"""config/: the example env file, the Prometheus rules and the Grafana dashboard."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.settings import Settings

from .metric_names import (
    ALERT_FILES,
    CHART_DIR,
    DASHBOARD_FILES,
    REPO_ROOT,
    metric_families_used,
    metric_family,
    metric_names_used,
    names_in_dashboard,
)

CONFIG = REPO_ROOT / "config"
EXAMPLE_ENV = CONFIG / "example.env"
ALERTS = CONFIG / "alerts.yml"
DASHBOARD = CONFIG / "grafana-dashboard.json"

ENV_PREFIX = "REGISTRY_PROXY_"
ENV_LINE = re.compile(r"^#?\s*(REGISTRY_PROXY_[A-Z0-9_]+)=(.*)$")

# Every series the sidecar exports (the contract with proxy/observability), with the suffixes
# Prometheus sees. The rules and the dashboard may use nothing else.
SIDECAR_SERIES = frozenset(
    {
        "registry_proxy_requests_total",
        "registry_proxy_request_duration_seconds_bucket",
        "registry_proxy_request_duration_seconds_sum",
        "registry_proxy_request_duration_seconds_count",
        "registry_proxy_breaker_state",
        "registry_proxy_breaker_transitions_total",
        "registry_proxy_retries_total",
        "registry_proxy_db_attempts_total",
        "registry_proxy_probes_total",
        "registry_proxy_retry_budget_exhausted_total",
        "registry_proxy_db_call_duration_seconds_bucket",
        "registry_proxy_db_call_duration_seconds_sum",
        "registry_proxy_db_call_duration_seconds_count",
        "registry_proxy_pool_connections",
        "registry_proxy_replica_agents",
        "registry_proxy_replica_age_seconds",
        "registry_proxy_replica_max_staleness_seconds",
        "registry_proxy_replica_hits_total",
        "registry_proxy_journal_depth",
        "registry_proxy_journal_writable",
        "registry_proxy_journal_quarantine_files",
        "registry_proxy_journal_appends_total",
        "registry_proxy_journal_replay_total",
        "registry_proxy_writes_accepted_total",
        "registry_proxy_writes_committed_total",
        "registry_proxy_db_queue_depth",
        "registry_proxy_db_queue_wait_seconds_bucket",
        "registry_proxy_db_queue_wait_seconds_sum",
        "registry_proxy_db_queue_wait_seconds_count",
        "registry_proxy_shed_total",
        "registry_proxy_loop_lag_seconds",
        "registry_proxy_loop_lag_sample_seconds_bucket",
        "registry_proxy_loop_lag_sample_seconds_sum",
        "registry_proxy_loop_lag_sample_seconds_count",
        "registry_proxy_failover_unconfirmed_writes",
        "registry_proxy_failover_reapplied_total",
    }
)


# --- the settings tree -----------------------------------------------------------------------


def _fields(
    model: type[BaseModel], prefix: str = ENV_PREFIX
) -> Iterator[tuple[str, FieldInfo, tuple[str, ...]]]:
    """(env name, field, attribute path) for every leaf of the settings tree."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub_env, sub_field, path in _fields(annotation, f"{env}__"):
                yield sub_env, sub_field, (name, *path)
        else:
            yield env, field, (name,)


SETTINGS_FIELDS = {env: (field, path) for env, field, path in _fields(Settings)}


def _example_env() -> dict[str, str]:
    assignments: dict[str, str] = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            name, value = match.groups()
            assert name not in assignments, f"{name} is listed twice in example.env"
            assignments[name] = value
    return assignments


def _attr(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_settings_tree_is_walked() -> None:
    # Guards the walker itself: nested models are descended into.
    assert "REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD" in SETTINGS_FIELDS
    assert "REGISTRY_PROXY_DATABASE_URL" in SETTINGS_FIELDS
    assert "REGISTRY_PROXY_BREAKER" not in SETTINGS_FIELDS
    assert len(SETTINGS_FIELDS) > 40


def test_example_env_lists_every_setting() -> None:
    missing = sorted(set(SETTINGS_FIELDS) - set(_example_env()))
    assert not missing, f"config/example.env lacks {missing}"


def test_example_env_lists_only_real_settings() -> None:
    unknown = sorted(set(_example_env()) - set(SETTINGS_FIELDS))
    assert not unknown, f"config/example.env names settings that do not exist: {unknown}"


def test_example_env_assignments_are_commented_out_and_documented() -> None:
    lines = EXAMPLE_ENV.read_text().splitlines()
    for number, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if not match:
            continue
        assert line.startswith("# REGISTRY_PROXY_"), f"line {number + 1} is not commented out"
        previous = lines[number - 1]
        assert previous.startswith("# ") and not ENV_LINE.match(previous), (
            f"{match.group(1)} needs a one-line comment above it"
        )


def test_example_env_shows_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """Each listed value, parsed by the sidecar, equals the field's default (unset ones aside)."""
    defaults = Settings()
    checked = 0
    for name, value in _example_env().items():
        field, path = SETTINGS_FIELDS[name]
        if field.default is None:
            continue  # documented as "Default: unset", the value is an example
        clean_env.setenv(name, value)
        try:
            parsed = Settings()
        finally:
            clean_env.delenv(name)
        assert _attr(parsed, path) == _attr(defaults, path), f"{name}={value} is not the default"
        checked += 1
    assert checked > 40


def test_example_env_marks_unset_defaults() -> None:
    lines = EXAMPLE_ENV.read_text().splitlines()
    for number, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if match and SETTINGS_FIELDS[match.group(1)][0].default is None:
            assert "Default: unset" in lines[number - 1], match.group(1)


# --- Prometheus rules ------------------------------------------------------------------------

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
REQUIRED_ALERT_METRICS = {
    "registry_proxy_breaker_state",  # breaker open for over a minute
    "registry_proxy_journal_depth",  # journal growing
    "registry_proxy_replica_age_seconds",  # replica older than its bound
    "registry_proxy_replica_max_staleness_seconds",
    "registry_proxy_journal_replay_total",  # replay rejections
    "registry_proxy_retry_budget_exhausted_total",  # retry budget exhausted
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    assert isinstance(document, dict)
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"RegistryProxy[A-Za-z]+", rule["alert"])
        expr = rule["expr"]
        assert isinstance(expr, str) and expr.strip()
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert expr.count("{") == expr.count("}"), rule["alert"]
        assert expr.count("[") == expr.count("]"), rule["alert"]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_alert_rules_cover_the_failure_modes() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    used = {name for expr in exprs.values() for name in re.findall(r"registry_proxy_\w+", expr)}
    assert used >= REQUIRED_ALERT_METRICS
    breaker = exprs["RegistryProxyBreakerOpen"]
    assert 'state=~"open|half_open"' in breaker
    assert {rule["alert"]: rule.get("for") for rule in _rules()}["RegistryProxyBreakerOpen"] == "1m"
    assert 'outcome="rejected"' in exprs["RegistryProxyReplayRejections"]


def test_chart_carries_identical_copies() -> None:
    assert (CHART_DIR / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "copy config/alerts.yml to helm/registry-proxy/files/alerts.yml"
    )
    assert (
        CHART_DIR / "files" / "grafana-dashboard.json"
    ).read_bytes() == DASHBOARD.read_bytes(), (
        "copy config/grafana-dashboard.json to helm/registry-proxy/files/grafana-dashboard.json"
    )


# --- Grafana dashboard -----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def _panels() -> list[dict[str, Any]]:
    return list(_dashboard()["panels"])


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "registry-proxy"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), panel["title"]
            assert expr.count("{") == expr.count("}"), panel["title"]
            assert 'namespace="$namespace"' in expr and 'pod=~"$pod"' in expr, panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _panels():
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def _exprs_by_title() -> dict[str, str]:
    return {panel["title"]: "\n".join(t["expr"] for t in panel["targets"]) for panel in _panels()}


def test_dashboard_has_the_required_panels() -> None:
    exprs = _exprs_by_title()
    assert "registry_proxy_breaker_state" in exprs["Breaker state"]
    requests = exprs["Requests by source and status"]
    assert "registry_proxy_requests_total" in requests
    assert re.search(r"by \(source, status\)", requests)
    latency = exprs["Request latency"]
    assert "histogram_quantile(0.99" in latency and "histogram_quantile(0.5" in latency
    assert "registry_proxy_request_duration_seconds_bucket" in latency
    assert "registry_proxy_journal_depth" in exprs["Journal depth"]
    assert "registry_proxy_replica_age_seconds" in exprs["Replica age"]
    writes = exprs["Writes accepted versus committed"]
    assert "registry_proxy_writes_accepted_total" in writes
    assert "registry_proxy_writes_committed_total" in writes


def test_breaker_state_mapping_covers_every_state() -> None:
    panel = next(p for p in _panels() if p["title"] == "Breaker state")
    texts = {
        option["text"]
        for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        for option in mapping["options"].values()
    }
    assert texts == {"closed", "open", "half_open", "forced_open", "disabled"}
    expr = panel["targets"][0]["expr"]
    for state in texts:
        assert f'state="{state}"' in expr


# --- metric names ----------------------------------------------------------------------------


def test_rules_and_dashboard_use_only_exported_series() -> None:
    used = metric_names_used()
    unknown = sorted(used - SIDECAR_SERIES)
    assert not unknown, f"not exported by the sidecar: {unknown}"


def test_metric_name_extraction_sees_every_file() -> None:
    assert all(path.is_file() for path in (*ALERT_FILES, *DASHBOARD_FILES))
    used = metric_names_used()
    assert used >= REQUIRED_ALERT_METRICS
    assert "registry_proxy_request_duration_seconds_bucket" in used
    assert names_in_dashboard(DASHBOARD) <= used


def test_dashboard_uses_every_exported_family() -> None:
    # Not a requirement of Prometheus, but the dashboard is the place where each metric shows up.
    families = {metric_family(series) for series in SIDECAR_SERIES}
    assert metric_families_used(names_in_dashboard(DASHBOARD)) == families


@pytest.mark.parametrize(
    ("series", "family"),
    [
        ("registry_proxy_requests_total", "registry_proxy_requests"),
        (
            "registry_proxy_request_duration_seconds_bucket",
            "registry_proxy_request_duration_seconds",
        ),
        ("registry_proxy_request_duration_seconds_sum", "registry_proxy_request_duration_seconds"),
        (
            "registry_proxy_request_duration_seconds_count",
            "registry_proxy_request_duration_seconds",
        ),
        ("registry_proxy_journal_depth", "registry_proxy_journal_depth"),
        ("registry_proxy_replica_age_seconds", "registry_proxy_replica_age_seconds"),
        ("registry_proxy_writes_committed_total", "registry_proxy_writes_committed"),
    ],
)
def test_metric_family(series: str, family: str) -> None:
    assert metric_family(series) == family


def test_no_exported_gauge_looks_like_a_suffixed_series() -> None:
    # metric_family() strips suffixes blindly; that is only sound while no gauge ends in one.
    gauges = {
        "registry_proxy_breaker_state",
        "registry_proxy_pool_connections",
        "registry_proxy_replica_agents",
        "registry_proxy_replica_age_seconds",
        "registry_proxy_replica_max_staleness_seconds",
        "registry_proxy_journal_depth",
        "registry_proxy_journal_writable",
        "registry_proxy_journal_quarantine_files",
    }
    assert gauges <= SIDECAR_SERIES
    assert all(metric_family(gauge) == gauge for gauge in gauges)


def test_paths_point_into_this_repository() -> None:
    assert Path(REPO_ROOT / "pyproject.toml").is_file()


# --- constraints, stated where a user looks ---------------------------------------------------


def _bounds_text(field: FieldInfo) -> str | None:
    """The notation of settings.py and example.env: "1 to 10", ">= 1", "> 0 and <= 1"."""
    bounds: dict[str, Any] = {}
    for meta in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(meta, attr, None) is not None:
                bounds[attr] = getattr(meta, attr)
    if not bounds:
        return None
    if set(bounds) == {"ge", "le"}:
        return f"{bounds['ge']} to {bounds['le']}"
    parts = []
    for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if attr in bounds:
            parts.append(f"{sign} {bounds[attr]}")
    return " and ".join(parts)


def _choices(field: FieldInfo) -> list[str]:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    return [str(arg) for arg in get_args(annotation)] if get_origin(annotation) is Literal else []


def _comment_above(name: str) -> str:
    lines = EXAMPLE_ENV.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(f"# {name}="))
    block: list[str] = []
    for line in reversed(lines[:number]):
        if not line.startswith("# ") or ENV_LINE.match(line):
            break
        block.insert(0, line[2:])
    return " ".join(block)


def test_settings_describe_their_constraints() -> None:
    """Every bound and every choice is in the field's description (what `config show`'s JSON
    schema and the chart's schema call description) and in the comment of example.env."""
    checked = 0
    for env, (field, _path) in SETTINGS_FIELDS.items():
        assert field.description, f"{env} has no description"
        comment = _comment_above(env)
        bounds = _bounds_text(field)
        if bounds:
            assert bounds in field.description, f"{env}: description lacks {bounds!r}"
            assert bounds in comment, f"{env}: example.env lacks {bounds!r}"
            checked += 1
        for choice in _choices(field):
            assert choice in field.description, f"{env}: description lacks {choice!r}"
            assert choice in comment, f"{env}: example.env lacks {choice!r}"
            checked += 1
    assert checked > 50


def test_token_rules_are_documented() -> None:
    from proxy.http.auth import TokenSpec

    token = TokenSpec.model_fields["token"]
    lengths = [
        (getattr(m, "min_length", None), getattr(m, "max_length", None))
        for arg in get_args(token.annotation)
        for m in getattr(arg, "__metadata__", ())
    ]
    assert (16, 512) in lengths, "the rule this test documents changed"
    description = Settings.model_fields["tokens"].description or ""
    for text in ("16 to 512 characters", "reader, writer or admin", "1 to 128"):
        assert text in description, text
        assert text in _comment_above("REGISTRY_PROXY_TOKENS"), text
    readme = (REPO_ROOT / "README.md").read_text()
    assert "at least 16 characters" in readme


def test_cross_field_rules_are_documented() -> None:
    rules = {
        "REGISTRY_PROXY_DATABASE__POOL_MIN_SIZE": "at most POOL_MAX_SIZE",
        "REGISTRY_PROXY_BREAKER__OPEN_BASE_MS": "at most OPEN_MAX_MS",
        "REGISTRY_PROXY_RETRY__BASE_MS": "at most MAX_MS",
        "REGISTRY_PROXY_HOST": "ALLOW_NON_LOOPBACK",
    }
    for env, text in rules.items():
        field, _ = SETTINGS_FIELDS[env]
        assert text.lower() in (field.description or "").lower(), env
        assert text in _comment_above(env), env
