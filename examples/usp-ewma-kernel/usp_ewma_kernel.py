"""EWMA: exponential smoothing with its own realised-error scale, a USP kernel plugin.

The forecast of the next value is the smoothed level ``l_t = l_{t-1} + alpha (y_t - l_{t-1})``.
The scale is the root of an EMA of the kernel's own squared one-step errors ``y_t - l_{t-1}``,
floored relative to the window's magnitude so that it stays > 0 on a constant stream. ``fit``
picks ``alpha`` offline, by the smallest one-step error of smoothing the whole history with
each value of a grid: a search the online ``update`` cannot do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from usp.kernel import KernelForecast, KernelSpec, PredictorConfig, Window, hookimpl, pytree, replace

#: Smoothing constant until ``fit`` chooses one.
DEFAULT_ALPHA = 0.3
#: The values of alpha ``fit`` tries.
ALPHA_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
#: Fewest history values for ``fit`` to choose alpha (with fewer it keeps the state's).
MIN_FIT_HISTORY = 8
#: Smallest scale, relative to the window's largest |value|; 1e-300 only for an all-zero window.
SCALE_FLOOR_RELATIVE = 1e-12


@pytree
class EWMAState:
    level: jax.Array      # float64, the smoothed level: the forecast of the next value
    error_var: jax.Array  # float64, EMA of squared one-step errors (signal units squared)
    alpha: jax.Array      # float64, smoothing constant (a traced value: fit may change it)
    seen: jax.Array       # int32, observations learnt from


def init(config: PredictorConfig, key: jax.Array) -> EWMAState:
    del config, key  # deterministic: no randomness needed
    return EWMAState(level=jnp.float64(0.0), error_var=jnp.float64(0.0), alpha=jnp.float64(DEFAULT_ALPHA),
                     seen=jnp.int32(0))


def update(state: EWMAState, window: Window, config: PredictorConfig) -> EWMAState:
    """Score the last forecast on ``window.values[-1]``, then smooth it into the level."""
    y = window.values[-1]
    first = state.seen == 0
    error = jnp.where(first, 0.0, y - state.level)
    weight = jnp.maximum(config.volatility_alpha, 1.0 / jnp.maximum(state.seen, 1))
    error_var = jnp.where(first, 0.0, state.error_var + weight * (error**2 - state.error_var))
    level = jnp.where(first, y, state.level + state.alpha * error)
    return EWMAState(level=level, error_var=error_var, alpha=state.alpha, seen=state.seen + 1)


def predict(state: EWMAState, window: Window, config: PredictorConfig) -> KernelForecast:
    del config
    floor = jnp.maximum(SCALE_FLOOR_RELATIVE * jnp.max(jnp.abs(window.values)), 1e-300)
    return KernelForecast(mean=state.level, scale=jnp.maximum(jnp.sqrt(state.error_var), floor))


def fit(state: EWMAState, history: jax.Array, config: PredictorConfig) -> EWMAState:
    """Choose alpha on the finite values of the whole history (the functional API passes NaN and
    ±inf on: they are skipped); the level and the error scale stay the scan's."""
    del config
    if history.shape[0] < MIN_FIT_HISTORY:  # a static shape: Python control flow is fine here
        return state
    finite = jnp.isfinite(history)
    clean = jnp.where(finite, history, 0.0)
    x = clean / jnp.maximum(jnp.max(jnp.abs(clean)), 1e-300)  # scale-free, cannot overflow
    alphas = jnp.asarray(ALPHA_GRID)

    def smooth(carry: tuple[jax.Array, jax.Array], step: tuple[jax.Array, jax.Array]
               ) -> tuple[tuple[jax.Array, jax.Array], None]:
        levels, sse = carry
        y, keep = step
        error = jnp.where(keep, y - levels, 0.0)  # a skipped value leaves levels and sse as they are
        return (levels + alphas * error, sse + error**2), None

    start = (jnp.full_like(alphas, x[jnp.argmax(finite)]), jnp.zeros_like(alphas))  # the first finite value
    (_, sse), _ = jax.lax.scan(smooth, start, (x, finite))
    enough = jnp.sum(finite) >= MIN_FIT_HISTORY  # else keep the state's alpha
    return replace(state, alpha=jnp.where(enough, alphas[jnp.argmin(sse)], state.alpha))


EWMA = KernelSpec(name="EWMA", init=init, update=update, predict=predict, fit=fit,
                  description="exponential smoothing, alpha chosen by fit, scale from realised errors")


@hookimpl
def usp_register_kernels() -> list[KernelSpec]:
    return [EWMA]
