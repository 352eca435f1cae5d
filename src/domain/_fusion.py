"""Fusion of kernel forecasts: the weighted mean and a mixture prediction interval.

The interval is the central ``level`` interval of the Gaussian mixture Σ ρ_i N(m_i, s_i²),
its quantiles found by safeguarded Newton iterations (a fixed, unrolled count: no loop overhead
on the hot path). ``interval_scale`` multiplies every s_i; the core adapts it online so that the
realised coverage tracks the nominal level (adaptive conformal calibration).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

NEWTON_ITERATIONS = 12


def _mixture_cdf_pdf(x, weights, means, scales):
    u = (x - means) / scales
    cdf = jnp.sum(weights * ndtr(u))
    pdf = jnp.sum(weights * jnp.exp(-0.5 * u * u) / (scales * jnp.sqrt(2.0 * jnp.pi)))
    return cdf, pdf


def mixture_quantile(p: float, weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray) -> jnp.ndarray:
    """The p-quantile of Σ ρ_i N(m_i, s_i²) (scales > 0)."""
    lo = jnp.min(means - 12.0 * scales)
    hi = jnp.max(means + 12.0 * scales)
    mean = jnp.dot(weights, means)
    var = jnp.dot(weights, scales**2 + means**2) - mean**2
    x = jnp.clip(mean + ndtri(p) * jnp.sqrt(jnp.maximum(var, 0.0)), lo, hi)
    for _ in range(NEWTON_ITERATIONS):
        cdf, pdf = _mixture_cdf_pdf(x, weights, means, scales)
        lo = jnp.where(cdf < p, x, lo)
        hi = jnp.where(cdf >= p, x, hi)
        newton = x - (cdf - p) / jnp.maximum(pdf, 1e-300)
        x = jnp.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
    return x


def fuse(weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray, level: float,
         interval_scale: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(ŷ, lower, upper): weighted mean and the central ``level`` mixture interval."""
    widened = scales * interval_scale
    tail = 0.5 * (1.0 - level)
    return (jnp.dot(weights, means), mixture_quantile(tail, weights, means, widened),
            mixture_quantile(1.0 - tail, weights, means, widened))
