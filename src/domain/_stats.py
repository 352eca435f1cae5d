"""Residual statistics: bias-corrected EMA and rolling kurtosis over a shift-register window.

Pure functions of arrays; shapes are static so everything jits and vmaps.
"""

from __future__ import annotations

import jax.numpy as jnp

#: Variance floor (squared signal units) that only keeps standardisation off 0/0. It is far below
#: the variance of any series the core admits at float64 resolution (a series near 1e-140 has
#: variances near 1e-280), so every scale in the core comes from the data: σ², σ̄², the kernels'
#: scales and the interval are relative to the series' own scale (tests/test_scale_invariance.py).
VARIANCE_FLOOR = 1e-300
#: Largest admissible |value|: beyond it squares of sums could overflow float64, so the core
#: rejects such ticks, state untouched, with their own event (``EventCode.REJECTED_MAGNITUDE``).
MAGNITUDE_LIMIT = 1e100
#: Kurtosis is clamped to this range before it enters the CUSUM threshold (documented in
#: docs/model.md): 1.5 keeps 1 + ln(κ/3) > 0.3, 1e4 bounds the factor by ≈ 9.1.
KURTOSIS_RANGE = (1.5, 1e4)


def ema_update(mean: jnp.ndarray, sample: jnp.ndarray, alpha: float, n_seen: jnp.ndarray) -> jnp.ndarray:
    """EMA with a bias-corrected start: weight ``max(alpha, 1/n)`` so the first samples average.

    Args:
        mean: current estimate (any shape).
        sample: new sample (same shape).
        alpha: EMA weight in (0, 1].
        n_seen: number of samples including this one (int scalar, ≥ 1).
    """
    weight = jnp.maximum(alpha, 1.0 / jnp.maximum(n_seen, 1).astype(jnp.float64))
    return mean + weight * (sample - mean)


def rolling_kurtosis(window: jnp.ndarray, filled: jnp.ndarray) -> jnp.ndarray:
    """Sample kurtosis m4/m2² of the last ``filled`` entries of ``window``, clamped to KURTOSIS_RANGE.

    Returns 3 (the Gaussian value) while fewer than 4 samples are available.
    """
    size = window.shape[-1]
    mask = (jnp.arange(size) >= size - filled).astype(window.dtype)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (window * mask).sum() / n
    centred = (window - mean) * mask
    m2 = (centred**2).sum() / n
    standard = centred / jnp.sqrt(jnp.maximum(m2, VARIANCE_FLOOR))  # no overflow in the 4th power
    kurt = (standard**4).sum() / n
    kurt = jnp.where((filled >= 4) & (m2 > 0), kurt, 3.0)
    return jnp.clip(kurt, *KURTOSIS_RANGE)
