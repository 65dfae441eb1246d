"""What a result was measured on: the machine, the commit, the load generator's tools.

Every result file carries it, because figures from a shared two-core machine mean little without
the load average at the start and whether ``proxy/`` had uncommitted changes.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.loadgen_wrk import find_wrk


def _git(*args: str) -> str | None:
    """A read-only git query about the checkout being measured (never touches the index)."""
    git = shutil.which("git")
    if git is None:
        return None
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            [git, "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = find_wrk()
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (
            (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"
        )
    try:
        import uvloop

        uv: str | None = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        uv = None
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "uncommitted_product_changes": bool(_git("status", "--porcelain", "--", "proxy")),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk_version,
        "uvloop": uv,
    }
