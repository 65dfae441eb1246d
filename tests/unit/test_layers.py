"""The layering rules of the design, checked on the source: lower layers never import higher
ones, resilience knows nothing of agents, and the registry domain does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "proxy"
ORDER = ["registry", "store", "resilience", "service", "http"]
# Which packages each layer may import from (besides itself and the standard library).
ALLOWED = {
    "registry": set(),
    "resilience": set(),
    "observability": set(),
    # observability imports nothing of the sidecar: any layer may log through its helpers.
    "store": {"registry", "resilience", "observability"},
    "service": {"registry", "resilience", "store", "settings"},
    "http": {"registry", "resilience", "store", "service", "settings", "observability"},
}
IO_MODULES = {"asyncpg", "aiohttp", "socket", "subprocess", "os", "pathlib", "io", "shutil"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    for path in (ROOT / layer).rglob("*.py"):
        for name in _imports(path):
            if not name.startswith("proxy."):
                continue
            target = name.split(".")[1]
            assert target == layer or target in ALLOWED[layer], f"{path.name} imports {name}"


def test_registry_domain_does_no_io() -> None:
    for path in (ROOT / "registry").rglob("*.py"):
        used = {name.split(".")[0] for name in _imports(path)}
        assert not used & IO_MODULES, f"{path.name} imports {used & IO_MODULES}"
        assert "open(" not in path.read_text(), path.name


def test_resilience_knows_nothing_of_agents() -> None:
    for path in (ROOT / "resilience").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        strings = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) < 80
        }
        assert not [x for x in names | strings if "agent" in x.lower()], path.name
