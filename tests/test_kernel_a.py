"""Kernel A: Levinson–Durbin correctness, near-oracle accuracy on AR(2), RKHS on a nonlinear map."""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import PredictorConfig, Window
from usp.plugins import kernel_a

from .helpers import ar2

CONFIG = PredictorConfig()


def _run(config: PredictorConfig, series: np.ndarray) -> np.ndarray:
    """Forecasts of kernel A alone, fed tick by tick through its contract (jit + scan)."""
    size = config.window_size

    def body(carry, y):
        state, window, count = carry
        window = jnp.roll(window, -1).at[-1].set(y)
        window = jnp.where(count == 0, jnp.full(size, y), window)
        count = count + 1
        view = Window(window, jnp.minimum(count, size).astype(jnp.int32), jnp.bool_(False), jnp.bool_(False))
        state = kernel_a.update(state, view, config)
        forecast = kernel_a.predict(state, view, config)
        return (state, window, count), (forecast.mean, forecast.scale)

    init = (kernel_a.init(config, jax.random.PRNGKey(0)), jnp.zeros(size), jnp.int32(0))
    _, (means, scales) = jax.jit(lambda xs: jax.lax.scan(body, init, xs))(jnp.asarray(series))
    assert np.all(np.isfinite(np.asarray(scales))) and np.all(np.asarray(scales) > 0)
    return np.asarray(means)


def test_levinson_durbin_solves_yule_walker():
    rng = np.random.default_rng(0)
    x = np.convolve(rng.standard_normal(600), [1.0, 0.6, -0.3], mode="same")
    gamma, _ = kernel_a.autocovariances(jnp.asarray(x), jnp.ones(600), 6)
    rows, variances = kernel_a.levinson_durbin(gamma)
    g = np.asarray(gamma)
    for k in range(1, 7):
        toeplitz = np.array([[g[abs(i - j)] for j in range(k)] for i in range(k)])
        phi = np.linalg.solve(toeplitz, g[1:k + 1])
        np.testing.assert_allclose(np.asarray(rows[k])[:k], phi, atol=1e-10)
        np.testing.assert_allclose(float(variances[k]), g[0] - phi @ g[1:k + 1], rtol=1e-10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ar2_one_step_mse_within_5_percent_of_oracle(seed):
    series, noise = ar2(4000, seed)
    means = _run(CONFIG, series)
    mse = np.mean((series[501:] - means[500:-1]) ** 2)
    assert mse <= 1.05 * np.mean(noise[501:] ** 2), mse


def test_random_walk_uses_the_differenced_model():
    series = np.cumsum(np.random.default_rng(4).standard_normal(3000))
    means = _run(CONFIG, series)
    ratio = np.mean((series[501:] - means[500:-1]) ** 2) / np.mean(np.diff(series)[500:] ** 2)
    assert ratio < 1.03, ratio


def test_rkhs_mode_beats_linear_on_a_nonlinear_map():
    rng = np.random.default_rng(5)  # noisy logistic map: deterministic, nonlinear, linearly unpredictable
    x = np.full(2000, 0.3)
    for t in range(1, 2000):
        x[t] = np.clip(3.8 * x[t - 1] * (1.0 - x[t - 1]) + 0.01 * rng.standard_normal(), 0.0, 1.0)
    rkhs = attrs.evolve(CONFIG, kernel_a_mode="rkhs", kernel_a_order=2, window_size=160, kernel_a_rkhs_points=96)
    linear = attrs.evolve(rkhs, kernel_a_mode="linear")
    err = {name: np.mean((x[401:] - _run(cfg, x)[400:-1]) ** 2) for name, cfg in (("rkhs", rkhs), ("linear", linear))}
    assert err["rkhs"] < 0.8 * err["linear"], err


def test_conformance_jit_vmap_finite_deterministic():
    rng = np.random.default_rng(6)
    windows = jnp.asarray(np.stack([rng.standard_normal(CONFIG.window_size).cumsum(),
                                    np.full(CONFIG.window_size, 3.0),
                                    np.r_[np.zeros(CONFIG.window_size - 1), 1e90]]))
    counts = jnp.array([CONFIG.window_size, CONFIG.window_size, 7], dtype=jnp.int32)
    views = Window(windows, counts, jnp.zeros(3, bool), jnp.zeros(3, bool))
    states = jax.vmap(lambda _: kernel_a.init(CONFIG, None))(jnp.arange(3))
    step = jax.jit(jax.vmap(lambda s, w: kernel_a.predict(kernel_a.update(s, w, CONFIG), w, CONFIG)))
    batched = step(states, views)
    for i in range(3):
        one = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], (states, views))
        single = kernel_a.predict(kernel_a.update(one[0], one[1], CONFIG), one[1], CONFIG)
        assert float(single.mean) == pytest.approx(float(batched.mean[i]), rel=1e-12, abs=1e-12)
    assert np.all(np.isfinite(np.asarray(batched.mean))) and np.all(np.isfinite(np.asarray(batched.scale)))
    again = step(states, views)
    assert np.array_equal(np.asarray(again.mean), np.asarray(batched.mean))
