"""Kernel S (seasonal-trend smoothing): the contract, period detection, seasonal accuracy alone and
in the default mixture, and the configuration keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import ConfigError, PredictorConfig, Window
from usp.application.compiled_core import compiled_core
from usp.domain._core import Out
from usp.plugins import kernel_s
from usp.plugins.manager import build_plugin_manager, resolve_kernels
from usp.testing import check_kernel

SMALL = dict(window_size=64, wtmm_buffer_size=64, kurtosis_window=32, kernel_a_rkhs_points=16)


def multiplicative_seasonal(n: int, seed: int, period: int = 12) -> np.ndarray:
    """Airline-like: exp(trend + seasonal shape + noise), growing seasonal swings."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    shape = 0.15 * np.sin(2 * np.pi * t / period) + 0.08 * np.cos(4 * np.pi * t / period)
    return 100.0 * np.exp(0.01 * t + shape + 0.02 * rng.standard_normal(n))


def _run(config: PredictorConfig, series: np.ndarray) -> tuple[np.ndarray, kernel_s.KernelSState]:
    """Kernel S alone, fed tick by tick through its contract; forecasts[t] is made after series[t]."""
    size = config.window_size

    def body(carry, y):
        state, window, count = carry
        window = jnp.where(count == 0, jnp.full(size, y), jnp.roll(window, -1).at[-1].set(y))
        count = count + 1
        view = Window(window, jnp.minimum(count, size).astype(jnp.int32), jnp.bool_(False), jnp.bool_(False))
        state = kernel_s.update(state, view, config)
        forecast = kernel_s.predict(state, view, config)
        return (state, window, count), (forecast.mean, forecast.scale)

    init = (kernel_s.init(config, jax.random.PRNGKey(0)), jnp.zeros(size), jnp.int32(0))
    (state, _, _), (means, scales) = jax.jit(lambda xs: jax.lax.scan(body, init, xs))(jnp.asarray(series))
    assert np.all(np.isfinite(np.asarray(scales))) and np.all(np.asarray(scales) > 0)
    return np.asarray(means), state


def _mase(series: np.ndarray, forecasts: np.ndarray, start: int) -> float:
    """MAE of forecasts[t−1] for series[t], t ≥ start, relative to the last value's."""
    target = series[start:]
    return float(np.mean(np.abs(target - forecasts[start - 1:-1])) / np.mean(np.abs(target - series[start - 1:-1])))


def test_passes_check_kernel_with_both_transforms_and_period_detection():
    assert check_kernel(kernel_s.KERNEL_S).passed[-1] == "fit_honoured"


def test_detects_the_period_of_seasonal_series_and_none_on_walks_and_momentum():
    rng = np.random.default_rng(3)
    assert int(kernel_s.detect_period(jnp.asarray(multiplicative_seasonal(300, 1)), 64)) == 12
    assert int(kernel_s.detect_period(jnp.asarray(multiplicative_seasonal(400, 2, period=7)), 64)) == 7
    walk = np.cumsum(rng.standard_normal(1000))
    assert int(kernel_s.detect_period(jnp.asarray(walk), 64)) == 0
    momentum = np.cumsum(np.convolve(rng.standard_normal(1000), np.ones(6) / 6, mode="same"))  # smooth ACF
    assert int(kernel_s.detect_period(jnp.asarray(momentum), 64)) == 0
    holes = multiplicative_seasonal(300, 4)
    holes[[10, 50, 51, 200]] = [np.nan, np.inf, -np.inf, np.nan]
    assert int(kernel_s.detect_period(jnp.asarray(holes), 64)) == 12


@pytest.mark.parametrize("transform, bound", [("auto", 0.45), ("log", 0.45), ("none", 0.6)])
def test_multiplicative_seasonal_series_far_better_than_naive(transform, bound):
    series = multiplicative_seasonal(240, 5)
    config = PredictorConfig(seasonal_period=12, seasonal_transform=transform, **SMALL)
    forecasts, _ = _run(config, series)
    assert _mase(series, forecasts, 96) < bound


def test_without_a_period_it_is_a_damped_trend_and_close_to_naive_on_a_walk():
    series = 50.0 + np.cumsum(np.random.default_rng(6).standard_normal(1500))
    config = PredictorConfig(seasonal_period=1, **SMALL)
    forecasts, state = _run(config, series)
    assert int(state.period) == 0 and state.season.shape == (12, 1)
    assert _mase(series, forecasts, 200) < 1.08


def test_fit_detects_the_period_and_smooths_the_history_with_it():
    series = multiplicative_seasonal(240, 7)
    config = PredictorConfig(seasonal_period=0, **SMALL)
    _, scanned = _run(config, series)
    assert int(scanned.period) == 0  # the scan ran without a period
    fitted = kernel_s.fit(scanned, jnp.asarray(series), config)
    assert int(fitted.period) == 12 and int(fitted.seen) == 240
    assert np.all(np.asarray(fitted.filters)[kernel_s.LOSS] < np.asarray(scanned.filters)[kernel_s.LOSS])
    again = kernel_s.fit(fitted, jnp.asarray(series), config)  # same period: the state is kept
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(again),
                                                    jax.tree_util.tree_leaves(fitted), strict=True))
    fixed = PredictorConfig(seasonal_period=12, **SMALL)
    state = kernel_s.init(fixed, jax.random.PRNGKey(0))
    assert kernel_s.fit(state, jnp.asarray(series), fixed) is state  # a configured period: no refit


def test_log_filters_are_not_used_on_a_window_that_is_not_positive():
    series = multiplicative_seasonal(200, 8) - 150.0  # crosses zero
    config = PredictorConfig(seasonal_period=12, seasonal_transform="log", **SMALL)
    forecasts, _ = _run(config, series)
    assert np.all(np.isfinite(forecasts))
    negative = np.flatnonzero(series[:-1] <= 0)
    np.testing.assert_array_equal(forecasts[negative[negative >= 64]], series[negative[negative >= 64]])


def test_default_mixture_follows_the_seasonal_kernel_with_calibrated_intervals():
    series = multiplicative_seasonal(700, 9)
    config = PredictorConfig(seasonal_period=12, confidence_level=0.9, **SMALL)
    assert config.enabled_kernels == PredictorConfig().enabled_kernels == ("A", "D", "N", "S")
    core = compiled_core(config, resolve_kernels(config, build_plugin_manager(entry_points=False)))
    _, outputs = core.scan(core.init(jax.random.PRNGKey(0)), jnp.asarray(series))
    outputs = np.asarray(outputs)
    start = 200
    prediction = outputs[:, Out.PREDICTION]
    assert _mase(series, prediction, start) < 0.5
    weights = outputs[start:, Out.SIZE:Out.SIZE + 4].mean(axis=0)
    assert weights[3] > 0.5, weights
    lower, upper = outputs[start - 1:-1, Out.LOWER], outputs[start - 1:-1, Out.UPPER]
    covered = (series[start:] >= lower) & (series[start:] <= upper)
    assert 0.85 <= covered.mean() <= 0.95


@pytest.mark.parametrize("key, value", [("seasonal_period", -1), ("seasonal_period", 513),
                                        ("seasonal_period", 12.0), ("seasonal_transform", "boxcox")])
def test_bad_seasonal_keys_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        PredictorConfig(**{key: value})


def test_a_log_filters_interval_grows_with_the_level_of_a_multiplicative_series():
    """Multiplicative noise of 2%: the log filter's scale stays near 2% of the forecast while the
    level grows e-fold, where its realised RMS error alone (taken over past, lower levels) falls
    behind; a raw filter's variance is its realised squared error."""
    config = PredictorConfig(**SMALL, seasonal_period=12, seasonal_transform="log")
    series = multiplicative_seasonal(700, 4)
    size = config.window_size
    state, window = kernel_s.init(config, jax.random.PRNGKey(0)), jnp.full(size, series[0])
    update, predict = jax.jit(kernel_s.update, static_argnums=2), jax.jit(kernel_s.predict, static_argnums=2)
    relative, realised = [], []
    for i, y in enumerate(series):
        window = jnp.roll(window, -1).at[-1].set(y) if i else window
        view = Window(window, jnp.int32(min(i + 1, size)), jnp.bool_(False), jnp.bool_(False))
        state = update(state, view, config)
        forecast = predict(state, view, config)
        if i >= 300:
            choice = int(np.argmin(np.asarray(state.filters)[kernel_s.LOSS]))
            relative.append(float(forecast.scale / forecast.mean))
            realised.append(float(np.sqrt(np.asarray(state.filters)[kernel_s.LOSS, choice]) / forecast.mean))
    early, late = np.median(relative[:100]), np.median(relative[-100:])
    assert 0.015 < late < 0.03 and 0.8 < late / early < 1.25, (early, late)
    assert np.median(realised[-100:]) < 0.93 * late  # the realised RMS alone trails the level
    row = jnp.asarray([1.0, 0.0, 50.0, 4.0, 0.1, 0.001, 0.002])
    assert float(kernel_s.realised_variance(row, jnp.bool_(False), jnp.float64(50.0))) == 4.0
    expected = np.sqrt(4.0 * 50.0**2 * 0.002 * (1 - 0.25))
    assert float(kernel_s.realised_variance(row, jnp.bool_(True), jnp.float64(50.0))) == pytest.approx(expected)
