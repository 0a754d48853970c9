"""The core does no I/O and knows no file format: it imports the standard library, itself and the error tree
only (no pydantic, no rules loader, no AWS library, no clock or file-system modules)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).parent.parent / "reconciler" / "core"
ALLOWED_OWN = ("reconciler.core", "reconciler.errors")
FORBIDDEN_STDLIB = {"asyncio", "os", "io", "pathlib", "socket", "time", "tomllib", "subprocess", "logging"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_core_imports_only_the_standard_library_itself_and_the_error_tree() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "reconciler":
                assert name.startswith(ALLOWED_OWN), f"{path.name} imports {name}"
            else:
                assert top in sys.stdlib_module_names, f"{path.name} imports {name}"
                assert top not in FORBIDDEN_STDLIB, f"{path.name} imports {name}"
