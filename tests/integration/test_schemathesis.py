"""Schemathesis, every check, against a live sidecar: the short form of `make schemathesis`.

The same runner as the make target (`tests.schemathesis_run`: the sidecar as a process, the same
configuration and hooks), with few examples per operation and a fixed seed, on the session's
PostgreSQL. A failure prints schemathesis's report, with a command to reproduce each case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHORT = ["--max-examples", "10", "--seed", "20261203"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_schemathesis_finds_nothing(migrated_dsn: str) -> None:
    env = {**os.environ, "REGISTRY_PROXY_TEST_DATABASE_URL": migrated_dsn}
    run = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "tests.schemathesis_run", *SHORT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    report = run.stdout[-12_000:] + run.stderr[-4_000:]
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout, report
