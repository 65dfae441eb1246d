"""The journal alerts (disk full, damaged records set aside) evaluated by `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RULE_TESTS = Path(__file__).with_name("alerts_journal_test.yml")
ALERTS = Path(__file__).resolve().parents[2] / "config" / "alerts.yml"


def _promtool() -> str:
    local = Path(sys.executable).parent / "promtool"
    if local.exists():
        return str(local)
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run `make tools`")
    return found


def test_journal_alerts_fire_when_and_only_when_they_should() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_tests_cover_both_journal_alerts() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["../../config/alerts.yml"]
    tested = {t["alertname"] for t in tests["tests"][0]["alert_rule_test"]}
    rules = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert tested == {"RegistryProxyJournalNotWritable", "RegistryProxyJournalDamaged"} <= rules
