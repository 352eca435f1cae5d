"""Kernel N (the last value): the contract, its forecast and scale, and the mixture's fallback to it
on a random walk where the other kernels only add noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from usp import PredictorConfig, Window
from usp.plugins import kernel_n
from usp.plugins.manager import available_kernels, build_plugin_manager
from usp.testing import check_kernel


def test_passes_check_kernel():
    assert "no_recompilation" in check_kernel(kernel_n.KERNEL_N).passed


def test_forecast_is_the_last_value_and_scale_the_realised_rms_increment():
    config = PredictorConfig(window_size=64, wtmm_buffer_size=64)
    series = 10.0 + np.cumsum(np.random.default_rng(0).standard_normal(2000) * 0.3)
    state, window = kernel_n.init(config, jax.random.PRNGKey(0)), jnp.full(64, series[0])
    update, predict = jax.jit(kernel_n.update, static_argnums=2), jax.jit(kernel_n.predict, static_argnums=2)
    scales = []
    for i, y in enumerate(series):
        window = jnp.roll(window, -1).at[-1].set(y) if i else window
        view = Window(window, jnp.int32(min(i + 1, 64)), jnp.bool_(False), jnp.bool_(False))
        state = update(state, view, config)
        forecast = predict(state, view, config)
        assert float(forecast.mean) == y
        scales.append(float(forecast.scale))
    assert scales[0] == 1e-12 * series[0]  # no increment yet: the relative floor
    assert kernel_n.init(config, jax.random.PRNGKey(0)) == ()  # stateless: the window is enough
    assert 0.27 < np.median(scales[100:]) < 0.33


def test_registered_as_a_builtin_next_to_the_test_plugin():
    from tests.plugins import martingale_kernel

    kernels = available_kernels(build_plugin_manager([martingale_kernel], entry_points=False))
    assert kernels["N"].source == "builtin" and kernels["N"] is not kernels["M"]
