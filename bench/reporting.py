"""Result files and the summary printed of them, the same way for every entry point.

Other tooling and the docs read the JSON files under ``bench/results/`` and compare runs by their
command and machine lines, so one place names, writes and prints them.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.provenance import machine

RESULTS = Path(__file__).resolve().parent / "results"


def logger(name: str) -> Callable[[str], None]:
    """Progress lines, ``[name HH:MM:SS] msg``, on stderr: stdout is kept for the summary."""

    def log(msg: str) -> None:
        print(
            f"[{name} {datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
        )

    return log


def result_path(kind: str) -> Path:
    """The default result file of a run of `kind` starting now."""
    return RESULTS / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"


def opening(kind: str, module: str, *, quote: bool = False) -> dict[str, Any]:
    """The keys a result document starts with: what ran, when, its command line (`quote`: as a
    shell would need it) and the machine."""
    parts = [Path(sys.executable).name, "-m", module, *sys.argv[1:]]
    return {
        "kind": kind,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(parts) if quote else " ".join(parts),
        "machine": machine(),
    }


def machine_line(m: dict[str, Any], *, load: bool = False) -> str:
    """The machine and commit a result was measured on; `load`: with the load average at the
    start and a word on uncommitted changes to the product."""
    where = f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"
    if load:
        where += f", load average {m['loadavg_at_start']}"
    line = f"{where}; commit {str(m.get('git_commit'))[:10]}"
    if load and m.get("uncommitted_product_changes"):
        line += " with uncommitted changes to proxy/"
    return line


def acceptance_lines(checks: dict[str, dict[str, Any]]) -> list[str]:
    """One line per acceptance check: PASS or FAIL, the value and the target."""
    return [
        f"  {'PASS' if c['pass'] else 'FAIL'} {k}: {c['value']} (target {c['target']})"
        for k, c in checks.items()
    ]


def publish(path: Path, doc: dict[str, Any], report: Callable[[dict[str, Any]], str]) -> None:
    """Write the result file, then print its summary and where it is (the file first: a summary
    that fails must not cost the run its result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(doc))
    print(f"written: {path}")
