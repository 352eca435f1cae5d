"""Fusion of kernel forecasts: the weighted mean and a mixture prediction interval.

The interval is the central ``level`` interval of the Gaussian mixture Σ ρ_i N(m_i, s_i²),
its quantiles found by safeguarded Newton iterations, at most ``NEWTON_ITERATIONS``, until the
mixture CDF is within ``QUANTILE_TOLERANCE`` of its target. ``interval_scale`` multiplies
every s_i; the core adapts it online so that the realised coverage tracks the nominal level
(adaptive conformal calibration).

**The last-value floor.** The transport weights ρ move slowly (an entropy window of tens of
ticks), so after a sudden move the mixture can trail the last value for many ticks, and on a
random walk it can lose to it by a little on every tick. A second, fast choice guards against
both: between the transport mixture (forecast Σ ρ_i m_i) and the last-value kernel ``N``,
exponentially weighted on their absolute errors in units of the series' RMS increment (the
last value's own RMS error), each clipped at ``FALLBACK_LOSS_CLIP``. The last value's log-odds
u gain η(ℓ_mix − ℓ_N) per scored tick (η = ``fallback_learning_rate``) and stay within
±``FALLBACK_LOGIT_BOUND``, so either side wins the lead back within a few ticks (a fixed-share
bound). The fused weights are ρ' = (1 − λ) ρ + λ e_N with λ = sigmoid(u): a simplex vector, and
the forecast and interval are those of the mixture with ρ'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc, ndtri

#: Most safeguarded Newton iterations per interval.
NEWTON_ITERATIONS = 16
#: The iterations stop once both bounds' CDFs are this close to their targets.
QUANTILE_TOLERANCE = 1e-14
#: Standardised absolute errors enter the last-value floor clipped at this many σ.
FALLBACK_LOSS_CLIP = 4.0
#: Bound of the floor's log-odds u: the last value's share λ stays in [sigmoid(−b), sigmoid(b)].
FALLBACK_LOGIT_BOUND = 5.0


def _mixture_cdf_pdf(x, weights, means, scales):
    """CDF and density of the mixture at each point of x (shape [k]); components on the last axis."""
    u = (x[:, None] - means[None, :]) / scales[None, :]
    cdf = jnp.sum(weights[None, :] * (0.5 * erfc(-u * (0.5 ** 0.5))), axis=-1)
    density = weights / (scales * jnp.sqrt(2.0 * jnp.pi))
    pdf = jnp.sum(density[None, :] * jnp.exp(-0.5 * u * u), axis=-1)
    return cdf, pdf


def mixture_quantiles(ps: tuple[float, ...], weights: jnp.ndarray, means: jnp.ndarray,
                      scales: jnp.ndarray) -> jnp.ndarray:
    """The ps-quantiles of Σ ρ_i N(m_i, s_i²) (scales > 0), solved together (shape [len(ps)]).

    Each lies between the smallest and the largest component quantile (below all of them every
    F_i < p, above all of them every F_i > p), which brackets the safeguarded Newton iteration.
    The CDF is Σ ρ_i erfc(−u_i/√2)/2 (one special function per component; ``ndtr`` evaluates
    both erf and erfc). The loop stops early: on CPU the iterations' special functions, not the
    loop, are the cost, and a batch of assets pays for the iterations its slowest row needs.
    """
    p = jnp.asarray(ps, dtype=jnp.float64)
    component = means[None, :] + ndtri(p)[:, None] * scales[None, :]
    lo, hi = jnp.min(component, axis=1), jnp.max(component, axis=1)
    mean = jnp.sum(weights * means)
    var = jnp.sum(weights * (scales**2 + means**2)) - mean**2
    x = jnp.clip(mean + ndtri(p) * jnp.sqrt(jnp.maximum(var, 0.0)), lo, hi)

    def body(carry):
        i, x, lo, hi, _ = carry
        cdf, pdf = _mixture_cdf_pdf(x, weights, means, scales)
        lo = jnp.where(cdf < p, x, lo)
        hi = jnp.where(cdf >= p, x, hi)
        newton = x - (cdf - p) / jnp.maximum(pdf, 1e-300)
        x = jnp.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
        return i + 1, x, lo, hi, jnp.max(jnp.abs(cdf - p))

    def cond(carry):
        return (carry[0] < NEWTON_ITERATIONS) & (carry[4] > QUANTILE_TOLERANCE)

    return jax.lax.while_loop(cond, body, (0, x, lo, hi, jnp.float64(1.0)))[1]


def mixture_quantile(p: float, weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray) -> jnp.ndarray:
    """The p-quantile of the mixture (scalar)."""
    return mixture_quantiles((p,), weights, means, scales)[0]


def fuse(weights: jnp.ndarray, means: jnp.ndarray, scales: jnp.ndarray, level: float,
         interval_scale: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(ŷ, lower, upper): weighted mean and the central ``level`` mixture interval."""
    tail = 0.5 * (1.0 - level)
    bounds = mixture_quantiles((tail, 1.0 - tail), weights, means, scales * interval_scale)
    return jnp.sum(weights * means), bounds[0], bounds[1]


def fallback_logit_step(logit: jnp.ndarray, mixture_error: jnp.ndarray, last_value_error: jnp.ndarray,
                        scale: jnp.ndarray, rate: float) -> jnp.ndarray:
    """The floor's log-odds after one scored tick: u + η(ℓ_mix − ℓ_N), clipped to
    ±``FALLBACK_LOGIT_BOUND``, with ℓ = min(|error|/scale, ``FALLBACK_LOSS_CLIP``) (errors and
    scale > 0 in signal units)."""
    mixture_loss = jnp.minimum(jnp.abs(mixture_error) / scale, FALLBACK_LOSS_CLIP)
    last_value_loss = jnp.minimum(jnp.abs(last_value_error) / scale, FALLBACK_LOSS_CLIP)
    return jnp.clip(logit + rate * (mixture_loss - last_value_loss), -FALLBACK_LOGIT_BOUND, FALLBACK_LOGIT_BOUND)


def floor_weights(weights: jnp.ndarray, logit: jnp.ndarray, index: int) -> jnp.ndarray:
    """ρ' = (1 − λ) ρ + λ e_index with λ = sigmoid(logit): the fused weights (a simplex vector
    when ``weights`` is one)."""
    share = 1.0 / (1.0 + jnp.exp(-logit))
    return (1.0 - share) * weights + share * (jnp.arange(weights.shape[-1]) == index)
