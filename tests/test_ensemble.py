"""Kernel plugins take part in the ensemble, and the weighting finds the right kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
from usp import ConfigError, FunctionalPredictor, PredictorConfig
from usp.domain._core import Out
from usp.plugins.manager import available_kernels, build_plugin_manager, resolve_kernels

from .helpers import ar2, one_step_errors, random_walk
from .plugins import martingale_kernel

SITE = Path(__file__).parent / "plugins" / "site"
ROOT = Path(__file__).resolve().parent.parent
ENSEMBLE = PredictorConfig(enabled_kernels=("A", "M"))
WARMUP = 500


@pytest.fixture(scope="module")
def ensemble() -> FunctionalPredictor:
    return FunctionalPredictor(ENSEMBLE, plugin_manager=build_plugin_manager([martingale_kernel]))


def test_entry_point_plugin_is_discovered(monkeypatch):
    monkeypatch.syspath_prepend(str(SITE))
    kernels = available_kernels(build_plugin_manager())
    assert kernels["A"].source == "builtin"
    assert kernels["M"].source == "usp-test-martingale 1.0"
    assert [k.name for k in resolve_kernels(ENSEMBLE, build_plugin_manager())] == ["A", "M"]


def test_kernels_list_command_shows_installed_plugin():
    env = {"PYTHONPATH": f"{SITE}:{ROOT}", "PATH": "/usr/bin:/bin"}
    shown = subprocess.run([sys.executable, "-m", "usp.cli", "kernels", "list"], capture_output=True,
                           text=True, env=env, check=True).stdout
    assert "A  [builtin]" in shown
    assert "M  [usp-test-martingale 1.0]" in shown


def test_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="enabled_kernels"):
        resolve_kernels(attrs.evolve(ENSEMBLE, enabled_kernels=("A", "nope")), build_plugin_manager())


def test_extra_kernel_takes_part_in_the_ensemble(ensemble):
    series = random_walk(1500, seed=3)
    _, outputs = ensemble._scan(ensemble.init_state(), series)
    outputs = np.asarray(outputs)
    weights = outputs[:, Out.SIZE:Out.SIZE + 2]
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-10)
    assert weights[WARMUP:, 1].max() > 0.05 and weights[WARMUP:, 0].max() > 0.05
    assert weights[WARMUP:, 1].std() > 0  # the transport moves the plugin's weight
    means = outputs[-1, Out.SIZE + 2:Out.SIZE + 4]
    assert means[1] == series[-1]  # the plugin's own forecast is what the core mixes


@pytest.mark.parametrize("seed", [21, 22])
def test_weighting_matches_the_naive_forecast_on_a_random_walk(ensemble, seed):
    series = random_walk(4000, seed)
    _, outputs = ensemble._scan(ensemble.init_state(), series)
    fused = np.mean(one_step_errors(series, np.asarray(outputs), WARMUP) ** 2)
    naive = np.mean((series[WARMUP + 1:] - series[WARMUP:-1]) ** 2)
    assert fused <= 1.02 * naive, fused / naive


@pytest.mark.parametrize("seed", [31, 32])
def test_weighting_matches_the_oracle_on_an_ar2(ensemble, seed):
    series, noise = ar2(4000, seed)
    _, outputs = ensemble._scan(ensemble.init_state(), series)
    outputs = np.asarray(outputs)
    fused = np.mean(one_step_errors(series, outputs, WARMUP) ** 2)
    oracle = np.mean(noise[WARMUP + 1:] ** 2)
    naive = np.mean((series[WARMUP + 1:] - series[WARMUP:-1]) ** 2)
    assert fused <= 1.05 * oracle, fused / oracle
    assert naive > 1.3 * oracle  # the martingale kernel is clearly the wrong one here
    assert outputs[WARMUP:, Out.SIZE].mean() > 0.8  # and the weighting knows it
