"""The Dockerfile and .dockerignore. No Docker engine is needed: hadolint plus static checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
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


def _parse(text: str | None = None) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text() if text is None else text):
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
    assert any(re.search(r"\bpip\b.*\binstall\b.* \.", run) for run in builder.args("RUN"))
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


# --- no packaging tools at run time ----------------------------------------------------------

VENV = "/opt/venv"
PACKAGING_TOOLS = ("pip", "setuptools", "wheel")


def _packaging_problems(text: str) -> list[str]:
    """Ways pip, setuptools or wheel could reach the runtime stage of the Dockerfile `text`."""
    _, stages = _parse(text)
    by_name = {stage.name: stage for stage in stages if stage.name}
    final = stages[-1]
    problems: list[str] = []
    for run in final.args("RUN"):
        if re.search(r"\bpip\b.*\binstall\b|-m ensurepip|get-pip|apt-get|\bvenv\b", run):
            problems.append(f"the runtime stage installs: {run}")
    # The base image's own copies must go, from site-packages and from ensurepip's bundle.
    removal = " ".join(run for run in final.args("RUN") if "rm -rf" in run)
    for tool in PACKAGING_TOOLS:
        if f"site-packages/{tool} " not in removal + " ":
            problems.append(f"the runtime stage keeps the base image's {tool}")
    if "ensurepip/_bundled" not in removal:
        problems.append("the runtime stage keeps ensurepip's bundled wheels")
    for copy in final.args("COPY"):
        source_stage = re.match(r"--from=(\S+)\s+(\S+)", copy)
        if source_stage is None:
            problems.append(f"the runtime stage copies from the build context: {copy}")
            continue
        stage_name, source = source_stage.groups()
        if source != VENV:
            problems.append(f"the runtime stage copies {source} from {stage_name}")
            continue
        # The copied virtualenv: created without pip, and nothing puts pip back into it.
        builder = by_name.get(stage_name)
        if builder is None:
            problems.append(f"no stage named {stage_name}")
            continue
        runs = builder.args("RUN")
        created = [run for run in runs if re.search(rf"-m venv\b.*\s{VENV}\b", run)]
        if not created or not all("--without-pip" in run for run in created):
            problems.append(f"{VENV} is not created with --without-pip")
        for run in runs:
            if re.search(rf"{VENV}/bin/(pip|python\S* -m (pip|ensurepip))\b|--upgrade-deps", run):
                problems.append(f"pip runs inside the virtualenv: {run}")
            for tool in PACKAGING_TOOLS:
                if re.search(rf"\binstall\b[^&;]*\s{tool}(\s|[=<>]|$)", run):
                    problems.append(f"{tool} is installed explicitly: {run}")
        if not any(f"--python {VENV}/bin/python install" in run for run in runs):
            problems.append(f"the dependencies are not installed into {VENV} from outside it")
        if not any(
            all(tool in run for tool in PACKAGING_TOOLS) and "exit 1" in run for run in runs
        ):
            problems.append("the builder does not check the virtualenv for packaging tools")
    return problems


def test_runtime_stage_has_no_pip_setuptools_or_wheel() -> None:
    assert _packaging_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            ("-m venv --without-pip /opt/venv", "-m venv /opt/venv"),
            "not created with --without-pip",
        ),
        (
            ("/opt/venv/bin/python check", "/opt/venv/bin/python check && /opt/venv/bin/pip -V"),
            "pip runs inside the virtualenv",
        ),
        (
            ("&& chmod 0750", "&& pip install --no-cache-dir setuptools==80.0.0 && chmod 0750"),
            "the runtime stage installs",
        ),
        (
            ("/usr/local/lib/python3*/site-packages/setuptools \\", "\\"),
            "keeps the base image's setuptools",
        ),
        (
            (
                "COPY --from=builder /opt/venv /opt/venv",
                "COPY --from=builder /usr/local /usr/local",
            ),
            "copies /usr/local from builder",
        ),
    ],
)
def test_packaging_check_catches_a_regression(mutation: tuple[str, str], expected: str) -> None:
    # Negative controls: each mutation of the real Dockerfile is caught.
    text = DOCKERFILE.read_text()
    old, new = mutation
    assert old in text, old
    problems = _packaging_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


def test_index_and_ca_bundle_can_be_passed_to_the_build() -> None:
    _, stages = _parse()
    builder, final = stages[0], stages[-1]
    args = {arg.partition("=")[0] for arg in builder.args("ARG")}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"} <= args
    [install] = [run for run in builder.args("RUN") if "install" in run and "--python" in run]
    assert "--mount=type=secret,id=ca_bundle,required=false" in install
    assert "--mount=type=secret,id=pip_index_url,required=false" in install
    assert "PIP_CERT=/run/secrets/ca_bundle" in install
    # The runtime stage neither declares them nor mounts secrets: nothing reaches its metadata.
    assert not {arg.partition("=")[0] for arg in final.args("ARG")} & args
    assert not any("--mount" in run for run in final.args("RUN"))
    guide = (REPO_ROOT / "docs" / "image.md").read_text()
    for name in ("PIP_INDEX_URL", "id=ca_bundle", "id=pip_index_url"):
        assert name in guide, name


# --- the sidecar alone ------------------------------------------------------------------------

# The build context the builder may copy: the sidecar's project file, its readme and its package.
SIDECAR_SOURCES = {"pyproject.toml", "README.md", "proxy"}


def _install_targets(run: str) -> list[str]:
    """What each `pip ... install` in a RUN installs: its arguments that are not options."""
    targets: list[str] = []
    for command in re.split(r"&&|;|\|\|", run):
        words = command.split()
        if "pip" in " ".join(words) and "install" in words:
            rest = words[words.index("install") + 1 :]
            targets += [word for word in rest if not word.startswith("-")]
    return targets


def _chaos_problems(text: str) -> list[str]:
    """Ways chaos/, the fault-injection server of the tests, could reach the image of `text`."""
    _, stages = _parse(text)
    problems: list[str] = []
    for stage in stages:
        for copy in stage.args("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = [word for word in copy.split() if not word.startswith("--")]
            for source in sources:
                path = source.removeprefix("./").rstrip("/")
                if path in ("", ".", "*"):
                    problems.append(f"the build copies the whole context: {copy}")
                elif path not in SIDECAR_SOURCES:
                    problems.append(f"the build copies {source}, which is not the sidecar's")
        for run in stage.args("RUN"):
            targets = _install_targets(run)
            if targets and targets != ["."]:
                problems.append(f"the build installs {targets}, not the sidecar's project alone")
            if "chaos" in run:
                problems.append(f"a RUN names chaos: {run}")
    return problems


def test_image_carries_no_chaos() -> None:
    assert _chaos_problems(DOCKERFILE.read_text()) == []
    # The project the builder installs ("." above) is the sidecar, and it packages proxy/ only;
    # tests/deploy/test_wheel.py checks the wheel that comes out of it.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "registry-proxy"
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert includes and all(pattern.startswith("proxy") for pattern in includes), includes
    assert _ignored("chaos") and _ignored("chaos/toxiproxy/server.py")


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("COPY proxy ./proxy", "COPY proxy ./proxy\nCOPY chaos ./chaos"), "copies chaos"),
        (("COPY proxy ./proxy", "COPY . ."), "copies the whole context"),
        (
            ("--no-binary=registry-proxy .", "--no-binary=registry-proxy . ./chaos"),
            "not the sidecar's project alone",
        ),
    ],
)
def test_chaos_check_catches_a_regression(mutation: tuple[str, str], expected: str) -> None:
    # Negative controls: each way of letting chaos/ into the image is caught.
    text = DOCKERFILE.read_text()
    old, new = mutation
    assert old in text, old
    problems = _chaos_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


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
        "chaos/pyproject.toml",
        "chaos/toxiproxy/server.py",
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
