"""The dependency rule of docs/architecture.md, the plugin docs, and no pickle anywhere."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from usp.plugins import hookspecs

SRC = Path(__file__).resolve().parent.parent / "src"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_domain_imports_only_itself_and_libraries():
    for path in (SRC / "domain").rglob("*.py"):
        for name in _imports(path):
            depth = len(path.relative_to(SRC / "domain").parts)  # 1 = directly in domain/
            assert not name.startswith("usp") and not name.startswith("." * (depth + 1)), (path, name)


def test_application_and_plugins_never_import_concrete_adapters_at_module_level():
    for folder in ("application", "plugins"):
        for path in (SRC / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module and "adapters" in node.module:
                    raise AssertionError(f"{path} imports {node.module} at module level")


def test_no_pickle_in_the_package():
    for path in SRC.rglob("*.py"):
        assert "pickle" not in _imports(path), path


def test_every_hookspec_is_documented_with_its_signature():
    doc = (DOCS / "plugins.md").read_text()
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("usp_"):
            assert f"{name}{inspect.signature(function)}".replace("'", "") in doc.replace("'", ""), name
