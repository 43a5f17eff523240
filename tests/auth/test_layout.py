"""The shape of the auth use cases: families that never import one another, each file small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "services" / "auth" / "handlers"
SHARED = {"context", "events"}
FAMILIES = sorted(p for p in HANDLERS.glob("*.py") if p.stem not in SHARED | {"__init__"})


def _siblings(path: Path) -> set[str]:
    """The modules of the handlers package that `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_there_are_families():
    assert len(FAMILIES) >= 4, FAMILIES


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.stem)
def test_a_family_imports_only_the_shared_modules(path: Path):
    assert _siblings(path) <= SHARED, f"{path.name} imports another family: {_siblings(path) - SHARED}"


def test_the_shared_modules_import_no_family():
    assert _siblings(HANDLERS / "context.py") == set()
    assert _siblings(HANDLERS / "events.py") <= {"context"}


@pytest.mark.parametrize("path", sorted(HANDLERS.glob("*.py")), ids=lambda p: p.stem)
def test_no_handlers_file_is_over_350_lines(path: Path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 350
