"""Interim Hölder estimator and the circuit breaker of model.md §2.5.

Until the WTMM engine is wired in, the Hölder exponent comes from the scaling of the second-order
structure function: for a self-affine path E|X(t+ℓ) − X(t)|² ∝ ℓ^{2H}, so H is half the
least-squares slope of log V(ℓ) against log ℓ over dyadic lags ℓ = 1, 2, 4, … < B/4 on the last
B = ``wtmm_buffer_size`` samples. It moves with the data (≈ 0.5 on random walks, lower on rough
or mean-reverting paths, higher on smooth ones); the breaker uses an EMA of it.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._stats import VARIANCE_FLOOR


def dyadic_lags(buffer_size: int) -> tuple[int, ...]:
    lags, lag = [], 1
    while lag < buffer_size // 4:
        lags.append(lag)
        lag *= 2
    return tuple(lags)


def structure_function_holder(buffer: jnp.ndarray) -> jnp.ndarray:
    """H estimate in [0, 1.5] from a float64[B] buffer (oldest first)."""
    lags = dyadic_lags(buffer.shape[-1])
    log_v = jnp.stack([jnp.log(jnp.mean((buffer[lag:] - buffer[:-lag]) ** 2) + VARIANCE_FLOOR)
                       for lag in lags])
    log_l = jnp.log(jnp.asarray(lags, dtype=jnp.float64))
    dl = log_l - log_l.mean()
    slope = jnp.sum(dl * (log_v - log_v.mean())) / jnp.sum(dl * dl)
    flat = jnp.mean((buffer[1:] - buffer[:-1]) ** 2) <= VARIANCE_FLOOR
    return jnp.where(flat, 1.0, jnp.clip(0.5 * slope, 0.0, 1.5))


def breaker_step(emergency: jnp.ndarray, holder: jnp.ndarray, holder_threshold: float,
                 dimension_threshold: float, margin: float) -> jnp.ndarray:
    """Circuit breaker with hysteresis on the smoothed Hölder exponent ``holder``.

    Enter when H < holder_threshold or the graph dimension 2 − H > dimension_threshold + margin;
    leave only when H > holder_threshold + margin and 2 − H < dimension_threshold.
    """
    dimension = 2.0 - holder
    enter = (holder < holder_threshold) | (dimension > dimension_threshold + margin)
    leave = (holder > holder_threshold + margin) & (dimension < dimension_threshold)
    return jnp.where(emergency, ~leave, enter)
