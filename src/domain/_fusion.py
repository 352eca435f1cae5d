"""Fusion of kernel forecasts: the weighted mean and a mixture prediction interval.

The interval is the central ``level`` interval of the Gaussian mixture Σ ρ_i N(m_i, s_i²),
its quantiles found by safeguarded Newton iterations (a fixed, unrolled count: no loop overhead
on the hot path). ``interval_scale`` multiplies every s_i; the core adapts it online so that the
realised coverage tracks the nominal level (adaptive conformal calibration).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

NEWTON_ITERATIONS = 16


def _mixture_cdf_pdf(x, weights, means, scales):
    """CDF and density of the mixture at each point of x (shape [k]); components on the last axis."""
    u = (x[:, None] - means[None, :]) / scales[None, :]
    cdf = jnp.sum(weights[None, :] * ndtr(u), axis=-1)
    density = weights / (scales * jnp.sqrt(2.0 * jnp.pi))
    pdf = jnp.sum(density[None, :] * jnp.exp(-0.5 * u * u), axis=-1)
    return cdf, pdf


def mixture_quantiles(ps: tuple[float, ...], weights: jnp.ndarray, means: jnp.ndarray,
                      scales: jnp.ndarray) -> jnp.ndarray:
    """The ps-quantiles of Σ ρ_i N(m_i, s_i²) (scales > 0), solved together (shape [len(ps)]).

    Each lies between the smallest and the largest component quantile (below all of them every
    F_i < p, above all of them every F_i > p), which brackets the safeguarded Newton iteration.
    """
    p = jnp.asarray(ps, dtype=jnp.float64)
    component = means[None, :] + ndtri(p)[:, None] * scales[None, :]
    lo, hi = jnp.min(component, axis=1), jnp.max(component, axis=1)
    mean = jnp.sum(weights * means)
    var = jnp.sum(weights * (scales**2 + means**2)) - mean**2
    x = jnp.clip(mean + ndtri(p) * jnp.sqrt(jnp.maximum(var, 0.0)), lo, hi)
    for _ in range(NEWTON_ITERATIONS):
        cdf, pdf = _mixture_cdf_pdf(x, weights, means, scales)
        lo = jnp.where(cdf < p, x, lo)
        hi = jnp.where(cdf >= p, x, hi)
        newton = x - (cdf - p) / jnp.maximum(pdf, 1e-300)
        x = jnp.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
    return x


def mixture_quantile(p: float, weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray) -> jnp.ndarray:
    """The p-quantile of the mixture (scalar)."""
    return mixture_quantiles((p,), weights, means, scales)[0]


def fuse(weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray, level: float,
         interval_scale: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(ŷ, lower, upper): weighted mean and the central ``level`` mixture interval."""
    tail = 0.5 * (1.0 - level)
    bounds = mixture_quantiles((tail, 1.0 - tail), weights, means, scales * interval_scale)
    return jnp.sum(weights * means), bounds[0], bounds[1]
