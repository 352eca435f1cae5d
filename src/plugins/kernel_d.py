"""Kernel D — rough paths: log-signature features and an online linear readout.

Per tick (``update``), on the window of the signal:

1. **Normalise.** Increments of the window are divided by their root mean square over the real
   observations (so the kernel is invariant to the level and the scale of the signal), computed
   after dividing the window by its largest magnitude so that nothing overflows for any finite
   input; normalised increments are clipped to ``±INCREMENT_CLIP``.
2. **Paths.** For each lookback ``M`` in ``LOOKBACKS`` (capped at ``window_size − 1``), the last
   ``M`` normalised increments form the time-augmented path ``(t, x)`` with ``t`` uniform on
   ``[0, 1]`` and ``x`` the cumulative increments over ``√M`` (levels of order one).
3. **Features.** The log-signature of each path at depth ``log_sig_depth`` in the Lyndon basis
   (``usp.domain.signature``), without the constant time coordinate, plus a bias. Features are
   ordered by signature level (bias, level 1 of every lookback, level 2, …), so the features at
   depth ``M`` are a prefix of those at depth 5: the level-2 coordinate is the signed Lévy area
   between time and the path, level 3 holds ``[[t, x], x]`` (a signed quadratic area), etc.
4. **Readout.** The next normalised increment is regressed on the features by exponentially
   forgotten least squares (factor ``FORGETTING``): the state keeps the sufficient statistics
   ``G = Σ λ^{t−s} φ_s φ_sᵀ`` and ``b = Σ λ^{t−s} φ_s z_{s+1}`` at the size of depth 5, and the
   weights solve ``(G_MM + RIDGE·diag(G_MM) + ε I) w = b_M`` on the leading block of the current
   depth (a scale-free ridge). Features above the current depth enter the statistics as zeros,
   so the statistics stay positive semi-definite and switching depth (load shedding, §7) needs
   no retraining: each depth reads the best readout of its own features from the same state.
5. **Forecast.** ``mean = y_t + s_t · clip(⟨w, φ_t⟩, ±PREDICTION_CLIP)`` with ``s_t`` the RMS
   increment; ``scale`` is the square root of an EMA (weight ``volatility_alpha``) of the kernel's
   own squared one-step errors (seeded with the window's mean squared increment), floored at
   ``SCALE_FLOOR_RELATIVE`` × the window's largest magnitude: relative to the series, so a series
   scaled by 1e-15 gets the same intervals scaled by 1e-15 (an absolute floor of 1e-12 made them
   up to 580× too wide there); ``_TINY`` (absolute) only keeps an all-zero window off 0/0.

While ``window.signal_frozen`` the state is returned untouched, so the forecast stays at its last
value. ``predict`` reads the forecast that ``update`` prepared for the same window (before any
update it falls back to the last value and the window's RMS increment).

Kernel D defines no ``fit``: its readout is already the exact forgotten least-squares solution of
everything ``update`` has seen, so ``fit_history``'s scan leaves nothing to refine offline (a
``fit`` that replayed ``update`` would count the history twice; see the fit contract in
``usp.domain._kernel``).

Module constants (candidates for ``[kernels]`` keys): ``LOOKBACKS``, ``FORGETTING``, ``RIDGE``,
``INCREMENT_CLIP``, ``PREDICTION_CLIP``, ``SCALE_FLOOR_RELATIVE``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window
from ..domain._pytree import pytree
from ..domain.signature import logsignature, lyndon_words

LOOKBACKS: tuple[int, ...] = (4, 16)
FORGETTING = 0.998
RIDGE = 0.03
LEVEL_RIDGE_GROWTH = 3.0
PRIOR_SAMPLES = 1.0
WARMUP_PER_FEATURE = 2
INCREMENT_CLIP = 5.0
PREDICTION_CLIP = 4.0
MAX_DEPTH = 5
#: Smallest forecast scale, relative to the window's largest |value| (≈ 4500 ulp of float64).
SCALE_FLOOR_RELATIVE = 1e-12
_TINY = 1e-300
_BIG = float(jnp.finfo(jnp.float64).max)


def _per_level(depth: int) -> list[int]:
    """Lyndon coordinates of a 2-D path per level, the constant time coordinate removed."""
    counts = [sum(1 for w in lyndon_words(2, depth) if len(w) == k) for k in range(1, depth + 1)]
    counts[0] -= 1
    return counts


def _feature_levels(depth: int) -> np.ndarray:
    """Signature level of each feature (0 for the bias), in feature order."""
    levels = [0] + [k + 1 for k, size in enumerate(_per_level(depth)) for _ in range(len(LOOKBACKS) * size)]
    return np.asarray(levels, dtype=np.float64)


def n_features(depth: int) -> int:
    """Length of the feature vector (bias included) at signature depth ``depth``."""
    return 1 + len(LOOKBACKS) * sum(_per_level(depth))


@pytree
class KernelDState:
    """Kernel D state (one asset).

    Attributes:
        gram: float64[F, F], forgotten Gram matrix of the features (F = n_features(5)).
        moment: float64[F], forgotten cross-moment of features and next normalised increment.
        weights: float64[F], readout of the current depth (zeros above it).
        features: float64[F], features of the latest window (zeros above the current depth).
        increment_scale: float64, RMS increment s_t of the latest window.
        last_value: float64, the observation the latest forecast started from.
        mean: float64, the latest forecast of the next value.
        error_var: float64, EMA of squared one-step errors (signal units²).
        steps: int32, number of updates performed.
    """

    gram: jax.Array
    moment: jax.Array
    weights: jax.Array
    features: jax.Array
    increment_scale: jax.Array
    last_value: jax.Array
    mean: jax.Array
    error_var: jax.Array
    steps: jax.Array


def init(config: PredictorConfig, key: jax.Array) -> KernelDState:
    """A cold state: empty statistics, zero readout."""
    del config, key
    f = n_features(MAX_DEPTH)
    zero = jnp.zeros((), jnp.float64)
    return KernelDState(gram=jnp.zeros((f, f)), moment=jnp.zeros((f,)), weights=jnp.zeros((f,)),
                        features=jnp.zeros((f,)), increment_scale=zero, last_value=zero, mean=zero,
                        error_var=zero, steps=jnp.zeros((), jnp.int32))


def window_features(values: jax.Array, count: jax.Array, depth: int) -> tuple[jax.Array, jax.Array]:
    """Features (padded to depth 5) and RMS increment of a window (see module docstring).

    Args:
        values: float64[n] oldest first. count: real observations at the end of ``values``.
    Returns:
        (float64[n_features(5)], float64 RMS increment in signal units).
    """
    n = values.shape[-1]
    magnitude = jnp.maximum(jnp.max(jnp.abs(values)), _TINY)
    u = values / magnitude
    du = u[1:] - u[:-1]
    real = (jnp.arange(n - 1) >= n - count).astype(values.dtype)  # both ends observed
    rms = jnp.sqrt(jnp.sum(real * du * du) / jnp.maximum(jnp.sum(real), 1.0))
    z = jnp.clip(du / jnp.where(rms > 0, rms, 1.0), -INCREMENT_CLIP, INCREMENT_CLIP) * real
    blocks: list[list[jax.Array]] = [[] for _ in range(depth)]
    for lookback in LOOKBACKS:
        m = min(lookback, n - 1)
        x = jnp.concatenate([jnp.zeros((1,), z.dtype), jnp.cumsum(z[-m:])]) / math.sqrt(m)
        t = jnp.linspace(0.0, 1.0, m + 1, dtype=z.dtype)
        coords = logsignature(jnp.stack([t, x], axis=-1), depth)[1:]  # drop the constant Δt
        start = 0
        for level, size in enumerate(_per_level(depth)):
            blocks[level].append(coords[start:start + size])
            start += size
    phi = jnp.concatenate([jnp.ones((1,), z.dtype)] + [c for level in blocks for c in level])
    phi = jnp.pad(phi, (0, n_features(MAX_DEPTH) - phi.shape[0]))
    return phi, jnp.minimum(rms * magnitude, _BIG)


def _readout(gram: jax.Array, moment: jax.Array, steps: jax.Array, depth: int) -> jax.Array:
    """Scale-free ridge solution on the leading block of the current depth, padded with zeros."""
    f, full = n_features(depth), gram.shape[-1]
    g, b = gram[:f, :f], moment[:f]
    diag = jnp.diagonal(g)
    growth = jnp.asarray(LEVEL_RIDGE_GROWTH ** np.maximum(_feature_levels(depth) - 1, 0))
    penalty = diag * (RIDGE * growth + PRIOR_SAMPLES * f / jnp.maximum(steps, 1)) + 1e-9
    w = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(g + jnp.diag(penalty)), b)
    return jnp.pad(w, (0, full - f))


def _ema_scale(var: jax.Array, error: jax.Array, alpha: float) -> jax.Array:
    """``(1 − α) var + α e²`` computed without overflow (returns a variance, clipped finite)."""
    big = jnp.maximum(jnp.sqrt(var), jnp.abs(error))
    big_safe = jnp.where(big > 0, big, 1.0)
    ratio = (1 - alpha) * (jnp.sqrt(var) / big_safe) ** 2 + alpha * (error / big_safe) ** 2
    return jnp.minimum(ratio * big * big, _BIG)


def update(state: KernelDState, window: Window, config: PredictorConfig) -> KernelDState:
    """Learn from ``window.values[-1]`` and prepare the forecast of the next value."""
    depth = config.log_sig_depth
    y = window.values[-1]
    started = state.steps > 0
    # 1. learn: the previous features against the realised normalised increment
    s_prev = jnp.where(state.increment_scale > 0, state.increment_scale, 1.0)
    target = jnp.clip((y - state.last_value) / s_prev, -INCREMENT_CLIP, INCREMENT_CLIP)
    target = jnp.where(started & (state.increment_scale > 0), target, 0.0)
    weight = jnp.where(started, 1.0, 0.0)
    phi_prev = state.features
    gram = FORGETTING * state.gram + weight * jnp.outer(phi_prev, phi_prev)
    moment = FORGETTING * state.moment + weight * phi_prev * target
    error = jnp.clip(y - state.mean, -_BIG, _BIG)
    # 2. features of the current window and the new readout
    phi, s = window_features(window.values, window.count, depth)
    weights = _readout(gram, moment, state.steps, depth)
    drift = jnp.clip(jnp.dot(weights, phi), -PREDICTION_CLIP, PREDICTION_CLIP)
    drift = jnp.where(state.steps >= WARMUP_PER_FEATURE * n_features(depth), drift, 0.0)
    mean = jnp.clip(y + s * drift, -_BIG, _BIG)
    error_var = jnp.where(started, _ema_scale(state.error_var, error, config.volatility_alpha),
                          jnp.minimum(s * s, _BIG))
    new = KernelDState(gram=gram, moment=moment, weights=weights, features=phi, increment_scale=s,
                       last_value=y, mean=mean, error_var=error_var, steps=state.steps + 1)
    frozen = jnp.asarray(window.signal_frozen, bool)
    return jax.tree_util.tree_map(lambda old, fresh: jnp.where(frozen, old, fresh), state, new)


def _scale_floor(values: jax.Array, mean: jax.Array) -> jax.Array:
    """Smallest scale (signal units): ``SCALE_FLOOR_RELATIVE`` × the largest of |window| and
    |mean|, so it follows the series' own scale; ``_TINY`` only for an all-zero window."""
    magnitude = jnp.maximum(jnp.max(jnp.abs(values)), jnp.abs(mean))
    return jnp.maximum(SCALE_FLOOR_RELATIVE * magnitude, _TINY)


def predict(state: KernelDState, window: Window, config: PredictorConfig) -> KernelForecast:
    """The forecast ``update`` prepared (held while the signal is frozen)."""
    del config
    y = window.values[-1]
    started = state.steps > 0
    mean = jnp.where(started, state.mean, y)
    var = jnp.where(started, state.error_var, 0.0)
    scale = jnp.maximum(jnp.sqrt(var), _scale_floor(window.values, mean))
    return KernelForecast(mean=mean, scale=scale)


KERNEL_D = KernelSpec(
    name="D", init=init, update=update, predict=predict,
    description="Rough paths: log-signature of the time-augmented window, online ridge readout "
                "with forgetting (depth switchable 2..5 without retraining)",
)
