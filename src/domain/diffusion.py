"""Markov diffusion numerics of kernel B, as small pure JAX functions (model.md §4, B).

Model: a time-homogeneous diffusion ``dX = b(X) dt + σ(X) dW``. Units: every function here
works in whatever units its caller gives; kernel B passes levels normalised by its window
(``ξ = (x − centre)/radius``) and time in sampling steps (one forecast step is ``T = 1``).

**Drift and diffusion** (:func:`estimate_coefficients`): kernel regression of the one-step
increments ``d_i = x_{i+1} − x_i`` and of their squared residuals on the levels ``x_i``, on a
uniform grid of ``n`` nodes. The pairs are linearly binned onto the grid (each pair splits its
weight between the two nodes around it), then

- the drift ``b(g_k)`` is the *local-linear* Gaussian-kernel regression at each node (no design
  bias for a linear drift, unlike Nadaraya–Watson), its slope ridged by ``SLOPE_RIDGE · s0 · h²``;
- the bandwidth ``h`` is chosen among ``BANDWIDTHS`` grid cells by leave-three-bins-out
  cross-validation (the bins ``k−1, k, k+1`` are left out of the fit at ``g_k``: a pair binned
  on two nodes never predicts itself);
- ``σ²(g_k)`` is the Nadaraya–Watson average of the squared residuals ``(d_i − b(x_i))²`` with
  twice the chosen bandwidth (positive by construction);
- ``PRIOR_MASS`` pseudo-pairs per node at the global mean increment and variance keep both
  finite and flat far from the data;
- ``|b| ≤ max |d_i|`` and ``σ² ∈ [VARIANCE_FLOOR · v̄, max d_i²]`` (``v̄`` the increments'
  variance). With fewer than ``MIN_PAIRS`` pairs, or flat increments, both fall back to
  constants: the mean increment and ``max(v̄, floor)``.

**Backward Kolmogorov** (:func:`solve_backward`): ``u_t + b u_x + ½σ² u_xx = 0`` on the grid,
backwards from ``u(T, x)`` (several terminal conditions at once). The space operator
(:func:`generator`) is the monotone upwind scheme with the least numerical diffusion: central
differences wherever the cell Péclet number ``|b| Δx / σ²`` is at most 1 (where they are
monotone; second order), first-order upwind without the physical diffusion elsewhere (its
numerical diffusion ``½|b|Δx`` exceeds ``½σ²`` there). Both edges carry the drift alone, and only
when it points into the grid (``u_xx = 0`` there and a one-sided inward difference; frozen when
the drift points out), so every off-diagonal entry is ≥ 0. Time: explicit Euler steps under the
CFL bound ``Δt ≤ C_SAFE Δx² / (2 sup σ² + sup|b| Δx)`` (:func:`cfl_step`), which keeps every
coefficient of an Euler step ≥ 0, combined as the strong-stability-preserving Runge–Kutta
(Heun) step, a convex combination of Euler steps: monotone under the same bound, second order
in time. When the bound needs more than ``max_explicit`` steps, ``implicit`` backward-Euler
steps instead (``I − Δt L`` is an M-matrix: monotone for any step; first order in time).

**Differential entropy** (:func:`spacing_entropy`): Vasicek's spacing estimator on the sorted
values a function takes on the grid, in units of a reference spacing.

**Deep Galerkin** (:func:`dgm_apply`, :func:`dgm_loss`, :func:`dgm_train`): an MLP
``V_θ(τ, η) → (V¹, V²)`` on ``τ ∈ [0, 1]`` and ``η ∈ [−1, 1]`` (the grid's normalised time and
space) solving ``V_τ + β V_η + ½ α V_ηη = 0`` with ``V¹(1, η) = η`` and ``V²(1, η) = (η − η_c)²``.
The loss is the PDE residual at random interior points plus the terminal error plus the residual
of the edge condition (the finite-difference scheme's: ``V_τ + β_in V_η = 0``, ``β_in`` the
inward part of the drift). Adam, gradient norm clipped at ``CLIP_NORM``; more than
``CLIP_STREAK`` clipped iterations in a row halve the learning rate. The hidden width is chosen
among a precompiled set by a mask: every set of weights has the largest width, neurons beyond
the active width output 0 (and their outgoing weights start at 0, so widening keeps the function).

**Gating** (:func:`when_due`): a heavy step that runs only on due ticks; under ``vmap`` it runs
(for all rows, kept only where due) only when some row is due, instead of on every tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

from ._pytree import pytree

#: Candidate bandwidths of the drift regression, in grid cells.
BANDWIDTHS: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
#: Pseudo-pairs per grid node at the global mean increment and variance.
PRIOR_MASS = 0.05
#: Ridge on the local slope, relative to ``s0 · h²`` (cells²).
SLOPE_RIDGE = 0.01
#: Fewest real pairs for the regression (else constant coefficients).
MIN_PAIRS = 8
#: ``σ²`` never falls below this fraction of the increments' variance.
VARIANCE_FLOOR = 1e-4
#: Safety factor of the CFL bound.
C_SAFE = 0.9
#: Gradient-norm clip of the DGM training, and the clipped iterations in a row it tolerates.
CLIP_NORM = 10.0
CLIP_STREAK = 5
#: Adam moments' decay rates and denominator offset.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
#: Activations of the DGM network, with their first and second derivatives.
ACTIVATIONS = ("tanh", "sin", "softplus")
_TINY = 1e-300


# -- gating ---------------------------------------------------------------------------------------
def when_due(due: jax.Array, step: Callable[..., Any], carry: Any, *operands: Any) -> Any:
    """``step(carry, *operands)`` when ``due`` (bool scalar), else ``carry`` (same pytree).

    A plain ``lax.cond`` under ``vmap`` turns into a select that runs ``step`` for every row on
    every tick. Here the batched rule runs ``vmap(step)`` once for the whole batch, and only on
    ticks where some row is due (rows not due keep ``carry``), so a step due every N ticks costs
    1/N of it per tick when the rows share their cadence.
    """

    @custom_vmap
    def gated(due: jax.Array, carry: Any, operands: tuple[Any, ...]) -> Any:
        return jax.lax.cond(due, lambda: step(carry, *operands), lambda: carry)

    @gated.def_vmap
    def _batched(axis_size: int, in_batched: Any, due: jax.Array, carry: Any, operands: tuple[Any, ...]):
        def spread(tree: Any, batched: Any) -> Any:
            return jax.tree_util.tree_map(
                lambda leaf, b: leaf if b else jnp.broadcast_to(leaf, (axis_size, *jnp.shape(leaf))), tree, batched)

        due_b, carry_b, operands_b = spread((due, carry, operands), tuple(in_batched))

        def run() -> Any:
            fresh = jax.vmap(step)(carry_b, *operands_b)
            return jax.tree_util.tree_map(
                lambda new, old: jnp.where(due_b.reshape((axis_size,) + (1,) * (new.ndim - 1)), new, old),
                fresh, carry_b)

        out = jax.lax.cond(jnp.any(due_b), run, lambda: carry_b)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return gated(due, carry, operands)


# -- drift and diffusion --------------------------------------------------------------------------
@pytree
class Coefficients:
    """Drift and diffusion on the grid, per unit of time, in the caller's units.

    Attributes:
        drift: float64[n], ``b(g_k)``. diffusion: float64[n], ``σ²(g_k)`` (> 0).
        bandwidth: float64, the chosen bandwidth in grid cells (0 for constants). pairs: float64,
        real pairs used. usable: bool, the regression ran (else the constants of a short or flat
        window).
    """

    drift: jax.Array
    diffusion: jax.Array
    bandwidth: jax.Array
    pairs: jax.Array
    usable: jax.Array


def _kernel_stack(n: int) -> np.ndarray:
    """float64[C, 3, n, n]: for each candidate bandwidth the Gaussian weights ``K_kj`` of node j
    at node k and ``K_kj (j − k)``, ``K_kj (j − k)²`` (offsets in cells)."""
    offsets = np.arange(n)[None, :] - np.arange(n)[:, None]
    weights = np.exp(-0.5 * (offsets[None] / np.asarray(BANDWIDTHS)[:, None, None]) ** 2)
    return np.stack([weights, weights * offsets, weights * offsets**2], axis=1)


def bin_pairs(levels: jax.Array, increments: jax.Array, weights: jax.Array, lo: jax.Array,
              dx: jax.Array, n: int) -> jax.Array:
    """Linear binning of (level, increment) pairs on the grid ``lo + k dx``, k = 0..n−1 (levels
    beyond the grid go to its end nodes).

    Args:
        levels, increments, weights: float64[m] (weights 0 or 1 marks the real pairs).
    Returns:
        float64[3, n]: per node the binned weight, sum of increments and sum of their squares.
    """
    position = jnp.clip((levels - lo) / dx, 0.0, n - 1.0)
    left = jnp.clip(jnp.floor(position), 0, n - 2).astype(jnp.int32)
    frac = (position - left)[:, None]
    columns = jnp.stack([weights, weights * increments, weights * increments**2], axis=1)
    binned = jnp.zeros((n, 3)).at[left].add(columns * (1.0 - frac)).at[left + 1].add(columns * frac)
    return binned.T


def estimate_coefficients(levels: jax.Array, increments: jax.Array, weights: jax.Array, lo: jax.Array,
                          dx: jax.Array, n: int, step: float = 1.0) -> Coefficients:
    """Drift and diffusion on the grid ``lo + k dx`` from one-step pairs (module docstring).

    Args:
        levels: float64[m], x_i. increments: float64[m], x_{i+1} − x_i over ``step`` time units.
        weights: float64[m], 1 on real pairs, 0 elsewhere. lo, dx: the grid (dx > 0). n: nodes.
    Returns:
        :class:`Coefficients` per unit of time: ``b = E[d | x] / step``, ``σ² = Var[d | x] / step``.
    """
    count, sums, squares = bin_pairs(levels, increments, weights, lo, dx, n)
    pairs = jnp.sum(weights)
    mean = jnp.sum(weights * increments) / jnp.maximum(pairs, 1.0)
    spread = jnp.sum(weights * (increments - mean) ** 2) / jnp.maximum(pairs, 1.0)
    largest = jnp.max(jnp.abs(weights * increments))
    floor = jnp.maximum(VARIANCE_FLOOR * spread, _TINY)
    kernels = jnp.asarray(_kernel_stack(n))
    prior_count = count + PRIOR_MASS
    prior_sums = sums + PRIOR_MASS * mean
    # per candidate: s0, s1, s2 (from the counts) and t0, t1 (from the sums) at every node
    both = jnp.einsum("cqkj,jr->cqkr", kernels, jnp.stack([prior_count, prior_sums], axis=1))
    s, t = both[..., 0], both[:, :2, :, 1]
    # the same without the data of bins k−1, k, k+1 (weights 1 and e = K(±1 cell))
    e = jnp.asarray(np.exp(-0.5 / np.asarray(BANDWIDTHS) ** 2))[:, None]

    def band(v: jax.Array) -> jax.Array:
        before, after = jnp.concatenate([jnp.zeros(1), v[:-1]]), jnp.concatenate([v[1:], jnp.zeros(1)])
        return jnp.stack([v[None, :] + e * (before + after)[None, :], e * (after - before)[None, :],
                          e * (before + after)[None, :]], axis=1)

    s_out = s - band(count)
    t_out = t - band(sums)[:, :2]
    ridge = SLOPE_RIDGE * jnp.asarray(BANDWIDTHS)[:, None] ** 2

    def local_linear(s: jax.Array, t: jax.Array) -> jax.Array:
        s0, s1, s2 = s[:, 0], s[:, 1], s[:, 2] + ridge * s[:, 0]
        det = jnp.maximum(s0 * s2 - s1**2, _TINY)
        return (s2 * t[:, 0] - s1 * t[:, 1]) / det

    fits = local_linear(s, t)                 # float64[C, n]
    held_out = local_linear(s_out, t_out)     # the fit at g_k without bins k−1..k+1
    cv = jnp.sum(squares[None, :] - 2.0 * held_out * sums[None, :] + count[None, :] * held_out**2, axis=1)
    best = jnp.argmin(jnp.where(jnp.isfinite(cv), cv, jnp.inf))
    drift = jnp.clip(fits[best], -largest, largest)
    residual = jnp.maximum(squares - 2.0 * drift * sums + count * drift**2, 0.0)
    wide = kernels[jnp.minimum(best + 1, len(BANDWIDTHS) - 1), 0]
    diffusion = (wide @ (residual + PRIOR_MASS * spread)) / (wide @ prior_count)
    diffusion = jnp.clip(diffusion, floor, jnp.maximum(largest**2, floor))
    usable = (pairs >= MIN_PAIRS) & (spread > 0)
    drift = jnp.where(usable, drift, jnp.full(n, mean))
    diffusion = jnp.where(usable, diffusion, jnp.full(n, jnp.maximum(spread, floor)))
    return Coefficients(drift=drift / step, diffusion=diffusion / step,
                        bandwidth=jnp.where(usable, jnp.asarray(BANDWIDTHS)[best], 0.0), pairs=pairs,
                        usable=usable)


# -- backward Kolmogorov ---------------------------------------------------------------------------
def generator(drift: jax.Array, diffusion: jax.Array, dx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The monotone space operator ``(L u)_k = lower_k (u_{k−1} − u_k) + upper_k (u_{k+1} − u_k)``.

    Args:
        drift, diffusion: float64[n], ``b`` and ``σ²`` at the nodes. dx: node spacing.
    Returns:
        (lower, upper), float64[n] each, ≥ 0: central differences where ``|b| dx ≤ σ²``, upwind
        with no physical diffusion elsewhere; the edges carry only an inward drift.
    """
    half = 0.5 * diffusion / dx**2
    skew = 0.5 * drift / dx
    excess = jnp.maximum(0.0, jnp.abs(skew) - half)  # least numerical diffusion that keeps it monotone
    lower = half - skew + excess
    upper = half + skew + excess
    first, last = jnp.maximum(drift[0], 0.0) / dx, jnp.maximum(-drift[-1], 0.0) / dx
    lower = lower.at[0].set(0.0).at[-1].set(last)
    upper = upper.at[0].set(first).at[-1].set(0.0)
    return lower, upper


def cfl_step(drift: jax.Array, diffusion: jax.Array, dx: jax.Array) -> jax.Array:
    """The largest explicit step, ``C_SAFE Δx² / (2 sup σ² + sup|b| Δx)``."""
    return C_SAFE * dx**2 / jnp.maximum(2.0 * jnp.max(diffusion) + jnp.max(jnp.abs(drift)) * dx, _TINY)


def _apply(lower: jax.Array, upper: jax.Array, u: jax.Array) -> jax.Array:
    """``L u`` for u float64[n, k]."""
    below = jnp.concatenate([u[:1], u[:-1]])
    above = jnp.concatenate([u[1:], u[-1:]])
    return lower[:, None] * (below - u) + upper[:, None] * (above - u)


@pytree
class Solution:
    """``u(0, ·)`` on the grid: values float64[n, k]; steps: int32 time steps taken; implicit: bool."""

    values: jax.Array
    steps: jax.Array
    implicit: jax.Array


def solve_backward(drift: jax.Array, diffusion: jax.Array, dx: jax.Array, horizon: float | jax.Array,
                   terminal: jax.Array, *, max_explicit: int, implicit: int) -> Solution:
    """``u(0, ·)`` of ``u_t + b u_x + ½σ² u_xx = 0``, ``u(horizon, ·) = terminal`` (module docstring).

    Args:
        drift, diffusion: float64[n], per unit of time. dx: node spacing. horizon: T > 0.
        terminal: float64[n, k], k terminal conditions solved together.
        max_explicit: most explicit steps (static); beyond, ``implicit`` backward-Euler steps.
    """
    lower, upper = generator(drift, diffusion, dx)
    needed = jnp.ceil(horizon / cfl_step(drift, diffusion, dx))
    use_implicit = needed > max_explicit
    count = jnp.where(use_implicit, 0, jnp.clip(needed, 1.0, float(max_explicit))).astype(jnp.int32)
    dt = horizon / jnp.maximum(count, 1).astype(jnp.float64)

    def explicit_step(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, u = carry
        euler = u + dt * _apply(lower, upper, u)  # SSP-RK2 (Heun): the mean of two Euler steps
        return i + 1, 0.5 * (u + euler + dt * _apply(lower, upper, euler))

    _, u = jax.lax.while_loop(lambda carry: carry[0] < count, explicit_step, (jnp.int32(0), terminal))

    def implicit_solve(u: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
        h = horizon / implicit
        diagonal = 1.0 + h * (lower + upper)
        below = -h * jnp.concatenate([jnp.zeros(1), lower[1:]])
        above = -h * jnp.concatenate([upper[:-1], jnp.zeros(1)])
        return jax.lax.fori_loop(0, implicit, lambda _, v: jax.lax.linalg.tridiagonal_solve(below, diagonal, above, v),
                                 u)

    u = when_due(use_implicit, implicit_solve, u, lower, upper)
    return Solution(values=u, steps=jnp.where(use_implicit, implicit, count).astype(jnp.int32), implicit=use_implicit)


# -- entropy --------------------------------------------------------------------------------------
def spacing_entropy(values: jax.Array, unit: jax.Array) -> jax.Array:
    """Differential entropy (nats) of the values a function takes on n grid nodes, by Vasicek's
    spacing estimator ``mean_i log((n − 1)(v_(i+1) − v_(i)) / unit)`` on the sorted values, in
    units of ``unit`` (spacings floored at ``1e-12 unit``). ``v = x`` on nodes spaced ``unit``
    gives ``log(n − 1)``; a constant gives ``log((n − 1) 1e-12)``."""
    ordered = jnp.sort(values)
    gaps = jnp.maximum((ordered[1:] - ordered[:-1]) / jnp.maximum(unit, _TINY), 1e-12)
    return jnp.mean(jnp.log((values.shape[-1] - 1) * gaps))


# -- Deep Galerkin --------------------------------------------------------------------------------
@attrs.frozen
class DgmShape:
    """Static shape of the DGM network: ``depth`` hidden layers of ``width`` neurons (the largest
    width of the precompiled set), ``activation`` one of :data:`ACTIVATIONS`. Two outputs."""

    width: int
    depth: int
    activation: str

    def layers(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each dense layer."""
        return [(2, self.width)] + [(self.width, self.width)] * (self.depth - 1) + [(self.width, 2)]

    @property
    def size(self) -> int:
        """Number of parameters (float64)."""
        return sum(i * o + o for i, o in self.layers())

    def unpack(self, params: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """[(W float64[out, in], bias float64[out])] per layer, from the flat parameter vector."""
        out, at = [], 0
        for i, o in self.layers():
            out.append((params[at:at + i * o].reshape(o, i), params[at + i * o:at + i * o + o]))
            at += i * o + o
        return out


def dgm_init(key: jax.Array, shape: DgmShape, active: int) -> jax.Array:
    """Glorot-normal weights (fan-in of the ``active`` width), zero biases, and zero weights out
    of the inactive neurons (so widening later leaves the function as it is). float64[size]."""
    parts = []
    keys = jax.random.split(key, len(shape.layers()))
    for index, ((fan_in, fan_out), k) in enumerate(zip(shape.layers(), keys, strict=True)):
        real_in = fan_in if index == 0 else active
        real_out = fan_out if index == len(shape.layers()) - 1 else active
        weights = jax.random.normal(k, (fan_out, fan_in), jnp.float64) * math.sqrt(2.0 / (real_in + real_out))
        if index > 0:
            weights = weights * (jnp.arange(fan_in) < active)[None, :]
        parts += [weights.ravel(), jnp.zeros(fan_out)]
    return jnp.concatenate(parts)


def _activation(name: str, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    if name == "tanh":
        s = jnp.tanh(z)
        d1 = 1.0 - s * s
        return s, d1, -2.0 * s * d1
    if name == "sin":
        s = jnp.sin(z)
        return s, jnp.cos(z), -s
    if name == "softplus":
        d1 = jax.nn.sigmoid(z)
        return jax.nn.softplus(z), d1, d1 * (1.0 - d1)
    raise ValueError(f"unknown activation {name!r}; allowed {ACTIVATIONS}")


def dgm_apply(params: jax.Array, shape: DgmShape, active: jax.Array, tau: jax.Array, eta: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(V, V_τ, V_η, V_ηη)`` at m points, each float64[m, 2], by forward propagation of the
    derivatives through the layers (neurons at index ≥ ``active`` output 0). The four streams
    share one matrix product per layer.

    Args:
        params: float64[shape.size]. active: int, the active hidden width. tau, eta: float64[m].
    """
    layers = shape.unpack(params)
    m = tau.shape[-1]
    mask = (jnp.arange(shape.width) < active).astype(jnp.float64)[None, :]
    w, b = layers[0]
    z = tau[:, None] * w[None, :, 0] + eta[:, None] * w[None, :, 1] + b[None, :]
    # rows: values, ∂τ, ∂η, ∂ηη of the pre-activations (the first layer is affine in (τ, η))
    streams = jnp.concatenate([z, jnp.broadcast_to(w[None, :, 0], z.shape), jnp.broadcast_to(w[None, :, 1], z.shape),
                               jnp.zeros_like(z)])
    for w, b in layers[1:]:
        z, z_t, z_x, z_xx = streams[:m], streams[m:2 * m], streams[2 * m:3 * m], streams[3 * m:]
        s, d1, d2 = _activation(shape.activation, z)
        h = jnp.concatenate([s, d1 * z_t, d1 * z_x, d2 * z_x * z_x + d1 * z_xx]) * mask
        streams = h @ w.T + jnp.concatenate([b[None, :], jnp.zeros((3, b.shape[0]))]).repeat(m, axis=0)
    return streams[:m], streams[m:2 * m], streams[2 * m:3 * m], streams[3 * m:]


def dgm_values(params: jax.Array, shape: DgmShape, active: jax.Array, tau: jax.Array, eta: jax.Array
               ) -> jax.Array:
    """``V(τ, η)`` alone at m points, float64[m, 2] (the first stream of :func:`dgm_apply`)."""
    layers = shape.unpack(params)
    mask = (jnp.arange(shape.width) < active).astype(jnp.float64)[None, :]
    w, b = layers[0]
    z = tau[:, None] * w[None, :, 0] + eta[:, None] * w[None, :, 1] + b[None, :]
    for w, b in layers[1:]:
        z = (_activation(shape.activation, z)[0] * mask) @ w.T + b[None, :]
    return z


@pytree
class DgmProblem:
    """The normalised PDE ``V_τ + β V_η + ½ α V_ηη = 0`` on τ ∈ [0, 1], η ∈ [−1, 1].

    Attributes:
        beta, alpha: float64[n], ``b T / L`` and ``σ² T / L²`` at the n uniform nodes of [−1, 1]
            (L the grid's half width, T the horizon). centre: float64, η_c of ``V²(1, η) = (η − η_c)²``.
    """

    beta: jax.Array
    alpha: jax.Array
    centre: jax.Array


def _at(nodes: jax.Array, eta: jax.Array) -> jax.Array:
    """Linear interpolation of node values (uniform nodes on [−1, 1]) at eta."""
    n = nodes.shape[-1]
    position = jnp.clip((eta + 1.0) * 0.5 * (n - 1), 0.0, n - 1.0)
    left = jnp.clip(jnp.floor(position), 0, n - 2).astype(jnp.int32)
    frac = position - left
    return (1.0 - frac) * nodes[left] + frac * nodes[left + 1]


#: Additive recurrence of the R2 low-discrepancy sequence (powers of 1/φ₂, φ₂ the plastic
#: number) that spreads the collocation points, and the golden ratio's for the 1-d edge points.
_R2 = (0.7548776662466927, 0.5698402909980532)
_GOLDEN = 0.6180339887498949


def collocation_points(start: jax.Array, shift: jax.Array, collocation: int) -> tuple[jax.Array, jax.Array]:
    """(τ, η), float64[m] each, m = collocation + collocation//2 + 2·(collocation//4): interior
    points, then terminal points (τ = 1), then the left and right edge points (η = ∓1). The points
    are elements ``start, start + 1, ...`` of the R2 (interior) and golden-ratio (terminal, edge)
    sequences rotated by ``shift`` (float64[2] in [0, 1)): consecutive calls with ``start``
    advanced by the count cover the square evenly (randomised quasi-Monte Carlo)."""
    inner, ends, edge = collocation, max(collocation // 2, 1), max(collocation // 4, 1)
    index = jnp.asarray(start, jnp.float64)
    i = index + jnp.arange(inner, dtype=jnp.float64)
    j = index + jnp.arange(ends, dtype=jnp.float64)
    k = index + jnp.arange(edge, dtype=jnp.float64)
    tau = jnp.concatenate([jnp.mod(shift[0] + i * _R2[0], 1.0), jnp.ones(ends),
                           jnp.mod(shift[0] + k * _GOLDEN, 1.0), jnp.mod(shift[0] + 0.5 + k * _GOLDEN, 1.0)])
    eta = jnp.concatenate([2.0 * jnp.mod(shift[1] + i * _R2[1], 1.0) - 1.0,
                           2.0 * jnp.mod(shift[1] + j * _GOLDEN, 1.0) - 1.0, -jnp.ones(edge), jnp.ones(edge)])
    return tau, eta


def dgm_loss(params: jax.Array, shape: DgmShape, active: jax.Array, problem: DgmProblem, tau: jax.Array,
             eta: jax.Array, collocation: int) -> jax.Array:
    """Mean squared PDE residual at the ``collocation`` interior points, plus the mean squared
    terminal error, plus the mean squared edge residual (both outputs; one forward pass over the
    points of :func:`collocation_points`)."""
    inner, ends, edge = collocation, max(collocation // 2, 1), max(collocation // 4, 1)
    v, v_t, v_x, v_xx = dgm_apply(params, shape, active, tau, eta)
    beta = jnp.concatenate([_at(problem.beta, eta[:inner]), jnp.zeros(ends),
                            jnp.full(edge, jnp.maximum(problem.beta[0], 0.0)),
                            jnp.full(edge, jnp.minimum(problem.beta[-1], 0.0))])[:, None]
    alpha = jnp.concatenate([_at(problem.alpha, eta[:inner]), jnp.zeros(ends + 2 * edge)])[:, None]
    residual = v_t + beta * v_x + 0.5 * alpha * v_xx
    target = jnp.stack([eta, (eta - problem.centre) ** 2], axis=1)
    terminal = (v - target)[inner:inner + ends]
    return (jnp.mean(residual[:inner] ** 2) + jnp.mean(terminal**2)
            + jnp.mean(residual[inner + ends:] ** 2))


@pytree
class Training:
    """What :func:`dgm_train` returns: params float64[size]; learning_rate float64 (halved on
    instability); streak int32, clipped iterations in a row at the end; halvings int32, times the
    rate was halved; loss float64, the last iteration's loss."""

    params: jax.Array
    learning_rate: jax.Array
    streak: jax.Array
    halvings: jax.Array
    loss: jax.Array


def dgm_train(params: jax.Array, shape: DgmShape, active: jax.Array, problem: DgmProblem, key: jax.Array,
              learning_rate: jax.Array, streak: jax.Array, *, iterations: int | jax.Array,
              collocation: int) -> Training:
    """``iterations`` Adam steps on :func:`dgm_loss` (fresh moments; each step takes the next
    points of the sequences of :func:`collocation_points`, rotated by a uniform shift drawn from
    ``key``), the gradient norm clipped at ``CLIP_NORM``; after more than
    ``CLIP_STREAK`` clipped steps in a row the learning rate is halved and the streak restarts.
    ``streak`` carries the streak over from the previous training. Non-finite gradients skip the
    step (they count as clipped)."""
    grad = jax.value_and_grad(dgm_loss)
    zeros = jnp.zeros_like(params)
    shift = jax.random.uniform(key, (2,), jnp.float64)

    def body(i: jax.Array, carry: tuple) -> tuple:
        params, m, v, lr, streak, halvings, _ = carry
        tau, eta = collocation_points(i * collocation, shift, collocation)
        loss, g = grad(params, shape, active, problem, tau, eta, collocation)
        norm = jnp.sqrt(jnp.sum(g * g))
        finite = jnp.isfinite(norm)
        g = jnp.where(finite, g * jnp.minimum(1.0, CLIP_NORM / jnp.maximum(norm, _TINY)), 0.0)
        clipped = ~finite | (norm > CLIP_NORM)
        streak = jnp.where(clipped, streak + 1, 0)
        unstable = streak > CLIP_STREAK
        lr = jnp.where(unstable, 0.5 * lr, lr)
        halvings = halvings + unstable.astype(jnp.int32)
        streak = jnp.where(unstable, 0, streak)
        t = (i + 1).astype(jnp.float64)
        m = ADAM_B1 * m + (1.0 - ADAM_B1) * g
        v = ADAM_B2 * v + (1.0 - ADAM_B2) * g * g
        step = lr * (m / (1.0 - ADAM_B1**t)) / (jnp.sqrt(v / (1.0 - ADAM_B2**t)) + ADAM_EPS)
        return params - step, m, v, lr, streak, halvings, jnp.where(jnp.isfinite(loss), loss, jnp.inf)

    start = (params, zeros, zeros, jnp.asarray(learning_rate, jnp.float64), jnp.asarray(streak, jnp.int32),
             jnp.int32(0), jnp.float64(jnp.inf))
    params, _, _, lr, streak, halvings, loss = jax.lax.fori_loop(0, iterations, body, start)
    return Training(params=params, learning_rate=lr, streak=streak, halvings=halvings, loss=loss)


__all__ = [
    "ACTIVATIONS",
    "BANDWIDTHS",
    "CLIP_NORM",
    "CLIP_STREAK",
    "C_SAFE",
    "Coefficients",
    "DgmProblem",
    "DgmShape",
    "Solution",
    "Training",
    "bin_pairs",
    "cfl_step",
    "collocation_points",
    "dgm_apply",
    "dgm_init",
    "dgm_loss",
    "dgm_train",
    "dgm_values",
    "estimate_coefficients",
    "generator",
    "solve_backward",
    "spacing_entropy",
    "when_due",
]
