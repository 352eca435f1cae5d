"""Kernel D: conformance (jit, vmap, finiteness, determinism, frozen hold) and predictive power."""

from __future__ import annotations

import functools

import iisignature
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp.domain import KernelSpec, PredictorConfig, Window
from usp.plugins import kernel_d
from usp.plugins.kernel_a import KERNEL_A
from usp.plugins.kernel_d import KERNEL_D

CONFIG = PredictorConfig(log_sig_depth=3)
SIZE = CONFIG.window_size


def _window(values, count=SIZE, frozen=False) -> Window:
    frozen = jnp.asarray(frozen)
    return Window(values=jnp.asarray(values, jnp.float64), count=jnp.asarray(count, jnp.int32),
                  signal_frozen=frozen, emergency=jnp.zeros_like(frozen))


def _tick(state, window, config=CONFIG):
    state = KERNEL_D.update(state, window, config)
    forecast = KERNEL_D.predict(state, window, config)
    return state, forecast


TICK = jax.jit(_tick)


@functools.cache
def _runner(spec: KernelSpec, config: PredictorConfig, length: int):
    """Jitted stream: every prefix of the series as a window, update then predict; returns means."""
    @jax.jit
    def run(series: jax.Array) -> tuple[jax.Array, jax.Array]:
        padded = jnp.concatenate([jnp.full((SIZE - 1,), series[0]), series])

        def step(state, t):
            values = jax.lax.dynamic_slice(padded, (t,), (SIZE,))
            window = _window(values, jnp.minimum(t + 1, SIZE))
            state = spec.update(state, window, config)
            forecast = spec.predict(state, window, config)
            return state, (forecast.mean, forecast.scale)

        return jax.lax.scan(step, spec.init(config, jax.random.PRNGKey(0)), jnp.arange(length))[1]
    return run


def _one_step_mse(spec: KernelSpec, series: np.ndarray, burn: int, config=CONFIG) -> float:
    means, _ = _runner(spec, config, len(series))(jnp.asarray(series))
    errors = np.asarray(means)[:-1] - series[1:]
    return float(np.mean(errors[burn:] ** 2))


# --- a process driven by a signed Lévy area --------------------------------------------------

_AREA_LOOKBACK = 4  # increments in the "recent path"
_LOGSIG = iisignature.prepare(2, 3, "S")  # Lyndon basis: 1, 2, [1,2], [1,[1,2]], [[1,2],2]


def _signed_area(increments: np.ndarray) -> float:
    """Lévy area of the running time–value area against the value: the log-signature coordinate
    on [[t, x], x] of the time-augmented recent path (⅔ of the Lévy area of s ↦ (A_s, x_s) plus ⅙
    of A·Δx, A the time–value Lévy area). A signed quadratic functional of the increments."""
    m = len(increments)
    path = np.stack([np.linspace(0, 1, m + 1), np.concatenate([[0.0], np.cumsum(increments)])], axis=1)
    return float(iisignature.logsig(path, _LOGSIG)[4])


def levy_area_process(n: int, beta: float, seed: int) -> np.ndarray:
    """y with increments β·clip(standardised signed area of the last 4 increments, ±3) + N(0, 1)."""
    rng = np.random.default_rng(seed)
    reference = np.array([_signed_area(rng.normal(size=_AREA_LOOKBACK)) for _ in range(4000)])
    mu, sd = reference.mean(), reference.std()
    increments = list(rng.normal(size=_AREA_LOOKBACK))
    for _ in range(n - 1):
        area = (_signed_area(np.asarray(increments[-_AREA_LOOKBACK:])) - mu) / sd
        increments.append(beta * np.clip(area, -3, 3) + rng.normal())
    return np.concatenate([[0.0], np.cumsum(increments[_AREA_LOOKBACK:])])


def _ar_least_squares_ratio(series: np.ndarray, order: int, burn: int) -> float:
    """Out-of-sample MSE ratio (to naive) of an AR(order) on increments with intercept fitted by
    least squares on the first `burn` increments: the best a linear predictor can do."""
    d = np.diff(series)
    lags = [d[order - 1 - i:len(d) - 1 - i] for i in range(order)]
    rows = np.column_stack([np.ones(len(d) - order), *lags])
    target = d[order:]
    cut = burn - order
    coef, *_ = np.linalg.lstsq(rows[:cut], target[:cut], rcond=None)
    return float(np.mean((rows[cut:] @ coef - target[cut:]) ** 2) / np.mean(target[cut:] ** 2))


def test_kernel_d_exploits_the_signed_levy_area_where_linear_predictors_cannot():
    burn = 800
    series = levy_area_process(3000, beta=0.7, seed=1)
    naive = float(np.mean(np.diff(series)[burn:] ** 2))
    ratio_d = _one_step_mse(KERNEL_D, series, burn) / naive
    ratio_a = _one_step_mse(KERNEL_A, series, burn) / naive
    ratio_ar = _ar_least_squares_ratio(series, 8, burn)
    assert ratio_d < 0.8, ratio_d
    assert ratio_a > 0.9, ratio_a
    assert ratio_ar > 0.9, ratio_ar
    assert ratio_d < min(ratio_a, ratio_ar) - 0.15


def test_random_walk_costs_little_and_the_interval_is_calibrated():
    rng = np.random.default_rng(2)
    series = np.cumsum(rng.normal(size=3000))
    means, scales = _runner(KERNEL_D, CONFIG, len(series))(jnp.asarray(series))
    errors = np.asarray(means)[:-1] - series[1:]
    ratio = np.mean(errors[800:] ** 2) / np.mean(np.diff(series)[800:] ** 2)
    assert ratio < 1.03, ratio
    coverage = np.mean(np.abs(errors[800:]) < 1.96 * np.asarray(scales)[:-1][800:])
    assert 0.92 < coverage < 0.975, coverage


# --- conformance -----------------------------------------------------------------------------

def _stream(seed: int, n: int = SIZE + 40) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=n)) * (1 + seed)


def test_jit_vmap_over_a_batch_equals_one_by_one():
    batch, ticks = 3, 12
    series = np.stack([_stream(s) for s in range(batch)])
    state = KERNEL_D.init(CONFIG, jax.random.PRNGKey(0))
    states = jax.tree_util.tree_map(lambda x: jnp.stack([x] * batch), state)
    singles = [state] * batch
    vtick = jax.jit(jax.vmap(_tick))
    for t in range(SIZE, SIZE + ticks):
        counts = np.minimum(t, SIZE) - np.arange(batch)  # different fill levels per asset
        states, forecasts = vtick(states, _window(series[:, t - SIZE:t], counts, np.zeros(batch, bool)))
        for i in range(batch):
            singles[i], one = TICK(singles[i], _window(series[i, t - SIZE:t], counts[i]))
            np.testing.assert_allclose(forecasts.mean[i], one.mean, rtol=1e-12, atol=0)
            np.testing.assert_allclose(forecasts.scale[i], one.scale, rtol=1e-12, atol=0)


def _trained_state(seed: int = 0):
    series = _stream(seed)
    state = KERNEL_D.init(CONFIG, jax.random.PRNGKey(0))
    for t in range(SIZE, len(series)):
        state, _ = TICK(state, _window(series[t - SIZE:t]))
    return state


EXTREMES = {
    "constant": np.full(SIZE, 3.0),
    "huge alternating": np.where(np.arange(SIZE) % 2 == 0, 1e308, -1e308),
    "max float": np.full(SIZE, np.finfo(np.float64).max),
    "tiny": np.random.default_rng(4).normal(size=SIZE) * 1e-300,
    "spike": np.concatenate([np.zeros(SIZE - 1), [1e300]]),
    "huge ramp": np.linspace(-1e307, 1e307, SIZE),
}


@pytest.mark.parametrize("name", list(EXTREMES))
def test_finite_on_extreme_finite_inputs(name):
    values = EXTREMES[name]
    for state in (KERNEL_D.init(CONFIG, jax.random.PRNGKey(0)), _trained_state()):
        for count in (0, 1, 2, SIZE):
            new, forecast = TICK(state, _window(values, count))
            new, forecast = TICK(new, _window(np.roll(values, -1), count))
            assert np.isfinite(float(forecast.mean)) and np.isfinite(float(forecast.scale))
            assert float(forecast.scale) > 0
            assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(new))


def test_deterministic():
    first, second = _trained_state(3), _trained_state(3)
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)


def test_frozen_signal_holds_the_last_forecast():
    series = _stream(5)
    state, before = TICK(_trained_state(5), _window(series[-SIZE:]))
    frozen_values = np.concatenate([series[-SIZE + 1:], series[-1:]])
    for _ in range(3):
        held, forecast = TICK(state, _window(frozen_values, frozen=True))
        assert float(forecast.mean) == float(before.mean)
        assert float(forecast.scale) == float(before.scale)
        for a, b in zip(jax.tree_util.tree_leaves(held), jax.tree_util.tree_leaves(state), strict=True):
            np.testing.assert_array_equal(a, b)
    _, released = TICK(state, _window(frozen_values + np.linspace(0, 1, SIZE)))
    assert float(released.mean) != float(before.mean)


def test_depth_variants_share_one_state_shape_and_read_their_own_readout():
    state = _trained_state(6)
    window = _window(_stream(6)[-SIZE:])
    shapes = None
    for depth in (2, 3, 5):
        config = PredictorConfig(log_sig_depth=depth)
        new, forecast = jax.jit(functools.partial(_tick, config=config))(state, window)
        leaf_shapes = [x.shape for x in jax.tree_util.tree_leaves(new)]
        assert shapes in (None, leaf_shapes)
        shapes = leaf_shapes
        used = kernel_d.n_features(depth)
        assert np.all(np.asarray(new.weights)[used:] == 0) and np.all(np.asarray(new.features)[used:] == 0)
        assert np.isfinite(float(forecast.mean))
