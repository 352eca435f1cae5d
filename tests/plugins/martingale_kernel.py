"""A third-party kernel defined outside the package: the martingale (last-value) forecaster.

E[y_{t+1} | past] = y_t is the optimal forecast for a martingale; the scale is the realised RMSE
of its own one-step errors (EMA). Registered through the ``usp`` hook like any plugin.
"""

from __future__ import annotations

import jax.numpy as jnp
from usp import KernelForecast, KernelSpec
from usp.domain._pytree import pytree
from usp.plugins.hookspecs import hookimpl


@pytree
class MartingaleState:
    last: jnp.ndarray
    mean_square_error: jnp.ndarray
    seen: jnp.ndarray


def init(config, key):
    del config, key
    return MartingaleState(jnp.float64(0.0), jnp.float64(1.0), jnp.int32(0))


def update(state, window, config):
    del config
    y = window.values[-1]
    error = jnp.where(state.seen > 0, (y - state.last) ** 2, state.mean_square_error)
    weight = jnp.maximum(0.05, 1.0 / jnp.maximum(state.seen, 1))
    mse = jnp.where(state.seen > 0, state.mean_square_error + weight * (error - state.mean_square_error),
                    state.mean_square_error)
    return MartingaleState(y, mse, state.seen + 1)


def predict(state, window, config):
    del window, config
    return KernelForecast(mean=state.last, scale=jnp.sqrt(state.mean_square_error))


MARTINGALE = KernelSpec(name="M", init=init, update=update, predict=predict,
                        description="martingale (last value) forecaster, a test plugin")


@hookimpl
def usp_register_kernels():
    return [MARTINGALE]
