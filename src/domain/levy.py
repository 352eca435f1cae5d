"""α-stable sampling and the Itô–Lévy numerics of kernel C, as small pure JAX functions.

**Stable law.** :func:`sample_stable` draws from the stable law ``S(α, β, 1, 0)`` in Nolan's S1
parametrisation (Samorodnitsky–Taqqu's; ``scipy.stats.levy_stable``'s default,
``levy_stable.parameterization == "S1"``): unit scale, zero location, characteristic function

    E[exp(iuX)] = exp(−|u|^α (1 − iβ sign(u) tan(πα/2)))          for α ≠ 1,
    E[exp(iuX)] = exp(−|u| (1 + iβ (2/π) sign(u) log|u|))         for α = 1,

by the Chambers–Mallows–Stuck transform of a uniform angle and a unit exponential. For
``scale c`` and ``location δ`` use ``δ + c X`` when α ≠ 1 (and ``δ + c X + β (2/π) c log c`` when
α = 1, the S1 rule).

**Integration schemes** for ``dX = b(X) dt + s(X) dW`` on one substep of length ``h`` with a
Brownian increment ``dw ~ N(0, h)``:

- :func:`euler_maruyama_step` (strong order 0.5),
- :func:`milstein_step` (strong order 1.0 for state-dependent ``s``),
- :func:`trapezoidal_step`: the implicit trapezoidal rule on the drift, solved by a fixed number
  of predictor–corrector (fixed-point) iterations started from the Euler predictor; it returns
  the last residual so the caller can report convergence.

**Stiffness and the scheme choice.** :func:`stiffness` is ``S = |∂b/∂x| · Δt`` by a central
finite difference with step ``ε · max(1, |x|)`` (``ε = sde_fd_epsilon``): the number of drift
relaxation times in one forecast step. :func:`stiffness_thresholds` gives
``θ_L = max(100, 25/(1−H)²)`` and ``θ_H = max(1000, 250/(1−H)²)`` with ``H`` the Hölder exponent
clamped to [0, 0.95]; :func:`implicit_share` is the weight of the implicit scheme: 0 below
``θ_L``, 1 above ``θ_H``, linear in between (the convex blend).

**Hölder exponent of a window.** :func:`holder_exponent` estimates ``H`` from the window by the
increment variogram at lags 1 and 2, ``H = ½ log₂(V(2)/V(1))`` with ``V(k)`` the mean squared
``k``-step increment over the real observations (exact in expectation for fractional Brownian
motion); used by kernel C, which sees only its window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Drift = Callable[[jax.Array], jax.Array]

#: Hölder exponents are clamped to [0, HOLDER_MAX] before the thresholds (1 − H stays ≥ 0.05).
HOLDER_MAX = 0.95
#: θ_L = max(THETA_L_FLOOR, THETA_L_ROUGH / (1 − H)²); θ_H likewise.
THETA_L_FLOOR, THETA_L_ROUGH = 100.0, 25.0
THETA_H_FLOOR, THETA_H_ROUGH = 1000.0, 250.0
_HALF_PI = 0.5 * math.pi
_TINY = 1e-300


def _check_stable_parameters(alpha: float, beta: float) -> None:
    if isinstance(alpha, (int, float)) and not 0.0 < alpha <= 2.0:
        raise ValueError(f"alpha must lie in (0, 2], got {alpha!r}")
    if isinstance(beta, (int, float)) and not -1.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [-1, 1], got {beta!r}")


def sample_stable(key: jax.Array, alpha: float | jax.Array, beta: float | jax.Array,
                  shape: tuple[int, ...] = ()) -> jax.Array:
    """Draws of the stable law S(α, β, 1, 0) in Nolan's S1 parametrisation (scipy's default).

    Args:
        key: a PRNG key (raw ``uint32[2]`` or typed); split into the uniform and exponential keys.
        alpha: stability index α ∈ (0, 2] (Python float, or a traced float64 scalar; α = 1 is the
            Cauchy-type case with its own formula, α = 2 a normal of variance 2).
        beta: skewness β ∈ [−1, 1].
        shape: the shape of the result.
    Returns:
        float64[shape], unit scale, zero location (S1).
    Raises:
        ValueError: a Python ``alpha`` outside (0, 2] or ``beta`` outside [−1, 1] (traced values
            are the caller's to validate).

    Chambers–Mallows–Stuck (Weron's 1996 form): ``V ~ U(−π/2, π/2)``, ``W ~ Exp(1)``,
    ``B = arctan(β tan(πα/2))/α``, ``S = (1 + β² tan²(πα/2))^{1/(2α)}`` and
    ``X = S sin(α(V+B)) / cos(V)^{1/α} · (cos(V − α(V+B))/W)^{(1−α)/α}``; for α = 1,
    ``X = (2/π)((π/2 + βV) tan V − β log((π/2) W cos V / (π/2 + βV)))``. Both branches are
    computed and selected with ``jnp.where`` (α may be traced); inputs to the unused branch are
    kept finite so no NaN leaks through the selection.
    """
    _check_stable_parameters(alpha, beta)  # type: ignore[arg-type]
    a = jnp.asarray(alpha, jnp.float64)
    b = jnp.asarray(beta, jnp.float64)
    k_u, k_w = jax.random.split(key)
    eps = 1e-12
    v = jax.random.uniform(k_u, shape, jnp.float64, -_HALF_PI + eps, _HALF_PI - eps)
    w = jnp.maximum(jax.random.exponential(k_w, shape, jnp.float64), _TINY)
    is_one = jnp.abs(a - 1.0) < 1e-12
    a_safe = jnp.where(is_one, 1.5, a)  # the α ≠ 1 branch never sees α = 1
    t = b * jnp.tan(_HALF_PI * a_safe)
    shift = jnp.arctan(t) / a_safe
    factor = (1.0 + t * t) ** (0.5 / a_safe)
    cos_v = jnp.cos(v)
    general = (factor * jnp.sin(a_safe * (v + shift)) / cos_v ** (1.0 / a_safe)
               * (jnp.maximum(jnp.cos(v - a_safe * (v + shift)), _TINY) / w) ** ((1.0 - a_safe) / a_safe))
    tilt = _HALF_PI + b * v
    cauchy = (2.0 / math.pi) * (tilt * jnp.tan(v)
                                - b * jnp.log(_HALF_PI * w * cos_v / jnp.maximum(tilt, _TINY)))
    return jnp.where(is_one, cauchy, general)


# -- integration schemes ------------------------------------------------------------------------

def euler_maruyama_step(drift: Drift, diffusion: Drift, x: jax.Array, h: float | jax.Array,
                        dw: jax.Array) -> jax.Array:
    """``x + b(x) h + s(x) dw`` (strong order 0.5). Shapes broadcast; ``dw ~ N(0, h)``."""
    return x + drift(x) * h + diffusion(x) * dw


def milstein_step(drift: Drift, diffusion: Drift, x: jax.Array, h: float | jax.Array,
                  dw: jax.Array) -> jax.Array:
    """``x + b h + s dw + ½ s s' (dw² − h)`` (strong order 1.0); ``s'`` by forward-mode autodiff."""
    s, ds = jax.jvp(diffusion, (x,), (jnp.ones_like(x),))
    return x + drift(x) * h + s * dw + 0.5 * s * ds * (dw * dw - h)


def trapezoidal_step(drift: Drift, diffusion: Drift, x: jax.Array, h: float | jax.Array,
                     dw: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    """Implicit trapezoidal rule on the drift, ``y = x + ½(b(x) + b(y)) h + s(x) dw``, solved by
    ``iterations`` predictor–corrector (fixed-point) sweeps from the Euler–Maruyama predictor.

    Returns:
        (y, residual): the corrected state and ``max |y − x − ½(b(x)+b(y))h − s(x)dw|`` after the
        last sweep (0 when converged; it grows when ``|b'| h ≥ 2``, where the fixed point fails).
    """
    explicit = x + 0.5 * drift(x) * h + diffusion(x) * dw
    y = explicit + 0.5 * drift(x) * h  # the Euler predictor
    for _ in range(iterations):
        y = explicit + 0.5 * drift(y) * h
    residual = jnp.max(jnp.abs(y - explicit - 0.5 * drift(y) * h))
    return y, residual


# -- stiffness and the scheme choice --------------------------------------------------------------

def stiffness(drift: Drift, x: jax.Array, dt: float | jax.Array, epsilon: float) -> jax.Array:
    """``S = |∂b/∂x| · Δt`` at ``x`` by a central difference of step ``ε·max(1, |x|)`` (≥ 0, finite)."""
    step = epsilon * jnp.maximum(1.0, jnp.abs(x))
    slope = (drift(x + step) - drift(x - step)) / (2.0 * step)
    value = jnp.abs(slope) * dt
    return jnp.where(jnp.isfinite(value), value, jnp.finfo(jnp.float64).max)


def stiffness_thresholds(holder: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(θ_L, θ_H)`` for the Hölder exponent ``holder`` (clamped to [0, 0.95]; NaN reads as 0.5)."""
    h = jnp.asarray(holder, jnp.float64)
    h = jnp.clip(jnp.where(jnp.isfinite(h), h, 0.5), 0.0, HOLDER_MAX)
    rough = 1.0 / (1.0 - h) ** 2
    return (jnp.maximum(THETA_L_FLOOR, THETA_L_ROUGH * rough),
            jnp.maximum(THETA_H_FLOOR, THETA_H_ROUGH * rough))


def implicit_share(stiff: float | jax.Array, holder: float | jax.Array) -> jax.Array:
    """Weight of the implicit scheme in the convex blend: 0 for ``S ≤ θ_L``, 1 for ``S ≥ θ_H``,
    ``(S − θ_L)/(θ_H − θ_L)`` in between."""
    low, high = stiffness_thresholds(holder)
    return jnp.clip((jnp.asarray(stiff, jnp.float64) - low) / (high - low), 0.0, 1.0)


def holder_exponent(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Hölder exponent of a window by the lag-1/lag-2 variogram (module docstring), in [0, 1].

    Args:
        values: float64[n], oldest first. mask: float64[n], 1 on real observations.
    Returns:
        float64 scalar; 0.5 (Brownian) when the window has too few observations or no variation.
    """
    magnitude = jnp.maximum(jnp.max(jnp.abs(values)), _TINY)
    u = values / magnitude
    d1, m1 = u[1:] - u[:-1], mask[1:] * mask[:-1]
    d2, m2 = u[2:] - u[:-2], mask[2:] * mask[:-2]
    v1 = jnp.sum(m1 * d1 * d1) / jnp.maximum(jnp.sum(m1), 1.0)
    v2 = jnp.sum(m2 * d2 * d2) / jnp.maximum(jnp.sum(m2), 1.0)
    ok = (v1 > 0) & (v2 > 0) & (jnp.sum(m2) >= 4)
    h = 0.5 * jnp.log2(jnp.where(ok, v2, 2.0) / jnp.where(ok, v1, 1.0))
    return jnp.clip(jnp.where(ok, h, 0.5), 0.0, 1.0)


__all__ = [
    "HOLDER_MAX", "euler_maruyama_step", "holder_exponent", "implicit_share", "milstein_step",
    "sample_stable", "stiffness", "stiffness_thresholds", "trapezoidal_step",
]
