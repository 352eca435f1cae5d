"""usp.kernel, the kernel-author kit: one public module, a pytree decorator type checkers understand,
plugins that need nothing else, and docs/plugins.md showing every public signature."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import usp.kernel
import usp.testing
from hypothesis import given
from hypothesis import strategies as st
from usp.domain import KernelForecast, KernelSpec, PredictorConfig, Window
from usp.plugins.hookspecs import hookimpl
from usp.plugins.manager import build_plugin_manager, resolve_kernels

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "plugins.md").read_text()
PLUGIN_MODULES = [ROOT / "tests" / "plugins" / "martingale_kernel.py",
                  ROOT / "examples" / "usp-ewma-kernel" / "usp_ewma_kernel.py",
                  ROOT / "examples" / "usp-ewma-kernel" / "test_usp_ewma_kernel.py"]


def test_the_kit_is_one_module_with_the_contract_objects():
    assert set(usp.kernel.__all__) == {"FitFn", "InitFn", "KernelEvent", "KernelForecast", "KernelReport", "KernelSpec",
                                       "KernelState", "PredictFn", "PredictorConfig", "ReportFn", "UpdateFn", "Window",
                                       "hookimpl", "pytree", "replace"}
    assert usp.kernel.KernelSpec is KernelSpec and usp.kernel.Window is Window
    assert usp.kernel.KernelForecast is KernelForecast and usp.kernel.PredictorConfig is PredictorConfig
    assert usp.kernel.hookimpl is hookimpl


def test_replace_copies_a_pytree_instance_with_fields_changed():
    pair = Pair(level=jnp.float64(1.5), count=jnp.int32(3))
    moved = usp.kernel.replace(pair, level=jnp.float64(2.5))
    assert type(moved) is Pair and float(moved.level) == 2.5 and int(moved.count) == 3
    assert float(pair.level) == 1.5  # the original is untouched
    with pytest.raises(TypeError):
        usp.kernel.replace(pair, sigma=jnp.float64(1.0))


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda path: path.name)
def test_plugins_import_only_the_public_kit(path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                 [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            if name == "usp" or name.startswith("usp."):
                assert name in ("usp.kernel", "usp.testing"), (path.name, name)


def test_pytree_is_a_frozen_dataclass_transform_with_attrs_fields():
    marker = usp.kernel.pytree.__dataclass_transform__
    frozen = marker.get("frozen_default", marker.get("kwargs", {}).get("frozen_default"))
    assert frozen is True and marker["field_specifiers"] == (attrs.field,)


@usp.kernel.pytree
class Pair:
    level: jax.Array
    count: jax.Array = attrs.field(default=jnp.int32(0))


def test_pytree_classes_are_frozen_registered_and_keep_their_field_order():
    pair = Pair(level=jnp.float64(1.5))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        pair.level = jnp.float64(2.0)  # type: ignore[misc]
    assert [float(leaf) for leaf in jax.tree_util.tree_leaves(pair)] == [1.5, 0.0]
    step = jax.jit(jax.vmap(lambda p: Pair(p.level * 2, p.count + 1)))
    doubled = step(Pair(jnp.arange(3.0), jnp.zeros(3, jnp.int32)))
    assert isinstance(doubled, Pair) and doubled.level.tolist() == [0.0, 2.0, 4.0]
    assert doubled.count.tolist() == [1, 1, 1]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=2), st.integers(-2**31, 2**31 - 1))
def test_pytree_flatten_unflatten_round_trips_bit_exactly(levels, count):
    pair = Pair(jnp.asarray(levels, jnp.float64), jnp.int32(count))
    leaves, treedef = jax.tree_util.tree_flatten(pair)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert np.asarray(back.level).tobytes() == np.asarray(levels, np.float64).tobytes()
    assert int(back.count) == count and type(back) is Pair


USER_CODE = """\
import jax
import jax.numpy as jnp
from usp.kernel import KernelForecast, pytree, replace


@pytree
class MyState:
    level: jax.Array
    seen: jax.Array


state = MyState(level=jnp.float64(0.0), seen=jnp.int32(0))
forecast = KernelForecast(mean=state.level, scale=jnp.float64(1.0))
wrong = KernelForecast(mean=state.level, sigma=jnp.float64(1.0))
state.level = jnp.float64(1.0)
moved = replace(state, level=jnp.float64(2.0))
seen: jax.Array = moved.seen
sharper = replace(forecast, scale=jnp.float64(0.5)).scale
count: int = replace(state, seen=jnp.int32(1))
"""


def test_mypy_understands_the_pytree_classes_of_a_plugin(tmp_path):
    """mypy on a user's module and on the example plugin: keywords of a @pytree class and of
    KernelForecast are checked, fields are read-only, ``replace`` returns the instance's own
    type, and the example plugin is clean."""
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "usp").symlink_to(ROOT / "src")  # the installed layout: usp = src/
    (tmp_path / "user_kernel.py").write_text(USER_CODE)
    env = {**os.environ, "MYPYPATH": str(tmp_path / "path")}
    checked = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
                              "--cache-dir", str(ROOT / ".mypy_cache" / "kernel_kit"), "user_kernel.py",
                              str(PLUGIN_MODULES[1])], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=300)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert errors == [
        'user_kernel.py:14: error: Unexpected keyword argument "sigma" for "KernelForecast"  [call-arg]',
        'user_kernel.py:15: error: Property "level" defined in "MyState" is read-only  [misc]',
        'user_kernel.py:19: error: Incompatible types in assignment (expression has type "MyState", variable has '
        'type "int")  [assignment]',
    ], checked.stdout + checked.stderr


def _normalised(text: str) -> str:
    return " ".join(text.replace("'", "").replace('"', "").split())


PUBLIC = [usp.kernel.KernelSpec, usp.kernel.Window, usp.kernel.KernelForecast, usp.kernel.pytree,
          usp.kernel.replace, usp.testing.check_kernel, usp.testing.check_config, usp.testing.KernelCheckReport,
          usp.testing.KernelCheckError, build_plugin_manager, resolve_kernels]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_docs_show_the_full_signature_of_every_public_name(obj):
    signature = inspect.signature(obj)
    if inspect.isclass(obj):
        signature = signature.replace(return_annotation=inspect.Signature.empty)
    assert _normalised(f"{obj.__name__}{signature}") in _normalised(DOC), obj.__name__


def test_docs_list_every_check_and_every_kit_name():
    for name, requirement in usp.testing.CHECKS.items():
        assert f"| `{name}` | {requirement} |" in DOC, name
    for name in (*usp.kernel.__all__, *usp.testing.__all__):
        assert name in DOC, name
    for alias in ("InitFn", "UpdateFn", "PredictFn", "FitFn"):
        assert f"{alias} = Callable[" in DOC


def test_the_fit_contract_is_documented_where_kernel_authors_read_it():
    for text in (DOC, usp.kernel.KernelSpec.__doc__ or "", inspect.getmodule(KernelSpec).__doc__ or ""):
        flat = " ".join(text.split())
        assert "fit_history" in flat and "once" in flat and "replay" in flat, text[:80]
    assert textwrap.dedent("""
        - It must **not** replay `update` over the history: the scan already did, and the kernel would
          learn the history twice.""") in DOC


def _doc_block(heading: str) -> str:
    """The first python block of docs/plugins.md under ``## heading``."""
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_docs_example_of_an_uninstalled_kernel_runs(monkeypatch):
    """Both ways of trying a kernel that is not installed, as the docs show them, with the example
    module on sys.path and no entry point for it (the predictors skip their warm-up compilation)."""
    from usp.application.functional import FunctionalPredictor

    monkeypatch.syspath_prepend(str(ROOT / "examples" / "usp-ewma-kernel"))
    monkeypatch.setattr(FunctionalPredictor, "warm_up", lambda self, state=None, **options: None)
    code = _doc_block("Trying a kernel without packaging it")
    assert "kernels=[usp_ewma_kernel.EWMA]" in code and "plugin_manager=build_plugin_manager([usp_ewma_kernel])" in code
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    ewma = namespace["usp_ewma_kernel"].EWMA
    alone, mixed = namespace["alone"].functional, namespace["mixed"].functional
    assert alone.kernel_names == ("EWMA",) and alone.kernels[0] is ewma
    assert mixed.kernel_names == ("A", "EWMA") and mixed.kernels[1].update is ewma.update
    assert mixed.kernels[1].source == "usp_ewma_kernel"  # registered as a module, not a distribution
