"""Wavelet-transform modulus maxima (WTMM): Hölder exponent and singularity spectrum.

Pipeline (model.md §3), all pure JAX on a fixed-length buffer; every shape depends only on
the buffer length and the (static, hashable) config, so the function jits once and vmaps:

1. The buffer is standardised and mirror-extended to length 2n (a continuous periodic signal,
   so the FFT sees no jump at the ends); its CWT with the m-th derivative of a Gaussian,
   L1-normalised (``|W(a, ·)| ∝ a^H`` on a path of Hölder exponent H), is one FFT, one product
   with the filter bank and one batched inverse FFT, on scales ``a_j = a_min · 2^(j/v)``.
2. Modulus maxima in b at each scale: strict local maxima of ``|W|`` above a relative
   threshold, outside the cone of influence of the buffer ends (``coi_factor · a``).
3. Linking from coarse to fine (:mod:`._skeleton`), then the sup-along-line rule
   ``Z(q, a) = Σ_lines (sup_{a' ≤ a} |W|)^q``, normalised by the fraction of the buffer inside
   the cone of influence so that ``τ(0) = −1`` for a space-filling set of lines.
4. τ(q) is the least-squares slope of ``log Z(q, a)`` against ``log a`` over the scaling range,
   with weights proportional to the expected number of lines at each scale.
5. Legendre transform ``D(h) = min_q (q h − τ(q))``; the Hölder exponent is the centre of the
   set where D is maximal, computed exactly from the breakpoints of the piecewise-linear D.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._config import PredictorConfig
from .._pytree import pytree
from ._plan import Plan, make_plan
from ._skeleton import link_maxima, modulus_maxima, sup_along_lines

# Value reported when the buffer carries no usable singularity (constant or polynomial at the
# buffer's resolution): h = 1, a regular path, which never trips the roughness breaker.
REGULAR_HOLDER = 1.0


@pytree
class WTMMResult:
    """Multifractal analysis of one buffer (leading batch axes when vmapped).

    Attributes:
        holder: float64 scalar, the h maximising D(h) (``REGULAR_HOLDER`` when not ``valid``).
        q: float64[Q], the moments.
        tau: float64[Q], the scaling function τ(q) (≈ qH − 1 for a monofractal).
        h_grid: float64[K], where the spectrum is evaluated.
        spectrum: float64[K], D(h) = min_q (q h − τ(q)) on ``h_grid``.
        d_max: float64 scalar, max_h D(h) (= −τ(0), ≈ 1 when the lines fill the buffer).
        width: float64 scalar, spectrum width: τ'(q_min) − τ'(q_max) from the end chords of τ
            (0 for a monofractal).
        n_lines: int32 scalar, number of distinct maxima lines in the skeleton.
        line_counts: int32[S], lines counted in Z at each scale.
        scales: float64[S], the CWT scales in samples.
        log_z: float64[Q, S], normalised log Z(q, a) (−inf where a scale holds no line).
        valid: bool scalar, at least three scales of the scaling range hold lines.
    """

    holder: jax.Array
    q: jax.Array
    tau: jax.Array
    h_grid: jax.Array
    spectrum: jax.Array
    d_max: jax.Array
    width: jax.Array
    n_lines: jax.Array
    line_counts: jax.Array
    scales: jax.Array
    log_z: jax.Array
    valid: jax.Array


def cwt_modulus(signal: jax.Array, plan: Plan) -> jax.Array:
    """|W(a_j, b)|, float64[S, n], of the standardised, mirror-extended signal."""
    x = jnp.asarray(signal, dtype=jnp.float64)
    span = jnp.max(x) - jnp.min(x)
    x = (x - jnp.mean(x)) / jnp.where(span > 0, span, 1.0)
    spectrum = jnp.fft.rfft(jnp.concatenate([x, x[::-1]]))
    coefficients = jnp.fft.irfft(spectrum[None, :] * jnp.asarray(plan.filters), n=2 * plan.n, axis=-1)
    return jnp.abs(coefficients[:, : plan.n])


def _regression_slopes(log_z: jax.Array, weights: jax.Array, log_a: jax.Array) -> jax.Array:
    """Weighted least-squares slope of each row of ``log_z`` against ``log_a`` (zero weight skips)."""
    w = weights / jnp.maximum(jnp.sum(weights), 1e-300)
    x_bar = jnp.sum(w * log_a)
    dx = log_a - x_bar
    y = jnp.where(weights[None, :] > 0, log_z, 0.0)
    y_bar = jnp.sum(w[None, :] * y, axis=1, keepdims=True)
    sxx = jnp.maximum(jnp.sum(w * dx * dx), 1e-300)
    return jnp.sum(w[None, :] * dx[None, :] * (y - y_bar), axis=1) / sxx


def legendre_argmax(q: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centre of argmax_h D(h), D(h) = min_k (q_k h − τ_k), and the maximum value.

    D is concave and piecewise linear; the ends of its argmax interval are crossings of a line
    with q ≥ 0 and one with q ≤ 0, so evaluating D at all such crossings is exact.
    """
    nonneg, nonpos = q >= 0, q <= 0
    dq = q[:, None] - q[None, :]
    usable = nonneg[:, None] & nonpos[None, :] & (dq > 0)
    crossings = jnp.where(usable, (tau[:, None] - tau[None, :]) / jnp.where(usable, dq, 1.0), 0.0)
    if bool(np.any(np.asarray(q) == 0.0)):
        crossings = jnp.where(usable, crossings, 0.0)
    candidates = crossings.reshape(-1)
    d_at = jnp.min(q[None, :] * candidates[:, None] - tau[None, :], axis=1)
    flat_usable = usable.reshape(-1)
    d_at = jnp.where(flat_usable, d_at, -jnp.inf)
    best = jnp.max(d_at)
    on_top = flat_usable & (d_at >= best - 1e-9 * (1.0 + jnp.abs(best)))
    lo = jnp.min(jnp.where(on_top, candidates, jnp.inf))
    hi = jnp.max(jnp.where(on_top, candidates, -jnp.inf))
    return 0.5 * (lo + hi), best


def _analyse(signal: jax.Array, plan: Plan) -> WTMMResult:
    modulus = cwt_modulus(signal, plan)
    maxima = modulus_maxima(modulus, plan)
    child = link_maxima(modulus, maxima, plan)
    sup = sup_along_lines(modulus, maxima, child)
    q = jnp.asarray(plan.q)
    log_sup = jnp.where(maxima, jnp.log(jnp.where(maxima, sup, 1.0)), -jnp.inf)
    exponent = q[:, None, None] * log_sup[None, :, :]
    log_z = jax.nn.logsumexp(jnp.where(maxima[None], exponent, -jnp.inf), axis=-1)
    log_z = log_z - jnp.asarray(np.log(plan.valid_fraction))[None, :]
    line_counts = jnp.sum(maxima, axis=-1, dtype=jnp.int32)
    fit = jnp.asarray(plan.fit_weights) * (line_counts > 0)
    valid = jnp.sum(fit > 0) >= 3
    tau = _regression_slopes(log_z, fit, jnp.asarray(np.log(plan.scales)))
    tau = jnp.where(valid, tau, REGULAR_HOLDER * q - 1.0)
    holder, d_max = legendre_argmax(q, tau)
    h_grid = jnp.asarray(plan.h_grid)
    spectrum = jnp.min(q[None, :] * h_grid[:, None] - tau[None, :], axis=1)
    width = (tau[1] - tau[0]) / (q[1] - q[0]) - (tau[-1] - tau[-2]) / (q[-1] - q[-2])
    has_parent = jnp.zeros_like(maxima).at[:-1].set(
        jax.vmap(lambda c, m: jnp.zeros(plan.n, bool).at[jnp.where(m & (c >= 0), c, plan.n)].set(
            True, mode="drop"))(child[1:], maxima[1:]))
    n_lines = jnp.sum(maxima & ~has_parent, dtype=jnp.int32)
    return WTMMResult(holder=holder, q=q, tau=tau, h_grid=h_grid, spectrum=spectrum, d_max=d_max,
                      width=width, n_lines=n_lines, line_counts=line_counts,
                      scales=jnp.asarray(plan.scales), log_z=log_z, valid=valid)


@functools.partial(jax.jit, static_argnames=("config",))
def wtmm(signal: jax.Array, config: PredictorConfig) -> WTMMResult:
    """WTMM analysis of a 1-D buffer (float64[n]); jit- and vmap-safe, config static.

    The scales, cone of influence, q and h grids and regression weights come from the
    ``wtmm_*`` and ``besov_cone_c`` keys of ``config`` and the buffer length n.
    """
    return _analyse(signal, make_plan(int(signal.shape[-1]), config))


@functools.partial(jax.jit, static_argnames=("config",))
def holder_exponent(buffer: jax.Array, config: PredictorConfig) -> jax.Array:
    """Hölder exponent of the buffer (the h maximising the WTMM spectrum D(h)), float64 scalar."""
    return _analyse(buffer, make_plan(int(buffer.shape[-1]), config)).holder
