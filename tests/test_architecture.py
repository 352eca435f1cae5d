"""The dependency rule of docs/architecture.md, the plugin docs, and no pickle anywhere."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from usp.plugins import hookspecs

SRC = Path(__file__).resolve().parent.parent / "src"
DOCS = Path(__file__).resolve().parent.parent / "docs"

#: What the application and the domain may never import, at any depth (function-level included):
#: the composition root and everything only it may know.
FORBIDDEN_IN_CORE_LAYERS = ("usp.adapters", "usp.container", "usp.cli", "usp._cli_run", "usp.plugins.manager",
                            "usp.composition")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import anywhere in ``source`` (module, class or
    function level: ``ast.walk``), the module being ``module`` (e.g. ``usp.application.functional``).

    Relative imports are resolved against ``module``'s package; ``from X import y`` yields both
    ``X`` and ``X.y`` (``y`` may be a submodule); ``importlib.import_module("...")`` and
    ``__import__("...")`` with a literal name count as imports too.
    """
    package = module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, origin))
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def forbidden_imports(source: str, module: str) -> list[str]:
    """``"line: module"`` for each import of :data:`FORBIDDEN_IN_CORE_LAYERS` in ``source``."""
    return [f"{line}: {name}" for line, name in imported_modules(source, module)
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN_IN_CORE_LAYERS)]


def _module_name(path: Path) -> str:
    return ".".join(("usp", *path.relative_to(SRC).with_suffix("").parts))


def test_domain_imports_only_itself_and_libraries():
    for path in (SRC / "domain").rglob("*.py"):
        for name in _imports(path):
            depth = len(path.relative_to(SRC / "domain").parts)  # 1 = directly in domain/
            assert not name.startswith("usp") and not name.startswith("." * (depth + 1)), (path, name)


@pytest.mark.parametrize("layer", ["application", "domain"])
def test_core_layers_never_import_the_composition_root_or_what_it_wires(layer):
    """No import of the container, the adapters, the CLI, the plugin manager or the composition
    root anywhere in ``application`` or ``domain``: module level, or lazily inside a function."""
    files = sorted((SRC / layer).rglob("*.py"))
    assert files
    violations = {str(path.relative_to(SRC)): found for path in files
                  if (found := forbidden_imports(path.read_text(), _module_name(path)))}
    assert violations == {}


@pytest.mark.parametrize("source", [
    "def f():\n    from ..adapters.clocks import SystemClock\n",
    "def f():\n    from .. import container\n",
    "class C:\n    def m(self):\n        import usp.plugins.manager as m\n",
    "def f():\n    from ..plugins.manager import resolve_kernels\n",
    "def f():\n    from ..plugins import manager\n",
    "def f():\n    import importlib\n    importlib.import_module('usp.adapters.stores')\n",
    "from ..composition import UniversalPredictor\n",
    "from ... import cli\n",  # from usp.application.sub: two levels up is usp
])
def test_the_import_check_sees_lazy_and_relative_imports(source):
    module = "usp.application.sub.example" if source.startswith("from ...") else "usp.application.example"
    assert forbidden_imports(source, module), source


def test_the_import_check_allows_the_domain_ports_and_siblings():
    source = ("from ..domain import PredictorConfig\nfrom ..ports.state_store import StateStore\n"
              "from .types import ProcessState\nfrom ..plugins import builtin\nimport jax\n")
    assert forbidden_imports(source, "usp.application.example") == []


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
