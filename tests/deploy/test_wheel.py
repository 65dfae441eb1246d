"""The two wheels: the sidecar's (what the image installs) and the chaos tooling's.

chaos/ is a fault-injection server: production must never carry it, so it is a distribution of its
own (chaos/pyproject.toml) and the sidecar's wheel holds proxy/ only. Both wheels are built here
the way pip builds them, from a copy of the sources: setuptools reuses a stale build/ directory,
so a build in the checkout could report files the configuration no longer selects. The build runs
offline, without build isolation, on the setuptools and wheel of the test extras.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ignore(root: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        # Generated files of a developer checkout; build/ and dist/ only at a project root.
        ignored = {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
        if Path(directory) == root:
            ignored |= {"build", "dist"} & set(names)
        return ignored

    return ignore


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chaos/ is copied too: a wheel without it proves something only if it was there to take.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for package in ("proxy", "chaos"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=_ignore(REPO_ROOT / package))
    return src


def _build(project: Path, out: Path) -> zipfile.ZipFile:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def sidecar_wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _build(sources, tmp_path_factory.mktemp("sidecar"))


@pytest.fixture(scope="module")
def chaos_wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _build(sources / "chaos", tmp_path_factory.mktemp("chaos"))


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def _requires(wheel: zipfile.ZipFile) -> set[str]:
    """Canonical names of the unconditional dependencies in the wheel's metadata."""
    metadata = Parser().parsestr(_dist_info(wheel, "METADATA"))
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    return {
        canonicalize_name(req.name)
        for req in requirements
        if req.marker is None or "extra" not in str(req.marker)
    }


def _sources(package: str) -> set[str]:
    """The package's modules and data files in the checkout, as wheel paths."""
    root = REPO_ROOT / package
    return {
        f"{package}/{path.relative_to(root).as_posix()}"
        for pattern in ("**/*.py", "**/*.sql", "**/py.typed")
        for path in root.glob(pattern)
        if "__pycache__" not in path.parts and "build" not in path.relative_to(root).parts
    }


def test_sidecar_wheel_has_no_chaos(sidecar_wheel: zipfile.ZipFile) -> None:
    names = sidecar_wheel.namelist()
    assert not [name for name in names if name.startswith("chaos/") or "/chaos/" in name]
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"proxy", "registry_proxy-0.1.0.dist-info"}, tops
    assert "registry-proxy-chaos" not in _requires(sidecar_wheel)


def test_sidecar_wheel_has_every_module_the_migrations_and_py_typed(
    sidecar_wheel: zipfile.ZipFile,
) -> None:
    names = set(sidecar_wheel.namelist())
    expected = _sources("proxy")
    migrations = {name for name in expected if name.startswith("proxy/store/migrations/")}
    assert any(name.endswith(".sql") for name in migrations), "no migration found in the checkout"
    assert {"proxy/__init__.py", "proxy/cli.py", "proxy/py.typed"} <= expected
    assert sorted(expected - names) == []


def test_sidecar_wheel_installs_the_console_script(sidecar_wheel: zipfile.ZipFile) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(sidecar_wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == {"registry-proxy": "proxy.cli:main"}


def test_chaos_wheel_has_all_of_chaos_and_nothing_else(chaos_wheel: zipfile.ZipFile) -> None:
    # The package list in chaos/pyproject.toml is explicit: a new subpackage must be added to it.
    names = set(chaos_wheel.namelist())
    modules = {name for name in names if not name.startswith("registry_proxy_chaos-")}
    assert modules == _sources("chaos"), sorted(modules ^ _sources("chaos"))


def test_chaos_wheel_depends_on_what_chaos_imports(chaos_wheel: zipfile.ZipFile) -> None:
    imported: set[str] = set()
    for path in (REPO_ROOT / "chaos").rglob("*.py"):
        if "build" in path.relative_to(REPO_ROOT / "chaos").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"chaos"}
    distributions = packages_distributions()
    needed = {canonicalize_name(distributions[name][0]) for name in third_party}
    assert needed, "chaos/ imports no third-party package: the check has nothing to check"
    assert needed <= _requires(chaos_wheel), needed - _requires(chaos_wheel)
