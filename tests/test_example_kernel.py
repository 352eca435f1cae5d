"""The worked example of docs/plugins.md, examples/usp-ewma-kernel, as an installed plugin: its entry
point registers it, it passes check_kernel, ``usp run`` mixes it in, its ``fit`` follows the fit
contract, and the docs show its files as they are."""

from __future__ import annotations

import csv
import functools
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from usp import FunctionalPredictor
from usp.kernel import Window
from usp.plugins.manager import available_kernels, build_plugin_manager
from usp.testing import CHECKS, check_config, check_kernel

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "usp-ewma-kernel"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]


def install_example(site: Path) -> Path:
    """Register the example distribution as pip would, from its pyproject.toml, without installing
    into the venv: a ``*.dist-info`` with METADATA and entry_points.txt (its module stays in
    examples/ and goes on the path next to it)."""
    info = site / f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PROJECT['name']}\nVersion: {PROJECT['version']}\n")
    points = "".join(f"{name} = {value}\n" for name, value in PROJECT["entry-points"]["usp"].items())
    (info / "entry_points.txt").write_text(f"[usp]\n{points}")
    return site


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example module, importable, with its entry point registered."""
    site = install_example(tmp_path_factory.mktemp("site"))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        patch.syspath_prepend(str(site))
        yield importlib.import_module("usp_ewma_kernel"), site


def test_the_entry_point_registers_the_kernel_with_its_distribution(example):
    module, _ = example
    kernels = available_kernels(build_plugin_manager())
    assert kernels["EWMA"].source == "usp-ewma-kernel 0.1.0"
    assert kernels["EWMA"].update is module.update and kernels["EWMA"].fit is module.fit


def test_check_kernel_passes_on_the_example_with_fit_honoured(example):
    module, _ = example
    report = check_kernel(module.EWMA)
    assert list(report.passed) == [c for c in CHECKS if c != "report"] and report.skipped == ("report",)
    assert report.notes == ()


def test_usp_run_mixes_the_example_kernel_in(example, tmp_path):
    _, site = example
    data, out = tmp_path / "co2.csv", tmp_path / "predictions.csv"
    with (ROOT / "data" / "co2_weekly_mauna_loa.csv").open() as source:
        data.write_text("".join(line for _, line in zip(range(301), source, strict=False)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE)])}
    run = subprocess.run([sys.executable, "-m", "usp.cli", "run", str(data), "--config", str(EXAMPLE / "config.toml"),
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "(kernels: A, EWMA)" in run.stdout and "warning" not in run.stderr
    with out.open() as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 301 and any("EWMA" in column for column in rows[0])


def test_fit_history_lets_fit_choose_alpha_after_the_scan(example):
    """The fit contract end to end: the scan's update learns the level and the error scale; fit
    then chooses alpha on the whole history and leaves them as they are."""
    module, _ = example
    config = check_config(module.EWMA)
    rng = np.random.default_rng(5)
    n = 3 * config.window_size  # the length check_kernel uses: the compiled scans are shared
    histories = {"noise around a level": (10.0 + rng.normal(size=n), (0.05, 0.2)),  # smooth hard
                 "random walk": (np.cumsum(rng.normal(size=n)), (0.9, 1.0))}  # follow the last value
    with_fit = FunctionalPredictor(config, kernels=(module.EWMA,))
    without_fit = FunctionalPredictor(config, kernels=(attrs.evolve(module.EWMA, fit=None),))
    for history, best in histories.values():
        fitted = with_fit.fit_history(with_fit.init_state(), history)[0].kernels[0]
        streamed = without_fit.fit_history(without_fit.init_state(), history)[0].kernels[0]
        assert float(streamed.alpha) == module.DEFAULT_ALPHA
        assert best[0] <= float(fitted.alpha) <= best[1]
        for name in ("level", "error_var", "seen"):
            assert np.asarray(getattr(fitted, name)) == np.asarray(getattr(streamed, name)), name
        assert int(fitted.seen) == len(history)  # each value learnt once, by the scan


def test_fit_skips_non_finite_history_values(example):
    """FunctionalPredictor.fit_history passes NaN and ±inf on to fit: the example skips them, so it
    chooses alpha as on the history without them, and keeps its alpha with too few finite values."""
    module, _ = example
    config = check_config(module.EWMA)
    state = module.init(config, jax.random.PRNGKey(0))
    walk = np.cumsum(np.random.default_rng(7).normal(size=40))
    spoilt = np.insert(walk, [0, 10, 10, 25, 40], [np.nan, np.inf, np.nan, -np.inf, np.nan])
    fit = jax.jit(lambda s, h: module.fit(s, h, config))
    clean = fit(state, jnp.asarray(walk))
    assert float(clean.alpha) != module.DEFAULT_ALPHA  # fit chose something on the clean history
    assert float(fit(state, jnp.asarray(spoilt)).alpha) == float(clean.alpha)
    mostly_missing = np.where(np.arange(45) % 9 == 0, spoilt, np.nan)  # 5 finite values < MIN_FIT_HISTORY
    assert float(fit(state, jnp.asarray(mostly_missing)).alpha) == module.DEFAULT_ALPHA


@functools.cache
def _runner(length: int):
    """Jitted: the example's forecasts (mean, scale) on every prefix of a series."""
    module = importlib.import_module("usp_ewma_kernel")
    config = check_config(module.EWMA)  # window of 32
    size = config.window_size

    @jax.jit
    def run(series: jax.Array) -> tuple[jax.Array, jax.Array]:
        padded = jnp.concatenate([jnp.full(size - 1, series[0]), series])

        def tick(state, t):
            window = Window(values=jax.lax.dynamic_slice(padded, (t,), (size,)),
                            count=jnp.minimum(t + 1, size).astype(jnp.int32), signal_frozen=jnp.bool_(False),
                            emergency=jnp.bool_(False))
            state = module.update(state, window, config)
            forecast = module.predict(state, window, config)
            return state, (forecast.mean, forecast.scale)

        return jax.lax.scan(tick, module.init(config, jax.random.PRNGKey(0)), jnp.arange(length))[1]

    return run


#: Zero or 1e-6 ≤ |value| ≤ 1e6: scaled by 2^±100, no square underflows or overflows.
VALUES = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.floats(-1e6, -1e-6))


@given(st.lists(VALUES, min_size=40, max_size=40), st.integers(-100, 100))
def test_forecasts_scale_exactly_with_the_series_and_stay_between_its_values(example, values, exponent):
    series = np.asarray(values)
    assume(np.max(np.abs(series)) > 1e-3)
    run = _runner(len(series))
    means, scales = (np.asarray(a) for a in run(jnp.asarray(series)))
    scaled_means, scaled_scales = (np.asarray(a) for a in run(jnp.asarray(np.ldexp(series, exponent))))
    padded = np.concatenate([np.full(31, series[0]), series])  # the windows (of 32) the kernel saw
    live = np.array([np.max(np.abs(padded[t:t + 32])) > 0 for t in range(len(series))])  # else the 1e-300 floor
    np.testing.assert_array_equal(scaled_means, np.ldexp(means, exponent))
    np.testing.assert_array_equal(scaled_scales[live], np.ldexp(scales, exponent)[live])
    assert np.all(scales > 0) and np.all(scaled_scales > 0)
    slack = 1e-15 * np.max(np.abs(series))
    assert np.all(means <= np.maximum.accumulate(series) + slack)
    assert np.all(means >= np.minimum.accumulate(series) - slack)


@pytest.mark.parametrize("name", ["usp_ewma_kernel.py", "pyproject.toml", "test_usp_ewma_kernel.py", "config.toml"])
def test_docs_show_the_example_files_as_they_are(name):
    language = {"py": "python", "toml": "toml"}[name.rsplit(".", 1)[1]]
    assert f"```{language}\n{(EXAMPLE / name).read_text()}```" in (ROOT / "docs" / "plugins.md").read_text()
