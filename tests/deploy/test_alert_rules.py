"""config/alerts.yml evaluated by Prometheus' own rule engine (`promtool test rules`).

alerts_test.yml feeds series for a plain outage, a journal that cannot drain behind a closed
breaker, and a recovery, and states which alerts are pending or firing with which text. promtool
comes from Debian's `prometheus` package: `make tools` (scripts/get-promtool.sh) puts it next to
the venv's python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS = REPO_ROOT / "config" / "alerts.yml"
CHART_ALERTS = REPO_ROOT / "helm" / "registry-proxy" / "files" / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
BIN = Path(sys.executable).parent


def _promtool() -> str:
    local = BIN / "promtool"
    if local.exists():
        return str(local)
    found = shutil.which("promtool")
    if found:
        return found
    pytest.fail(
        f"promtool not found at {local} nor on PATH: run `make tools` "
        "(scripts/get-promtool.sh unpacks it from Debian's prometheus package)"
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("path", [ALERTS, CHART_ALERTS], ids=["config", "chart"])
def test_promtool_accepts_the_rules(path: Path) -> None:
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules(path))} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _run("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_tests_cover_both_scenarios_of_the_replay_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["../../config/alerts.yml"]
    [group] = tests["tests"]
    replay = [t for t in group["alert_rule_test"] if t["alertname"] == "RegistryProxyReplayFailing"]
    firing_pods = {alert["exp_labels"]["pod"] for t in replay for alert in t["exp_alerts"]}
    assert firing_pods == {"stuck"}
    assert any(not t["exp_alerts"] for t in replay), "a time at which nothing may fire"
    pods = {
        match
        for series in group["input_series"]
        for match in re.findall(r'pod="(\w+)"', series["series"])
    }
    assert pods == {"outage", "stuck", "recovered"}


def test_the_outage_scenario_catches_an_unguarded_replay_alert(tmp_path: Path) -> None:
    """Negative control: without the breaker guard the replay alert fires in a plain outage,
    and the rule tests notice."""
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "RegistryProxyReplayFailing":
                guarded = rule["expr"]
                assert "unless on (namespace, pod)" in guarded
                rule["expr"] = guarded.split("unless on (namespace, pod)")[0]
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(document, sort_keys=False))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _run("test", "rules", str(test_file))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert 'alertname="RegistryProxyReplayFailing", namespace="team", pod="outage"' in output


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
_WORD_NUMBERS = {"a": 1, "one": 1}


def _seconds(duration: str) -> int:
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"(\d+)([smh])", duration))


def test_alert_texts_state_the_durations_of_their_rules() -> None:
    """A text that says how long something has lasted says the rule's `for:`."""
    for rule in _rules():
        text = " ".join(rule["annotations"].values())
        spans = re.findall(r"\b(\d+|a|one) (minute|hour)s?\b", text)
        for number, unit in spans:
            count = _WORD_NUMBERS.get(number) or int(number)
            stated = count * (60 if unit == "minute" else 3600)
            assert "for" in rule, f"{rule['alert']} speaks of {number} {unit}s but has no for:"
            assert stated == _seconds(rule["for"]), (
                f"{rule['alert']}: the text says {number} {unit}(s), for: is {rule['for']}"
            )


def test_alert_texts_state_the_thresholds_of_their_rules() -> None:
    exprs = {rule["alert"]: rule for rule in _rules()}
    depth = exprs["RegistryProxyJournalDepthHigh"]
    assert "> 1000" in depth["expr"] and "over 1000" in depth["annotations"]["summary"]
    answers = exprs["RegistryProxyUnavailableAnswers"]
    assert "> 0.05" in answers["expr"] and "over 5%" in answers["annotations"]["summary"]
    assert "more than 5%" in answers["annotations"]["description"]
    pool = exprs["RegistryProxyPoolSaturated"]
    assert ">= 0.9" in pool["expr"] and "90% or more" in pool["annotations"]["description"]
