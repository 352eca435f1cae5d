"""Wavelet-transform modulus maxima (WTMM): Hölder exponent and singularity spectrum.

Pipeline (model.md §3), pure JAX on a fixed-length buffer. Every shape depends only on the
buffer length and the (static, hashable) config, so the analysis compiles once and vmaps:

1. CWT by FFT: the buffer minus the chord joining its ends (so that its periodic continuation
   is continuous), scaled to unit range, times the filter bank ψ̂(a_j ω) of the m-th derivative
   of a Gaussian, L1-normalised (``|W(a, ·)| ∝ a^H`` on a path of Hölder exponent H), on the
   dyadic scales ``a_j = 2^(j/v)`` between ``wtmm_min_scale`` and the largest scale allowed.
2. Modulus maxima in b at each scale: strict local maxima of ``|W|`` above a relative
   threshold, outside the cone of influence of the buffer ends (``wtmm_coi_factor · a``).
3. Lines linked from coarse to fine inside the cone ``|Δb| < besov_cone_c · a`` (largest
   modulus wins), and the sup-along-line rule ``Z(q, a) = Σ_lines (sup_{a' ≤ a} |W|)^q``,
   normalised by the fraction of the buffer inside the cone of influence (so that τ(0) = −1
   when the lines fill the buffer).
4. τ(q): weighted least-squares slope of ``log Z(q, a)`` against ``log a`` over the scaling
   range ``a ≥ wtmm_fit_min_scale``, weights ∝ (expected number of lines)^``wtmm_fit_weight_exponent``.
5. Legendre transform ``D(h) = min_q (q h − τ(q))``; the Hölder exponent is the centre of the
   set where D is maximal, computed exactly from the breakpoints of the piecewise-linear D.

See docs/wtmm.md for the choices, the configuration keys and the measured accuracy and cost.
"""

from __future__ import annotations

import functools
import math

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from .._config import PredictorConfig
from .._errors import ConfigError
from .._pytree import pytree

# Value reported when the buffer carries no usable singularity (constant or polynomial at the
# buffer's resolution): h = 1, a regular path, which never trips the roughness breaker.
REGULAR_HOLDER = 1.0


@attrs.frozen(eq=False)
class Plan:
    """Static (numpy) constants of one analysis: fixed by the buffer length and the config."""

    n: int
    scales: np.ndarray          # float64[S], a_j in samples
    filters: np.ndarray         # complex128[S, n // 2 + 1], ψ̂(a_j ω) on the rfft frequencies
    valid: np.ndarray           # bool[S, n], positions outside the cone of influence
    valid_fraction: np.ndarray  # float64[S]
    reach: tuple[int, ...]      # reach[j]: largest |Δb| linking scale j to scale j − 1
    pad: int                    # largest reach: padding of the linking sparse table
    level: tuple[int, ...]      # level[j]: sparse-table level covering the windows of link j + 1
    fit_weights: np.ndarray     # float64[S], regression weights (0 outside the scaling range)
    q: np.ndarray               # float64[Q]
    h_grid: np.ndarray          # float64[K]
    threshold: float


@functools.lru_cache(maxsize=64)
def make_plan(n: int, config: PredictorConfig) -> Plan:
    """Scales, filter bank, cone of influence and grids for buffers of length n."""
    v, m, coi = config.wtmm_voices_per_octave, config.wtmm_wavelet_order, config.wtmm_coi_factor
    a_max = config.wtmm_max_scale_fraction * n
    first = math.ceil(v * math.log2(config.wtmm_min_scale) - 1e-9)
    count = math.floor(v * math.log2(a_max) + 1e-9) + 1 - first
    scales = 2.0 ** (np.arange(first, first + max(count, 0)) / v)
    fitted = scales >= config.wtmm_fit_min_scale * (1 - 1e-12)
    if count < 2 or fitted.sum() < 3:
        raise ConfigError(f"WTMM on {n} samples: [numerical] wtmm_min_scale = {config.wtmm_min_scale}, "
                          f"wtmm_fit_min_scale = {config.wtmm_fit_min_scale} and wtmm_max_scale_fraction"
                          f" = {config.wtmm_max_scale_fraction} leave fewer than 3 scales to fit; widen them")
    if config.wtmm_h_min >= config.wtmm_h_max:
        raise ConfigError(f"[numerical] wtmm_h_min = {config.wtmm_h_min} must be below wtmm_h_max = "
                          f"{config.wtmm_h_max}")
    omega = 2.0 * np.pi * np.arange(n // 2 + 1) / n
    x = scales[:, None] * omega[None, :]
    filters = (1j * x) ** m * np.exp(-0.5 * x * x) / (m ** (m / 2) * np.exp(-m / 2))
    b = np.arange(n)[None, :]
    margin = coi * scales[:, None]
    valid = (b >= np.maximum(margin, 1.0)) & (b <= np.minimum(n - 1 - margin, n - 2.0))
    width = valid.sum(axis=1)
    if width[-1] < 1:
        raise ConfigError(f"[numerical] wtmm_coi_factor = {coi}: the cone of influence covers the whole "
                          f"{n}-sample buffer at scale {scales[-1]:.3g}; lower it or wtmm_max_scale_fraction")
    reach = (0, *(math.ceil(config.besov_cone_c * a - 1e-9) - 1 for a in scales[:-1]))
    pad = max(reach)
    level = tuple(math.floor(math.log2(2 * r + 1)) for r in reach[1:])
    fit_weights = np.where(fitted, (width / scales) ** config.wtmm_fit_weight_exponent, 0.0)
    q = np.linspace(config.wtmm_q_min, config.wtmm_q_max, config.wtmm_q_points)
    h_grid = np.linspace(config.wtmm_h_min, config.wtmm_h_max, config.wtmm_h_points)
    return Plan(n=n, scales=scales, filters=filters, valid=valid, valid_fraction=width / n, reach=reach,
                pad=pad, level=level, fit_weights=fit_weights, q=q, h_grid=h_grid,
                threshold=config.wtmm_maxima_threshold)


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
            (0 for a monofractal; clipped at 0 when noise bends τ the wrong way).
        n_lines: int32 scalar, number of distinct maxima lines in the skeleton.
        line_counts: int32[S], lines counted in Z at each scale of the scaling range.
        fit_scales: float64[S], the scales of the scaling range (samples).
        log_z: float64[Q, S], normalised log Z(q, a) on them (−inf where a scale holds no line).
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
    fit_scales: jax.Array
    log_z: jax.Array
    valid: jax.Array


@pytree
class WTMMSkeleton:
    """The maxima lines of one buffer (debug view; leading batch axes when vmapped).

    Attributes:
        scales: float64[S], the CWT scales in samples (finest first).
        modulus: float64[S, n], |W(a_j, b)| of the standardised buffer.
        maxima: bool[S, n], the modulus maxima kept at each scale.
        child: int32[S, n], at a maximum of scale j ≥ 1: the position of the maximum at scale
            j − 1 continuing its line (−1: the line starts at scale j); −1 elsewhere.
        sup: float64[S, n], sup of |W| along the line from the finest scale up to scale j.
    """

    scales: jax.Array
    modulus: jax.Array
    maxima: jax.Array
    child: jax.Array
    sup: jax.Array


# A modulus below this (the buffer is standardised to unit range) is round-off, not signal.
_FLOOR = 1e-10
# Relative size under which the detrended buffer counts as a straight line.
_ROUND_OFF = 1e-11


def cwt_modulus(signal: jax.Array, plan: Plan) -> jax.Array:
    """|W(a_j, b)|, float64[S, n]: CWT by FFT of the buffer minus the chord joining its ends
    (so that its periodic continuation has no jump), scaled to unit range."""
    raw = jnp.asarray(signal, dtype=jnp.float64)
    x = raw - raw[0] - (raw[-1] - raw[0]) * jnp.asarray(np.linspace(0.0, 1.0, plan.n))
    span = jnp.max(x) - jnp.min(x)
    # A buffer that is a straight line up to round-off carries no singularity: analyse zeros.
    alive = span > _ROUND_OFF * (jnp.max(jnp.abs(raw)) + jnp.max(raw) - jnp.min(raw))
    x = jnp.where(alive, x / jnp.where(alive, span, 1.0), 0.0)
    coefficients = jnp.fft.irfft(jnp.fft.rfft(x)[None, :] * jnp.asarray(plan.filters), n=plan.n, axis=-1)
    return jnp.abs(coefficients)


def modulus_maxima(modulus: jax.Array, plan: Plan) -> jax.Array:
    """float64[S, n], 1 at the kept maxima: strict local maxima of |W| in b (``>`` on the left,
    ``≥`` on the right), above the relative threshold, outside the cone of influence."""
    valid = jnp.asarray(plan.valid, dtype=modulus.dtype)
    level = jnp.max(modulus * valid, axis=1, keepdims=True)
    left = jnp.concatenate([modulus[:, :1], modulus[:, :-1]], axis=1)
    right = jnp.concatenate([modulus[:, 1:], modulus[:, -1:]], axis=1)
    keep = (modulus > left) & (modulus >= right) & (modulus >= plan.threshold * level) & (modulus > _FLOOR)
    return jnp.where(keep, valid, 0.0)


def trace_lines(modulus: jax.Array, maxima: jax.Array, plan: Plan) -> tuple[jax.Array, jax.Array]:
    """Link the maxima coarse to fine and carry the sup of |W| up each line.

    A maximum at scale j ≥ 1 continues the line of the largest maximum of scale j − 1 (the
    leftmost on exact ties) inside the cone |Δb| < besov_cone_c · a_{j−1}; without one, its line
    starts at scale j. The window maxima come from a sparse table built for every scale at once
    (level k: best of each run of 2^k positions; a window is the union of two runs), using only
    static slices (gathers are slow on CPU); the sup then climbs the scales through the same
    selections. Returns ``child`` (float64[S, n]: the linked position on the finer scale, −1 when
    none or off the maxima) and ``sup`` (float64[S, n]: sup of |W| along the line from its
    finest scale up to a_j, 0 off the maxima).
    """
    n, pad = plan.n, plan.pad
    key = modulus[:-1] * maxima[:-1] + maxima[:-1] - 1.0  # −1 off the maxima of the finer scale
    key = jnp.pad(key, ((0, 0), (pad, pad)), constant_values=-2.0)
    where = jnp.broadcast_to(jnp.arange(-pad, n + pad, dtype=modulus.dtype), key.shape)
    # Level l only for the rows whose windows need it (the reach grows with the scale).
    top = max(plan.level)
    first = [0, *(next(j for j, v in enumerate(plan.level) if v >= lv) for lv in range(1, top + 1))]
    keys, wheres, picks = [key], [where], []
    for level in range(top):
        step, drop = 2 ** level, first[level + 1] - first[level]
        key, where = key[drop:], where[drop:]
        right = key[:, step:] > key[:, :-step]
        key = jnp.where(right, key[:, step:], key[:, :-step])
        where = jnp.where(right, where[:, step:], where[:, :-step])
        keys.append(key)
        wheres.append(where)
        picks.append(right)

    def row(tables: list[jax.Array], j: int) -> jax.Array:
        return tables[plan.level[j]][j - first[plan.level[j]]]

    rows = range(len(plan.scales) - 1)
    heads = [_halves(row(keys, j), plan, j) for j in rows]
    take_tail = jnp.stack([pair[1] > pair[0] for pair in heads])
    best = jnp.stack([jnp.maximum(pair[0], pair[1]) for pair in heads])
    linked = (best >= 0) & (maxima[1:] > 0)
    positions = jnp.stack([_halves(row(wheres, j), plan, j) for j in rows])
    positions = jnp.where(take_tail, positions[:, 1], positions[:, 0])
    child = jnp.concatenate([jnp.full((1, n), -1.0), jnp.where(linked, positions, -1.0)])
    sups = [modulus[0] * maxima[0]]
    for j in rows:
        reach, offset = plan.reach[j + 1], pad - plan.reach[j + 1]
        payload = jnp.pad(sups[-1], (reach, reach))
        for level in range(plan.level[j]):
            step = 2 ** level
            size = payload.shape[0] - step
            pick = picks[level][j - first[level + 1]]
            payload = jnp.where(pick[offset:offset + size], payload[step:], payload[:-step])
        tail = 2 * reach + 1 - 2 ** plan.level[j]
        below = jnp.where(take_tail[j], payload[tail:tail + n], payload[:n])
        sups.append(jnp.maximum(modulus[j + 1], jnp.where(linked[j], below, 0.0)) * maxima[j + 1])
    return child, jnp.stack(sups)


def _halves(table: jax.Array, plan: Plan, row: int) -> jax.Array:
    """The two runs of 2^k positions covering each window of link ``row`` in a level-k table row."""
    reach, size = plan.reach[row + 1], 2 ** plan.level[row]
    lo = plan.pad - reach
    hi = lo + 2 * reach + 1 - size
    return jnp.stack([table[lo:lo + plan.n], table[hi:hi + plan.n]])


def _regression_slopes(log_z: jax.Array, weights: jax.Array, log_a: jax.Array) -> jax.Array:
    """Weighted least-squares slope of each row of ``log_z`` against ``log_a`` (zero weight skips)."""
    w = weights / jnp.maximum(jnp.sum(weights), 1e-300)
    x_bar = jnp.sum(w * log_a)
    dx = log_a - x_bar
    y = jnp.where(weights[None, :] > 0, log_z, 0.0)
    y_bar = jnp.sum(w[None, :] * y, axis=1, keepdims=True)
    sxx = jnp.maximum(jnp.sum(w * dx * dx), 1e-300)
    return jnp.sum(w[None, :] * dx[None, :] * (y - y_bar), axis=1) / sxx


def legendre_argmax(q: np.ndarray, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centre of argmax_h D(h), D(h) = min_k (q_k h − τ_k), and the maximum value.

    D is concave and piecewise linear; the ends of its argmax interval are crossings of a line
    with q ≥ 0 and one with q ≤ 0, so evaluating D at all such crossings is exact.
    """
    upper, lower = np.nonzero(q >= 0)[0], np.nonzero(q <= 0)[0]
    i, k = np.meshgrid(upper, lower, indexing="ij")
    keep = q[i] > q[k]
    i, k = i[keep], k[keep]
    candidates = (tau[i] - tau[k]) / jnp.asarray(q[i] - q[k])
    d_at = jnp.min(jnp.asarray(q)[None, :] * candidates[:, None] - tau[None, :], axis=1)
    best = jnp.max(d_at)
    on_top = d_at >= best - 1e-9 * (1.0 + jnp.abs(best))
    lo = jnp.min(jnp.where(on_top, candidates, jnp.inf))
    hi = jnp.max(jnp.where(on_top, candidates, -jnp.inf))
    return 0.5 * (lo + hi), best


def partition_function(sup: jax.Array, maxima: jax.Array, plan: Plan) -> jax.Array:
    """log Z(q, a_j), float64[Q, S_fit], over the scaling range, normalised by the fraction of the
    buffer inside the cone of influence (−inf at a scale without lines).

    Two strict local maxima are never adjacent, so each scale folds into pairs of neighbours
    holding at most one maximum (``sup`` is 0 off the maxima): half the powers to evaluate.
    """
    fitted = plan.fit_weights > 0
    values, kept = sup[fitted], maxima[fitted]
    if plan.n % 2:
        values, kept = jnp.pad(values, ((0, 0), (0, 1))), jnp.pad(kept, ((0, 0), (0, 1)))
    values, kept = values[:, 0::2] + values[:, 1::2], kept[:, 0::2] + kept[:, 1::2]
    log_sup = jnp.log(values + (1.0 - kept))  # 0 where the pair holds no maximum
    q = jnp.asarray(plan.q)
    total = jnp.sum(jnp.exp(q[:, None, None] * log_sup[None]) * kept[None], axis=-1)
    return jnp.log(total) - jnp.asarray(np.log(plan.valid_fraction[fitted]))[None, :]


def _count_lines(maxima: jax.Array, child: jax.Array) -> jax.Array:
    """Distinct maxima lines: all maxima minus those a coarser maximum continues. Links never
    cross (the best of two overlapping windows cannot swap order), so the continued maxima of a
    scale are the rises of the running maximum of the coarser scale's links."""
    links = child[1:]
    running = jax.lax.associative_scan(jnp.maximum, links, axis=1)
    before = jnp.concatenate([jnp.full((links.shape[0], 1), -1.0), running[:, :-1]], axis=1)
    return (jnp.sum(maxima) - jnp.sum(jnp.where(links > before, 1.0, 0.0))).astype(jnp.int32)


def _analyse(signal: jax.Array, plan: Plan) -> WTMMResult:
    modulus = cwt_modulus(signal, plan)
    maxima = modulus_maxima(modulus, plan)
    child, sup = trace_lines(modulus, maxima, plan)
    fitted = plan.fit_weights > 0
    log_z = partition_function(sup, maxima, plan)
    line_counts = jnp.sum(maxima[fitted], axis=-1).astype(jnp.int32)
    weights = jnp.asarray(plan.fit_weights[fitted]) * (line_counts > 0)
    valid = jnp.sum(weights > 0) >= 3
    q = jnp.asarray(plan.q)
    tau = _regression_slopes(log_z, weights, jnp.asarray(np.log(plan.scales[fitted])))
    tau = jnp.where(valid, tau, REGULAR_HOLDER * q - 1.0)
    holder, d_max = legendre_argmax(plan.q, tau)
    h_grid = jnp.asarray(plan.h_grid)
    spectrum = jnp.min(q[None, :] * h_grid[:, None] - tau[None, :], axis=1)
    # h_max − h_min of the support; a regression that bends τ the wrong way reads as a monofractal
    width = jnp.maximum((tau[1] - tau[0]) / (q[1] - q[0]) - (tau[-1] - tau[-2]) / (q[-1] - q[-2]), 0.0)
    return WTMMResult(holder=holder, q=q, tau=tau, h_grid=h_grid, spectrum=spectrum, d_max=d_max,
                      width=width, n_lines=_count_lines(maxima, child), line_counts=line_counts,
                      fit_scales=jnp.asarray(plan.scales[fitted]), log_z=log_z, valid=valid)


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


@functools.partial(jax.jit, static_argnames=("config",))
def wtmm_skeleton(signal: jax.Array, config: PredictorConfig) -> WTMMSkeleton:
    """The CWT modulus, its maxima and their coarse-to-fine links (for inspection and tests)."""
    plan = make_plan(int(signal.shape[-1]), config)
    modulus = cwt_modulus(signal, plan)
    maxima = modulus_maxima(modulus, plan)
    child, sup = trace_lines(modulus, maxima, plan)
    return WTMMSkeleton(scales=jnp.asarray(plan.scales), modulus=modulus, maxima=maxima > 0,
                        child=child.astype(jnp.int32), sup=sup)
