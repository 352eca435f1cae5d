"""A broken installed plugin is reported and skipped; it names itself when a config enables it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from usp import ConfigError, FunctionalPredictor, PredictorConfig
from usp.plugins.manager import available_kernels, broken_plugins, build_plugin_manager, resolve_kernels

ROOT = Path(__file__).resolve().parent.parent

#: Module bodies of installed plugins, each broken in its own way.
BROKEN = {
    "import_fails": "import usp_dependency_that_is_not_installed\n",
    "hook_raises": """
        from usp.plugins.hookspecs import hookimpl

        @hookimpl
        def usp_register_kernels():
            raise RuntimeError("licence server unreachable")
    """,
    "not_a_kernel": """
        from usp.plugins.hookspecs import hookimpl

        @hookimpl
        def usp_register_kernels():
            return ["K"]
    """,
    "unknown_hook": """
        from usp.plugins.hookspecs import hookimpl

        @hookimpl
        def usp_register_kernals():
            return []
    """,
}


def install_plugin(site: Path, name: str, body: str) -> Path:
    """An installed distribution ``usp-test-<name> 1.0`` whose ``usp`` entry point ``name`` is the
    module ``usp_test_plugin_<name>`` with ``body``: a real entry point, found by importlib."""
    info = site / f"usp_test_{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: usp-test-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[usp]\n{name} = usp_test_plugin_{name}\n")
    (site / f"usp_test_plugin_{name}.py").write_text(textwrap.dedent(body))
    return site


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    for name, body in BROKEN.items():
        install_plugin(tmp_path / "site", name, body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tmp_path / "site"


def test_broken_plugins_are_listed_and_skipped(site):
    manager = build_plugin_manager()
    assert set(available_kernels(manager)) == {"A", "B", "C", "D", "N", "S"}
    broken = {b.name: b for b in broken_plugins(manager)}
    assert set(broken) == set(BROKEN)
    assert broken["import_fails"].source == "usp-test-import_fails 1.0"
    assert broken["import_fails"].error == ("ModuleNotFoundError: No module named "
                                            "'usp_dependency_that_is_not_installed'")
    assert broken["hook_raises"].error == "RuntimeError: licence server unreachable"
    assert "not KernelSpec" in broken["not_a_kernel"].error
    assert "usp_register_kernals" in broken["unknown_hook"].error
    # a predictor that does not enable them is built as if they were not installed
    assert FunctionalPredictor(PredictorConfig(enabled_kernels=("A",))).kernel_names == ("A",)


def test_enabling_a_broken_plugin_names_it_and_its_error(site):
    with pytest.raises(ConfigError, match=r"enabled_kernels names \['import_fails'\].*plugin 'import_fails' "
                       r"\(usp-test-import_fails 1.0\): ModuleNotFoundError: No module named "
                       r"'usp_dependency_that_is_not_installed'"):
        resolve_kernels(PredictorConfig(enabled_kernels=("A", "import_fails")), build_plugin_manager())


def test_explicit_plugins_are_not_isolated():
    class Wrong:
        from usp.plugins.hookspecs import hookimpl

        @staticmethod
        @hookimpl
        def usp_register_kernels():
            return ["K"]

    with pytest.raises(Exception, match="not KernelSpec"):
        available_kernels(build_plugin_manager([Wrong()], entry_points=False))


def test_cli_lists_a_broken_plugin_and_refuses_a_config_enabling_it(tmp_path):
    site = install_plugin(tmp_path / "site", "import_fails", BROKEN["import_fails"])
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "usp.cli", "kernels", "list"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert "A  " in listed.stdout
    assert ("import_fails  [usp-test-import_fails 1.0]  BROKEN (skipped): ModuleNotFoundError: No module named "
            "'usp_dependency_that_is_not_installed'") in listed.stdout
    config = tmp_path / "enables.toml"
    config.write_text('[kernels]\nenabled_kernels = ["A", "import_fails"]\n')
    checked = subprocess.run([sys.executable, "-m", "usp.cli", "config", "check", str(config)], capture_output=True,
                             text=True, env=env, timeout=120)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    error = [line for line in checked.stderr.splitlines() if line.startswith("usp: error:")]
    assert len(error) == 1 and "plugin 'import_fails'" in error[0] and "No module named" in error[0]
    fine = subprocess.run([sys.executable, "-m", "usp.cli", "config", "check", str(ROOT / "config.toml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert fine.returncode == 0 and "ok (kernels: A [builtin], D [builtin], N [builtin], S [builtin])" in fine.stdout
