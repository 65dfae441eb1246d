"""The Dockerfile and .dockerignore. No Docker engine is needed: hadolint plus static checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BIN = Path(sys.executable).parent
JOURNAL_DIR = "/var/lib/registry-proxy/journal"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def _final() -> Stage:
    return _parse()[1][-1]


def _binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} not found at {path}: run `make tools` (it installs the dev extras)")
    return path


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [
            str(_binary("hadolint")),
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--format",
            "json",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python_311() -> None:
    _, stages = _parse()
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    for stage in stages:
        assert re.fullmatch(
            r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", stage.base
        )
    assert stages[0].base == stages[-1].base, "the venv needs the same interpreter path"


def test_dependencies_are_installed_in_the_builder_only() -> None:
    _, stages = _parse()
    builder, final = stages[0], stages[-1]
    assert any("pip install" in run and " ." in run for run in builder.args("RUN"))
    for run in final.args("RUN"):
        assert "pip install" not in run
        assert not re.search(r"apt-get|apk |gcc|build-essential|make ", run), run
    copies = final.args("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies


def test_user_is_numeric_and_not_root() -> None:
    users = _final().args("USER")
    assert users, "the final stage sets no USER"
    user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, user
    assert not gid or (gid.isdigit() and int(gid) > 0), user
    assert int(uid) == 10001, "the chart's securityContext uses 10001"


def test_entrypoint_and_cmd_are_exec_form() -> None:
    final = _final()
    assert [json.loads(arg) for arg in final.args("ENTRYPOINT")] == [["registry-proxy"]]
    assert [json.loads(arg) for arg in final.args("CMD")] == [["serve"]]


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in stage.args("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", arg):
            env[key] = value
    return env


def test_environment_for_a_read_only_root_filesystem() -> None:
    final = _final()
    env = _env(final)
    assert env["REGISTRY_PROXY_JOURNAL__DIR"] == JOURNAL_DIR
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    volumes = [path for arg in final.args("VOLUME") for path in json.loads(arg)]
    assert JOURNAL_DIR in volumes and "/tmp" in volumes
    assert any(JOURNAL_DIR in run and "chown" in run for run in final.args("RUN"))


def test_no_healthcheck_and_no_secrets_baked_in() -> None:
    final = _final()
    assert not final.args("HEALTHCHECK")  # Kubernetes probes instead, see the chart
    env = _env(final)
    for secret in ("REGISTRY_PROXY_DATABASE_URL", "REGISTRY_PROXY_TOKENS"):
        assert secret not in env


# --- .dockerignore ---------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per line, in order; the last matching line decides, like Docker's."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**", i):
                regex += ".*"
                i += 2
                if line.startswith("/", i):
                    regex += "/?"
                    i += 1
                continue
            char = line[i]
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end
            else:
                regex += re.escape(char)
            i += 1
        patterns.append((negated, re.compile(regex.replace(".*/?", "(.*/)?"))))
    return patterns


def _ignored(path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in _ignore_patterns():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/proxy.meta.json",
        ".ruff_cache/CACHEDIR.TAG",
        "bench/results/run.json",
        "tests/unit/test_journal.py",
        "var/journal/00000001.log",
        ".env",
        "proxy/__pycache__/settings.cpython-311.pyc",
        "proxy/store/__pycache__/db.cpython-311.pyc",
        "registry_proxy.egg-info/PKG-INFO",
        "helm/registry-proxy/values.yaml",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert _ignored(path), path


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "proxy/__init__.py", "proxy/store/migrations/0001_x.sql"],
)
def test_dockerignore_keeps_the_build_inputs(path: str) -> None:
    assert not _ignored(path), path


def test_every_copied_path_exists_and_reaches_the_context() -> None:
    _, stages = _parse()
    for stage in stages:
        for copy in stage.args("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), source
                assert not _ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # Negative control: the linter runs and fails on a Dockerfile with known issues.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run(
        [str(_binary("hadolint")), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3003"} <= codes, codes
