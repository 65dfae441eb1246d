"""A soak stopped with SIGTERM stops the sidecar and the PostgreSQL it started, and says so in
its exit status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.stopping import EXIT_TERMINATED

ROOT = Path(__file__).resolve().parents[2]


def _started_by_soak(soak: psutil.Process, since: float) -> list[psutil.Process]:
    """The soak's sidecar (its child) and PostgreSQL (pg_ctl leaves it to init; its data folder
    is in the soak's work folder)."""
    found = [c for c in soak.children(recursive=True) if "proxy serve" in " ".join(c.cmdline())]
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= since and "registry-proxy-soak-" in cmdline:
            found.append(p)
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_soak_stopped_with_sigterm_stops_what_it_started(tmp_path: Path) -> None:
    since = time.time() - 1
    cmd = [sys.executable, "-m", "bench.soak", "--minutes", "5", "--out", str(tmp_path / "s.json")]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert run.stderr is not None
        for line in run.stderr:  # until the load runs, or the soak ends
            if b"running" in line:
                break
        started = _started_by_soak(psutil.Process(run.pid), since)
        names = {p.name() for p in started}
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == EXIT_TERMINATED, err.decode(errors="replace")[-2000:]
    assert any(n.startswith("python") for n in names) and "postgres" in names, names
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    assert not (tmp_path / "s.json").exists()
