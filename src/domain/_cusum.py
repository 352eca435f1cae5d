"""Two-sided CUSUM with the kurtosis-adaptive threshold and a grace period (model.md §2.4).

The statistic is kept in residual units: ``G⁺ ← max(0, G⁺ + e − kσ)``,
``G⁻ ← max(0, G⁻ − e − kσ)`` with σ the residual volatility *before* this residual entered
it. This is the CUSUM of the standardised residual ``z = e/σ`` with slack ``k``, scaled by σ,
so the threshold ``h_t = h · σ · (1 + ln(κ/3))`` scales with volatility as §2.4 and spec §12
state, while on steady unit-variance Gaussian input it reduces to the classical (h, k) CUSUM.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._pytree import pytree

#: Range of the kurtosis factor 1 + ln(κ/3) (κ itself is clamped in _stats).
FACTOR_RANGE = (0.25, 10.0)


@pytree
class CusumState:
    """G⁺, G⁻ (residual units, ≥ 0) and the steps left in the grace period (int32 ≥ 0)."""

    upper: jnp.ndarray
    lower: jnp.ndarray
    grace_left: jnp.ndarray


def cusum_init() -> CusumState:
    return CusumState(jnp.float64(0.0), jnp.float64(0.0), jnp.int32(0))


def adaptive_threshold(h: float, sigma: jnp.ndarray, kurtosis: jnp.ndarray) -> jnp.ndarray:
    """``h_t = h σ (1 + ln(κ/3))``, the factor clamped to FACTOR_RANGE so h_t > 0 and finite."""
    factor = jnp.clip(1.0 + jnp.log(kurtosis / 3.0), *FACTOR_RANGE)
    return h * sigma * factor


def cusum_step(state: CusumState, residual: jnp.ndarray, sigma: jnp.ndarray, threshold: jnp.ndarray,
               k: float, grace_period: int, armed: jnp.ndarray) -> tuple[CusumState, jnp.ndarray]:
    """Advance the detector by one residual; returns (state, alarm).

    An alarm needs ``armed`` (the caller's warm-up condition) and an expired grace period; it
    resets G± to 0 and starts a new grace period. During the grace period the statistic keeps
    accumulating but cannot alarm.
    """
    upper = jnp.maximum(0.0, state.upper + residual - k * sigma)
    lower = jnp.maximum(0.0, state.lower - residual - k * sigma)
    alarm = armed & (state.grace_left == 0) & ((upper > threshold) | (lower > threshold))
    grace = jnp.where(alarm, jnp.int32(grace_period), jnp.maximum(state.grace_left - 1, 0))
    return CusumState(jnp.where(alarm, 0.0, upper), jnp.where(alarm, 0.0, lower), grace), alarm
