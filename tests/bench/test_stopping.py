"""A soak stopped with SIGTERM stops the sidecar and the PostgreSQL it started, and says so in
its exit status."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from bench.stopping import EXIT_TERMINATED

ROOT = Path(__file__).resolve().parents[2]


def _started_by_soak(soak: psutil.Process) -> list[psutil.Process]:
    """The soak's sidecar (its child) and its PostgreSQL: pg_ctl leaves the postmaster to init,
    so it is found by the port in the sidecar's DSN (another soak's may run beside this one)."""
    sidecars = [c for c in soak.children(recursive=True) if "proxy serve" in " ".join(c.cmdline())]
    ports = {str(urlsplit(c.environ()["REGISTRY_PROXY_DATABASE_URL"]).port) for c in sidecars}
    found = list(sidecars)
    for p in psutil.process_iter(["name", "cmdline"]):
        args = p.info["cmdline"] or []
        if p.info["name"] == "postgres" and any(
            flag == "-p" and port in ports for flag, port in itertools.pairwise(args)
        ):
            found.append(p)
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_soak_stopped_with_sigterm_stops_what_it_started(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.soak", "--minutes", "5", "--out", str(tmp_path / "s.json")]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert run.stderr is not None
        for line in run.stderr:  # until the load runs, or the soak ends
            if b"running" in line:
                break
        started = _started_by_soak(psutil.Process(run.pid))
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
