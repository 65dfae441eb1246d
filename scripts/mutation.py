"""Mutation testing of the sidecar's pure logic with mutmut, in a scratch copy of the tree.

    python scripts/mutation.py            # `make mutation`: every package below, scores, survivors
    python scripts/mutation.py --sample   # `make mutation-sample`: a few dozen breaker mutants

The packages are the ones whose mistakes the unit tests must catch on their own: the resilience
primitives (proxy/resilience/), the registry's domain rules (proxy/registry/) and the journal's
record codec and recovery scan (proxy/store/journal/codec.py and scan.py), the failover guard and
the replica's counted events. Only tests/unit runs against the mutants: no database, no
subprocess, so a mutant costs a fraction of a second.

mutmut works in the current directory and keeps its state in `mutants/` there. Running it in a
fresh copy (build/mutation/ by default) keeps that state out of the working tree, makes every run
start from the code as it is now (no stale verdicts), and lets the sample use its own settings.

The run fails when a package scores under --min-score (killed and timed-out mutants over all
mutants that were run; a mutant no test reaches counts as a survivor), or when nothing was tested.
Survivors are printed with their diffs; docs/mutation.md explains the ones that remain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# What is mutated, as mutmut's `only_mutate` globs (paths relative to the repository root).
PACKAGES = {
    "proxy/resilience": "proxy/resilience/*",
    "proxy/registry": "proxy/registry/*",
    "proxy/store/journal/codec.py": "proxy/store/journal/codec.py",
    "proxy/store/journal/scan.py": "proxy/store/journal/scan.py",
    # The failover guard's bookkeeping and the replica's memory of counted events: pure logic
    # on which no acknowledged write may be lost or counted twice.
    "proxy/service/failover_guard.py": "proxy/service/failover_guard.py",
    "proxy/store/counted_events.py": "proxy/store/counted_events.py",
}
# tests/unit, less the one module that drives the CLI through subprocesses: it exercises none of
# the code above, and a child process would import the original code, not the mutant.
UNIT_TESTS = ["tests/unit", "--ignore=tests/unit/test_config_typos.py"]

# The sample that `make test` runs so that this tooling cannot rot unnoticed: the first two
# mutants of every function of the breaker, checked by the breaker's own tests.
SAMPLE_FILE = "proxy/resilience/_breaker.py"
SAMPLE_MUTANTS = ["proxy.resilience._breaker.*__mutmut_1", "proxy.resilience._breaker.*__mutmut_2"]
SAMPLE_TESTS = [
    "tests/unit/test_resilience_breaker.py",
    "tests/unit/test_mutants_breaker.py",
    "tests/unit/test_breaker_refuses_now.py",
]
SAMPLE_MIN_MUTANTS = 20

KILLED = {"killed", "timeout", "caught by type check"}


@dataclass
class Tally:
    statuses: dict[str, int] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)

    def add(self, name: str, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status not in KILLED and status != "skipped":
            self.survivors.append(name)

    @property
    def total(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "skipped")

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in KILLED)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 0.0


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def stage(workdir: Path, only_mutate: list[str], tests: list[str]) -> None:
    """A fresh copy of the code and the tests, with a pyproject.toml that configures mutmut."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO_ROOT / "proxy", workdir / "proxy", ignore=ignore)
    shutil.copytree(REPO_ROOT / "tests", workdir / "tests", ignore=ignore)
    project = (REPO_ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in project:
        raise SystemExit("pyproject.toml has a [tool.mutmut] table: the settings live here")
    # The project's own pytest settings (markers, asyncio mode, timeout) apply to the mutants.
    settings = f"""
[tool.mutmut]
source_paths = ["proxy"]
only_mutate = {_toml_list(only_mutate)}
pytest_add_cli_args_test_selection = {_toml_list(tests)}
# A mutant that makes a test wait for ever (a journal writer that never answers) fails at 20 s
# instead of the suite's 120; and mutmut's own time limit scales with the tests' duration.
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:schemathesis", "-q", "--timeout=20"]
timeout_multiplier = 5.0
# The scratch copy sits inside the repository's work tree but is not what git tracks.
use_git_change_detection = false
"""
    (workdir / "pyproject.toml").write_text(project + settings)


def run_mutmut(workdir: Path, names: list[str], jobs: int | None, *, quiet: bool) -> None:
    """Run mutmut in `workdir`. Quiet: its progress goes to mutmut.log there, and only the end
    of it is printed if it fails (mutmut redraws a progress line per mutant)."""
    command = [sys.executable, "-m", "mutmut", "run"]
    if jobs:
        command += ["--max-children", str(jobs)]
    command += names
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # Under `make test` the coverage run may have exported its settings; mutants are not measured.
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    env.pop("COVERAGE_PROCESS_START", None)
    log = workdir / "mutmut.log"
    with log.open("wb") as out:
        result = subprocess.run(  # noqa: S603
            command,
            cwd=workdir,
            env=env,
            check=False,
            stdout=out if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
    if result.returncode != 0:
        if quiet:
            tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-60:]
            print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"mutmut run failed with exit code {result.returncode}")


def tally(workdir: Path, packages: dict[str, str], selected: list[str]) -> dict[str, Tally]:
    """Verdicts by package, read from mutmut's per-file result files."""
    import fnmatch

    from mutmut.stats import status_by_exit_code

    tallies = {package: Tally() for package in packages}
    for meta in sorted((workdir / "mutants" / "proxy").rglob("*.py.meta")):
        source = meta.relative_to(workdir / "mutants").as_posix().removesuffix(".meta")
        package = next(
            (name for name, glob in packages.items() if fnmatch.fnmatch(source, glob)), None
        )
        if package is None:
            continue
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(exit_codes.items()):
            if selected and not any(fnmatch.fnmatch(name, glob) for glob in selected):
                continue
            tallies[package].add(name, status_by_exit_code[code])
    return tallies


def show(workdir: Path, name: str) -> str:
    env = {**os.environ}
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mutmut", "show", name],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or result.stderr.strip()


def report(tallies: dict[str, Tally], workdir: Path, diffs: bool) -> None:
    print()
    print(f"{'package':<32} {'mutants':>8} {'killed':>7} {'survived':>9} {'score':>7}")
    for package, t in tallies.items():
        print(f"{package:<32} {t.total:>8} {t.killed:>7} {len(t.survivors):>9} {t.score:>6.1f}%")
    for package, t in tallies.items():
        others = {s: n for s, n in t.statuses.items() if s not in KILLED | {"survived"}}
        if others:
            print(f"{package}: also {others}")
    survivors = [name for t in tallies.values() for name in t.survivors]
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (docs/mutation.md explains those that stay):")
        for name in survivors:
            print(show(workdir, name) if diffs else f"  {name}")
    summary = {
        package: {
            "mutants": t.total,
            "killed": t.killed,
            "statuses": t.statuses,
            "score": round(t.score, 1),
            "survivors": t.survivors,
        }
        for package, t in tallies.items()
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", action="store_true", help="only a few dozen breaker mutants")
    parser.add_argument("--min-score", type=float, default=80.0, help="per package, in percent")
    parser.add_argument("--jobs", type=int, default=None, help="parallel mutants (default: CPUs)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch copy of the tree")
    parser.add_argument("--no-diffs", action="store_true", help="list survivors without diffs")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="mutate only these files (e.g. proxy/resilience/_probe.py), to iterate on one module",
    )
    args = parser.parse_args(argv)

    if args.sample:
        packages = {SAMPLE_FILE: SAMPLE_FILE}
        tests, names = SAMPLE_TESTS, SAMPLE_MUTANTS
        workdir = args.workdir or REPO_ROOT / "build" / "mutation-sample"
    else:
        packages, tests, names = PACKAGES, UNIT_TESTS, []
        workdir = args.workdir or REPO_ROOT / "build" / (
            "mutation-only" if args.only else "mutation"
        )
    tests = [t for t in tests if t.startswith("-") or (REPO_ROOT / t).exists()]

    only_mutate = args.only or list(packages.values())
    stage(workdir, only_mutate, tests)
    run_mutmut(workdir, names, args.jobs, quiet=args.sample)
    tallies = tally(workdir, packages, names)
    if args.only:
        tallies = {package: t for package, t in tallies.items() if t.statuses}
    report(tallies, workdir, diffs=not args.no_diffs)

    failures = []
    tested = sum(t.total for t in tallies.values())
    if args.sample and tested < SAMPLE_MIN_MUTANTS:
        failures.append(f"only {tested} mutants tested, expected at least {SAMPLE_MIN_MUTANTS}")
    for package, t in tallies.items():
        if t.total == 0:
            failures.append(f"{package}: no mutant was tested")
        elif t.score < args.min_score:
            failures.append(f"{package}: score {t.score:.1f}% under {args.min_score:.0f}%")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
