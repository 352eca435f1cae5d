"""A third-party kernel defined outside the package: the martingale (last-value) forecaster.

E[y_{t+1} | past] = y_t is the optimal forecast for a martingale; the scale is the realised RMSE
of its own one-step errors (EMA), floored at 1e-12 of the last value (and at 1e-300 for a zero
series) so that it stays > 0 on a constant stream. Registered through the ``usp`` hook like any
plugin; it imports only ``usp.kernel``.

USP has the same forecast built in as kernel N (``usp.plugins.kernel_n``, the mixture's fallback to
the last value). This one stays, under its own name, as the test suite's *third-party* kernel: it
exercises the entry-point path, and its EMA weight (0.05) and initial scale differ from N's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from usp.kernel import KernelForecast, KernelSpec, PredictorConfig, Window, hookimpl, pytree


@pytree
class MartingaleState:
    last: jax.Array
    mean_square_error: jax.Array
    seen: jax.Array


def init(config: PredictorConfig, key: jax.Array) -> MartingaleState:
    del config, key
    return MartingaleState(jnp.float64(0.0), jnp.float64(1.0), jnp.int32(0))


def update(state: MartingaleState, window: Window, config: PredictorConfig) -> MartingaleState:
    del config
    y = window.values[-1]
    error = jnp.where(state.seen > 0, (y - state.last) ** 2, state.mean_square_error)
    weight = jnp.maximum(0.05, 1.0 / jnp.maximum(state.seen, 1))
    mse = jnp.where(state.seen > 0, state.mean_square_error + weight * (error - state.mean_square_error),
                    state.mean_square_error)
    return MartingaleState(y, mse, state.seen + 1)


def predict(state: MartingaleState, window: Window, config: PredictorConfig) -> KernelForecast:
    del window, config
    floor = jnp.maximum(1e-12 * jnp.abs(state.last), 1e-300)
    return KernelForecast(mean=state.last, scale=jnp.maximum(jnp.sqrt(state.mean_square_error), floor))


MARTINGALE = KernelSpec(name="M", init=init, update=update, predict=predict,
                        description="martingale (last value) forecaster, a test plugin")


@hookimpl
def usp_register_kernels() -> list[KernelSpec]:
    return [MARTINGALE]
