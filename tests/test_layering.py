"""The package boundaries of DESIGN.md, checked on the source: models imports neither offline nor monitor,
monitor never imports offline. A violation names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"models": {"offline", "monitor"}, "monitor": {"offline"}, "offline": {"monitor"}}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    violations = [
        f"{f.relative_to(ROOT)}:{line} imports {name}"
        for f in files
        for line, name in _imports(f)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not violations, "\n".join(violations)
