"""Hot reload: ``ConfigReloadablePredictor`` picks up a config written by the mutation protocol,
compiling before it swaps (the next tick compiles nothing); a sensitivity change keeps the state,
a structural one starts cold, an invalid file changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from usp import ConfigReloadablePredictor, ProcessState, ReplayClock
from usp.application.config_mutation import mutate_config
from usp.application.reloadable import keeps_state
from usp.domain._config import config_to_sections

from .helpers import random_walk
from .test_compile_cache import traced_functions
from .test_tuning import TINY

T0 = 1_800_000_000_000_000_000
STEP = 1_000_000


def _toml(sections) -> str:
    import tomlkit

    return tomlkit.dumps({name: table for name, table in sections.items() if table})


def write_tiny_config(directory: Path) -> Path:
    """``directory/config.toml``: the TINY config, with a comment."""
    sections = config_to_sections(TINY)
    keep = {"sensitivity": ["kurtosis_window"], "kernels": ["enabled_kernels", "window_size", "kernel_a_order"],
            "numerical": ["wtmm_buffer_size", "wtmm_refresh_steps"]}
    path = directory / "config.toml"
    path.write_text("# the feed's config\n" + _toml({s: {k: sections[s][k] for k in keys} for s, keys in keep.items()}))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_tiny_config(tmp_path)


def _feed(predictor, values, start: int = 0) -> None:
    for i, value in enumerate(values, start):
        predictor.step(ProcessState(float(value), T0 + i * STEP))


def test_a_sensitivity_mutation_is_picked_up_with_the_state_kept(config_file):
    predictor = ConfigReloadablePredictor(config_file, ReplayClock())
    assert predictor.config == TINY
    _feed(predictor, random_walk(60, seed=2))
    assert not predictor.check_and_reload_config()  # unchanged
    window = np.asarray(predictor.state.window)
    mutate_config(config_file, {"cusum_k": 0.7, "grace_period_steps": 24})
    assert predictor.check_and_reload_config()
    assert predictor.config.cusum_k == 0.7 and predictor.config.grace_period_steps == 24 and predictor.reloads == 1
    np.testing.assert_array_equal(np.asarray(predictor.state.window), window)
    assert int(predictor.state.count) == 60
    with traced_functions() as traced:  # compiled by the reload, not by the tick
        _feed(predictor, [1.0, 1.1], start=60)
    assert traced == []
    assert int(predictor.state.count) == 62


def test_a_structural_mutation_starts_from_a_cold_state(config_file):
    predictor = ConfigReloadablePredictor(config_file, ReplayClock())
    _feed(predictor, random_walk(40, seed=3))
    mutate_config(config_file, {"kurtosis_window": 24}, guardrails=None)
    assert predictor.check_and_reload_config()
    assert predictor.config.kurtosis_window == 24 and int(predictor.state.count) == 0
    assert predictor.state.monitor.resid_window.shape == (24,)
    _feed(predictor, [0.5, 0.6])
    assert int(predictor.state.count) == 2


def test_an_invalid_file_is_not_adopted(config_file):
    predictor = ConfigReloadablePredictor(config_file, ReplayClock())
    _feed(predictor, random_walk(30, seed=4))
    good = config_file.read_text()
    config_file.write_text(good.replace("kurtosis_window = 16", "kurtosis_window = 2"))
    assert not predictor.check_and_reload_config()
    assert "kurtosis_window = 2" in predictor.reload_error and predictor.config == TINY
    assert int(predictor.state.count) == 30
    config_file.write_text(good)  # back to the same bytes: nothing to adopt
    assert not predictor.check_and_reload_config() and predictor.reload_error is None
    os.utime(config_file, ns=(T0, T0))  # touched only
    assert not predictor.check_and_reload_config() and int(predictor.state.count) == 30


def test_which_changes_keep_the_state():
    assert keeps_state(TINY, TINY.__class__(**{**_fields(TINY), "cusum_h": 5.0, "snapshot_path": "elsewhere"}))
    assert not keeps_state(TINY, TINY.__class__(**{**_fields(TINY), "volatility_alpha": 0.2}))


def _fields(config) -> dict:
    import attrs

    return attrs.asdict(config, recurse=False)
