"""Kernel B — Markov / Fokker–Planck: drift and diffusion from the window, the backward
Kolmogorov equation for the conditional mean and variance, a Deep Galerkin solver watched for
mode collapse (model.md §4; numerics in ``usp.domain.diffusion``).

Model: ``dX = b(X) dt + σ(X) dW``, time homogeneous. The forecast is ``u(0, x_t)`` with ``u`` the
solution of ``u_t + b u_x + ½σ² u_xx = 0``, ``u(T, x) = x``, over one step ``T = Δt``; the variance
comes from the second solution, ``u(T, x) = (x − c)²``, as ``u₂ − (u₁ − c)²``.

**Refit** (every ``kernel_b_refit_steps`` ticks, from the first; :func:`refit`). On the window
normalised to ``ξ = (x − centre)/radius`` (centre and half range of its real values; nothing
overflows for any finite window):

1. a grid of ``GRID_POINTS`` nodes over the real values ± ``MARGIN`` one-step RMS increments
   (between ``PAD_MIN`` and ``PAD_MAX``);
2. ``b`` and ``σ²`` on the grid by kernel regression of the increments and their squared
   residuals on the levels (``diffusion.estimate_coefficients``: local-linear drift, bandwidth by
   cross-validation among 1.5–24 cells, constants when the window is too short or flat);
3. both solutions at every node at once (``diffusion.solve_backward``: the monotone upwind scheme
   under the CFL bound, Heun steps, or ``IMPLICIT_STEPS`` backward-Euler steps when the bound
   needs more than ``MAX_EXPLICIT_STEPS``). Stored: the one-step mean increment ``m(ξ) = u₁ − ξ``
   and the variance ``v(ξ)`` at every node, of the solver ``kernel_b_solver`` names (the DGM's only
   once it has been trained). A non-finite solve falls back to ``m = b T``, ``v = σ² T`` and sets
   the ``UNSTABLE`` event.
4. the mode-collapse check (below).

**Every tick**: ``mean = x_t + radius · m(ξ_t)`` and ``variance = radius² · v(ξ_t)`` (linear
interpolation; flat beyond the grid). The fitted drift is kept while its realised one-step
squared error (EMA, weight ``SELECTION_ALPHA``) is at most that of ``b = 0`` (whose solution is
the last value); otherwise the forecast is the zero-drift one: on a martingale a drift estimated
from a finite window (which always looks mean-reverting) costs more than it brings, as kernel A
chooses between levels and differences. ``scale = √(variance · c)`` with ``c`` the realised
calibration, an EMA (weight ``CALIBRATION_ALPHA``, 1/n while fewer) of ``e²/variance`` over the
forecasts made from a real fit (each ratio clipped at ``RATIO_CLIP``): the second moment gives the
level dependence, the realised errors the level. The refit is the heavy part (in a batch about
fifteen plain ticks: ``benchmarks/bench_kernel_b.py``); under ``vmap`` it runs only on ticks where
some row is due (``diffusion.when_due``), so its cost is shared by the ticks in between.

**Deep Galerkin.** ``V_θ(τ, η) → (V¹, V²)`` solves the same equation on the grid's normalised
square (τ = t/T, η ∈ [−1, 1]; ``diffusion.dgm_train``): ``kernel_b_dgm_fit_iterations`` Adam
iterations in :func:`fit` (which ``fit_history`` calls after its scan), and
``kernel_b_dgm_refresh_iterations`` every ``kernel_b_dgm_refresh_steps`` ticks (never per tick),
each on the coefficients of the latest refit. Clipped gradients more than 5 times in a row halve
the learning rate and raise ``GRADIENT_INSTABILITY``.

**Mode-collapse watch.** At each refit once the network is trained: ``H_DGM``, the differential
entropy of ``V¹(0, ·)`` on the grid, against ``γ·H[g]``, ``H[g]`` the entropy of the
finite-difference reference ``u₁(0, ·)`` (``g`` carried through the same equation), both in units
of the reference's value spacing — ``H`` is the log of the number of distinguishable values, and
``H[g] ≈ log(GRID_POINTS − 1)``. More than ``COLLAPSE_CHECKS`` failed checks in a row set
``MODE_COLLAPSE`` (a level: B's weight is 0 while it is set) until the next training. The entropy
ratio ``κ = H[g]/H_DGM``: when it exceeds ``entropy_scaling_trigger`` the active width becomes
the smaller of W₀, 2W₀ with ``W·D₀ ≥ W₀·D₀·κ^β`` (2W₀ if neither; the weights are always held at
2W₀, a mask picks the width, so nothing changes shape).

Replays are bit-identical: refits and trainings happen on ticks fixed by the tick count, and every
draw comes from the state's own key. While ``window.signal_frozen`` the state is held.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window
from ..domain._kernel import KernelEvent, KernelReport
from ..domain._pytree import pytree, replace
from ..domain.diffusion import (
    DgmProblem,
    DgmShape,
    dgm_init,
    dgm_train,
    dgm_values,
    estimate_coefficients,
    solve_backward,
    spacing_entropy,
    when_due,
)

#: Nodes of the grid (the drift, diffusion and solutions live on it).
GRID_POINTS = 48
#: The grid reaches this many one-step RMS increments beyond the real values (normalised units:
#: the real values span [−1, 1]; the margin is clipped to [PAD_MIN, PAD_MAX]).
MARGIN = 4.0
PAD_MIN, PAD_MAX = 0.25, 8.0
#: Most explicit (Heun) steps of a solve, and the backward-Euler steps used beyond.
MAX_EXPLICIT_STEPS = 64
IMPLICIT_STEPS = 16
#: More than this many failed mode-collapse checks in a row raise the warning.
COLLAPSE_CHECKS = 10
#: Entropy ratios are capped here (a network with H_DGM ≤ 0 has κ = KAPPA_MAX).
KAPPA_MAX = 1e3
#: Calibration of the scale: EMA weight of e²/variance, and the clip of each ratio.
CALIBRATION_ALPHA = 0.02
RATIO_CLIP = 25.0
#: Realised-loss choice between the fitted drift and b = 0: EMA weight, and forecasts scored
#: before it may drop the drift.
SELECTION_ALPHA = 0.02
SELECTION_MIN_SCORED = 20
#: Widths of the architecture set, in units of W₀.
WIDTH_FACTORS = (1, 2)
#: Smallest scale, relative to the window's largest |value|.
SCALE_FLOOR_RELATIVE = 1e-12
_TINY = 1e-300
_BIG = float(jnp.finfo(jnp.float64).max)
_SATURATE = 2**30


class Counter:
    """Indices of ``KernelBState.counters`` (int32)."""

    STEPS, REFIT_PHASE, TRAIN_PHASE, WIDTH, STREAK, FAILED = 0, 1, 2, 3, 4, 5
    EVENTS, PENDING, TRAINED, SOLVE_STEPS, IMPLICIT, SCORED, FIT_OK = 6, 7, 8, 9, 10, 11, 12
    SIZE = 13


class Scalar:
    """Indices of ``KernelBState.scalars`` (float64)."""

    CENTRE, RADIUS, LO, DX, LEVEL = 0, 1, 2, 3, 4
    CALIBRATION, LEARNING_RATE, DGM_ENTROPY, REFERENCE_ENTROPY, KAPPA, DGM_ERROR = 5, 6, 7, 8, 9, 10
    BANDWIDTH, LOSS, MEAN, SCALE, DRIFT, DIFFUSION = 11, 12, 13, 14, 15, 16
    DGM_CENTRE, DGM_RADIUS, DGM_LEVEL = 17, 18, 19
    MODEL_MEAN, LAST, LOSS_DRIFT, LOSS_ZERO = 20, 21, 22, 23
    SIZE = 24


class Row:
    """Rows of ``KernelBState.grid`` (float64[Row.SIZE, GRID_POINTS], normalised units ξ, per step)."""

    MEAN, VARIANCE, DRIFT, DIFFUSION, REFERENCE = 0, 1, 2, 3, 4
    SIZE = 5


@pytree
class KernelBState:
    """Kernel B state (one asset), five leaves.

    Attributes:
        key: uint32[2], this kernel's PRNG key (split at every training).
        counters: int32[Counter.SIZE]: ticks (saturating), ticks until the next refit and training
            (phases), the active DGM width, the clipped-gradient streak, failed collapse checks in
            a row, this tick's KernelEvent bits, bits raised by ``fit`` for the next tick, whether
            the network was ever trained, steps and kind (implicit or not) of the last solve,
            forecasts scored, whether the last refit had enough data.
        scalars: float64[Scalar.SIZE]: the grid's frame (centre, radius: signal units; lo, dx: ξ
            units; the refit's level ξ_c), the scale calibration, the DGM learning rate, H_DGM,
            H[g], κ, the DGM's relative L∞ error against the reference, the chosen bandwidth
            (cells), the last training loss, the last forecast's mean and standard deviation before
            calibration (signal units),
            drift and diffusion at the last level (signal units per unit of time), the DGM's
            training frame (x = centre + radius·η, and η_c), the last forecast of the fitted
            drift and the last value (the zero-drift forecast), and the EMAs of their realised
            squared errors (signal units²).
        grid: float64[Row.SIZE, GRID_POINTS]: one-step mean increment and variance of the solver in
            use, drift and diffusion per step, and the finite-difference mean increment (the
            reference of the collapse check); normalised units.
        params: float64[DgmShape.size], the DGM weights at the largest width.
    """

    key: jax.Array
    counters: jax.Array
    scalars: jax.Array
    grid: jax.Array
    params: jax.Array


def dgm_shape(config: PredictorConfig) -> DgmShape:
    """The network's static shape: the largest width of the set, ``kernel_b_dgm_depth`` layers."""
    return DgmShape(width=WIDTH_FACTORS[-1] * config.kernel_b_dgm_width, depth=config.kernel_b_dgm_depth,
                    activation=config.kernel_b_dgm_activation)


def _set(values: jax.Array, changes: dict[int, Any]) -> jax.Array:
    """``values`` with the entries at the given indices replaced (one scatter)."""
    index = jnp.asarray(list(changes), jnp.int32)
    return values.at[index].set(jnp.stack([jnp.asarray(v).astype(values.dtype) for v in changes.values()]))


def _raw_key(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def init(config: PredictorConfig, key: jax.Array) -> KernelBState:
    """A cold state: an untrained network (Glorot at width W₀), the first tick refits."""
    key, net = jax.random.split(_raw_key(key))
    counters = _set(jnp.zeros(Counter.SIZE, jnp.int32), {
        Counter.WIDTH: config.kernel_b_dgm_width, Counter.TRAIN_PHASE: 1 % config.kernel_b_dgm_refresh_steps})
    scalars = _set(jnp.zeros(Scalar.SIZE), {
        Scalar.RADIUS: 1.0, Scalar.DX: 1.0, Scalar.CALIBRATION: 1.0, Scalar.KAPPA: 1.0, Scalar.DGM_RADIUS: 1.0,
        Scalar.LEARNING_RATE: config.kernel_b_dgm_learning_rate})
    return KernelBState(key=key, counters=counters, scalars=scalars, grid=jnp.zeros((Row.SIZE, GRID_POINTS)),
                        params=dgm_init(net, dgm_shape(config), config.kernel_b_dgm_width))


# -- refit ----------------------------------------------------------------------------------------
def _frame(values: jax.Array, real: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(centre, radius): midpoint and half range of the real values (radius > 0)."""
    any_real = jnp.any(real)
    hi = jnp.where(any_real, jnp.max(jnp.where(real, values, -_BIG)), 0.0)
    lo = jnp.where(any_real, jnp.min(jnp.where(real, values, _BIG)), 0.0)
    centre = 0.5 * hi + 0.5 * lo
    return centre, jnp.maximum(0.5 * hi - 0.5 * lo, jnp.maximum(1e-12 * jnp.abs(centre), _TINY))


def _interpolate(rows: jax.Array, lo: jax.Array, dx: jax.Array, xi: jax.Array) -> jax.Array:
    """Rows float64[k, n] of a uniform grid at ξ (flat beyond the ends): float64[k]."""
    n = rows.shape[-1]
    position = jnp.clip((xi - lo) / dx, 0.0, n - 1.0)
    left = jnp.clip(jnp.floor(position), 0, n - 2).astype(jnp.int32)
    frac = position - left
    return (1.0 - frac) * rows[:, left] + frac * rows[:, left + 1]


def _dgm_on_grid(state: KernelBState, config: PredictorConfig, nodes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The network's (u₁ − ξ, variance) at t = 0 on ξ nodes, in the grid's normalised units."""
    s = state.scalars
    centre, radius = s[Scalar.CENTRE], s[Scalar.RADIUS]
    net_centre, net_radius = s[Scalar.DGM_CENTRE], s[Scalar.DGM_RADIUS]
    eta = ((centre - net_centre) + radius * nodes) / net_radius
    v = dgm_values(state.params, dgm_shape(config), state.counters[Counter.WIDTH], jnp.zeros_like(eta), eta)
    mean = ((net_centre - centre) + net_radius * v[:, 0]) / radius
    variance = (net_radius / radius) ** 2 * (v[:, 1] - (v[:, 0] - s[Scalar.DGM_LEVEL]) ** 2)
    return mean - nodes, variance


def _assess(state: KernelBState, config: PredictorConfig, reference: jax.Array, count_check: bool
            ) -> tuple[KernelBState, jax.Array, jax.Array]:
    """The mode-collapse check of the network against the reference ``u₁(0, ·) − ξ`` on the grid:
    entropies, κ, error, the failed-check count (when ``count_check`` and trained) and the width.
    Returns the state and the network's (mean increment, variance) on the grid."""
    s, c = state.scalars, state.counters
    nodes = s[Scalar.LO] + s[Scalar.DX] * jnp.arange(GRID_POINTS, dtype=jnp.float64)
    dgm_mean, dgm_var = _dgm_on_grid(state, config, nodes)
    u_ref, u_dgm = reference + nodes, dgm_mean + nodes
    finite = jnp.all(jnp.isfinite(u_dgm)) & jnp.all(jnp.isfinite(dgm_var))
    u_dgm = jnp.where(finite, u_dgm, 0.0)
    unit = (jnp.max(u_ref) - jnp.min(u_ref)) / (GRID_POINTS - 1)
    h_ref, h_dgm = spacing_entropy(u_ref, unit), spacing_entropy(u_dgm, unit)
    kappa = jnp.clip(h_ref / jnp.maximum(h_dgm, h_ref / KAPPA_MAX), 0.0, KAPPA_MAX)
    error = jnp.max(jnp.abs(u_dgm - u_ref)) / jnp.maximum(jnp.max(jnp.abs(u_ref)), _TINY)
    trained = c[Counter.TRAINED] > 0
    failed = h_dgm < config.kernel_b_collapse_ratio * h_ref
    counted = jnp.where(failed, jnp.minimum(c[Counter.FAILED] + 1, _SATURATE), 0)
    # architecture scaling: the smallest width of the set with W·D ≥ W₀·D·κ^β (the largest if none)
    sizes = jnp.asarray([f * config.kernel_b_dgm_width for f in WIDTH_FACTORS], jnp.int32)
    need = config.kernel_b_dgm_width * kappa**config.kernel_b_scaling_exponent
    target = jnp.min(jnp.where(sizes >= need, sizes, sizes[-1]))
    grow = trained & (kappa > config.entropy_scaling_trigger)
    scalars = _set(s, {Scalar.DGM_ENTROPY: h_dgm, Scalar.REFERENCE_ENTROPY: h_ref, Scalar.KAPPA: kappa,
                       Scalar.DGM_ERROR: jnp.where(finite, jnp.minimum(error, _BIG), _BIG)})
    counters = _set(c, {Counter.FAILED: jnp.where(trained & count_check, counted, c[Counter.FAILED]),
                        Counter.WIDTH: jnp.where(grow, jnp.maximum(c[Counter.WIDTH], target), c[Counter.WIDTH])})
    return (replace(state, scalars=scalars, counters=counters),
            jnp.where(finite, dgm_mean, reference), jnp.where(finite, dgm_var, 0.0))


def refit(state: KernelBState, values: jax.Array, real: jax.Array, config: PredictorConfig) -> KernelBState:
    """Re-estimate, re-solve and check (module docstring, Refit) on ``values`` float64[n] whose
    real observations are marked by ``real`` bool[n] (the newest real one is the level)."""
    n = values.shape[-1]
    centre, radius = _frame(values, real)
    xi = jnp.where(real, (values - centre) / radius, 0.0)
    pairs = (real[1:] & real[:-1]).astype(jnp.float64)
    steps = xi[1:] - xi[:-1]
    rms = jnp.sqrt(jnp.sum(pairs * steps**2) / jnp.maximum(jnp.sum(pairs), 1.0))
    pad = jnp.clip(MARGIN * rms, PAD_MIN, PAD_MAX)
    any_real = jnp.any(real)
    lo = jnp.where(any_real, jnp.min(jnp.where(real, xi, _BIG)), 0.0) - pad
    hi = jnp.where(any_real, jnp.max(jnp.where(real, xi, -_BIG)), 0.0) + pad
    dx = (hi - lo) / (GRID_POINTS - 1)
    coefficients = estimate_coefficients(xi[:-1], steps, pairs, lo, dx, GRID_POINTS)
    level = xi[jnp.max(jnp.where(real, jnp.arange(n), 0))]
    nodes = lo + dx * jnp.arange(GRID_POINTS, dtype=jnp.float64)
    solution = solve_backward(coefficients.drift, coefficients.diffusion, dx, 1.0,
                              jnp.stack([nodes, (nodes - level) ** 2], axis=1),
                              max_explicit=MAX_EXPLICIT_STEPS, implicit=IMPLICIT_STEPS)
    u = solution.values
    floor = 1e-6 * jnp.min(coefficients.diffusion)
    mean, variance = u[:, 0] - nodes, jnp.maximum(u[:, 1] - (u[:, 0] - level) ** 2, floor)
    stable = jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(variance))
    mean = jnp.where(stable, mean, coefficients.drift)
    variance = jnp.where(stable, variance, coefficients.diffusion)
    scalars = _set(state.scalars, {Scalar.CENTRE: centre, Scalar.RADIUS: radius, Scalar.LO: lo, Scalar.DX: dx,
                                   Scalar.LEVEL: level, Scalar.BANDWIDTH: coefficients.bandwidth})
    counters = _set(state.counters, {
        Counter.SOLVE_STEPS: solution.steps, Counter.IMPLICIT: solution.implicit, Counter.FIT_OK: coefficients.usable,
        Counter.EVENTS: state.counters[Counter.EVENTS] | jnp.where(stable, 0, int(KernelEvent.UNSTABLE))})
    grid = jnp.stack([mean, variance, coefficients.drift, coefficients.diffusion, mean])
    checked, dgm_mean, dgm_var = _assess(replace(state, scalars=scalars, counters=counters, grid=grid), config,
                                         mean, True)
    if config.kernel_b_solver == "dgm":  # the network's solution, once it has been trained
        trained = checked.counters[Counter.TRAINED] > 0
        grid = (grid.at[Row.MEAN].set(jnp.where(trained, dgm_mean, mean))
                .at[Row.VARIANCE].set(jnp.where(trained, jnp.maximum(dgm_var, floor), variance)))
    return replace(checked, grid=grid)


# -- training -------------------------------------------------------------------------------------
def train(state: KernelBState, config: PredictorConfig, iterations: int) -> KernelBState:
    """``iterations`` Adam iterations of the network on the latest refit's equation (module
    docstring, Deep Galerkin); clears the collapse count and re-assesses the network."""
    s, c = state.scalars, state.counters
    half = 0.5 * (GRID_POINTS - 1) * s[Scalar.DX]
    mid = s[Scalar.LO] + half
    problem = DgmProblem(beta=state.grid[Row.DRIFT] / half, alpha=state.grid[Row.DIFFUSION] / half**2,
                         centre=(s[Scalar.LEVEL] - mid) / half)
    key, train_key = jax.random.split(state.key)
    fitted = dgm_train(state.params, dgm_shape(config), c[Counter.WIDTH], problem, train_key,
                       s[Scalar.LEARNING_RATE], c[Counter.STREAK], iterations=iterations,
                       collocation=config.kernel_b_dgm_collocation)
    finite = jnp.all(jnp.isfinite(fitted.params))
    halved = (fitted.halvings > 0) | ~finite
    scalars = _set(s, {
        Scalar.LEARNING_RATE: jnp.where(finite, fitted.learning_rate, 0.5 * s[Scalar.LEARNING_RATE]),
        Scalar.LOSS: jnp.where(jnp.isfinite(fitted.loss), fitted.loss, _BIG),
        Scalar.DGM_CENTRE: s[Scalar.CENTRE] + s[Scalar.RADIUS] * mid, Scalar.DGM_RADIUS: s[Scalar.RADIUS] * half,
        Scalar.DGM_LEVEL: problem.centre})
    raised = jnp.where(halved, int(KernelEvent.GRADIENT_INSTABILITY), 0)
    counters = _set(c, {Counter.STREAK: fitted.streak, Counter.TRAINED: 1, Counter.FAILED: 0,
                        Counter.EVENTS: c[Counter.EVENTS] | raised})
    trained = replace(state, key=key, params=jnp.where(finite, fitted.params, state.params), scalars=scalars,
                      counters=counters)
    assessed, dgm_mean, dgm_var = _assess(trained, config, state.grid[Row.REFERENCE], False)
    if config.kernel_b_solver == "dgm":  # the stored rows follow the freshly trained network
        grid = state.grid.at[Row.MEAN].set(dgm_mean).at[Row.VARIANCE].set(jnp.maximum(dgm_var, 0.0))
        assessed = replace(assessed, grid=grid)
    return assessed


# -- the contract ---------------------------------------------------------------------------------
def update(state: KernelBState, window: Window, config: PredictorConfig) -> KernelBState:
    """Score the last forecast, refit and train when due, forecast at the newest value."""
    values, real = window.values, window.mask > 0
    x = values[-1]
    s, c = state.scalars, state.counters
    scored = (c[Counter.STEPS] > 0) & (c[Counter.FIT_OK] > 0)  # the last forecast came from a real fit
    n = c[Counter.SCORED] + 1.0
    ratio = jnp.minimum(((x - s[Scalar.MEAN]) / jnp.maximum(s[Scalar.SCALE], _TINY)) ** 2, RATIO_CLIP)
    calibration = s[Scalar.CALIBRATION] + jnp.maximum(CALIBRATION_ALPHA, 1.0 / n) * (ratio - s[Scalar.CALIBRATION])
    errors = jnp.minimum(jnp.stack([x - s[Scalar.MODEL_MEAN], x - s[Scalar.LAST]]) ** 2, _BIG)
    losses = jnp.stack([s[Scalar.LOSS_DRIFT], s[Scalar.LOSS_ZERO]])
    losses = losses + jnp.maximum(SELECTION_ALPHA, 1.0 / n) * (errors - losses)
    fresh = replace(state, scalars=jnp.where(scored, _set(s, {
        Scalar.CALIBRATION: calibration, Scalar.LOSS_DRIFT: losses[0], Scalar.LOSS_ZERO: losses[1]}), s),
        counters=_set(c, {Counter.SCORED: jnp.minimum(c[Counter.SCORED] + scored, _SATURATE),
                          Counter.EVENTS: c[Counter.PENDING], Counter.PENDING: 0}))
    fresh = when_due(c[Counter.REFIT_PHASE] == 0, lambda st, v, r: refit(st, v, r, config), fresh, values, real)
    if config.kernel_b_dgm_refresh_iterations > 0:  # 0: no periodic refresh (nothing to compile)
        fresh = when_due(c[Counter.TRAIN_PHASE] == 0,
                         lambda st: train(st, config, config.kernel_b_dgm_refresh_iterations), fresh)
    s, c = fresh.scalars, fresh.counters
    radius = s[Scalar.RADIUS]
    rows = fresh.grid[jnp.asarray([Row.MEAN, Row.VARIANCE, Row.DRIFT, Row.DIFFUSION])]
    m, v, b, a = _interpolate(rows, s[Scalar.LO], s[Scalar.DX], (x - s[Scalar.CENTRE]) / radius)
    dt = config.signal_sampling_interval
    model = jnp.clip(x + radius * m, -_BIG, _BIG)
    keep = (c[Counter.SCORED] < SELECTION_MIN_SCORED) | (s[Scalar.LOSS_DRIFT] <= s[Scalar.LOSS_ZERO])
    scalars = _set(s, {
        Scalar.MEAN: jnp.where(keep, model, x), Scalar.MODEL_MEAN: model, Scalar.LAST: x,
        Scalar.SCALE: jnp.minimum(radius * jnp.sqrt(jnp.maximum(v, 0.0)), _BIG),
        Scalar.DRIFT: jnp.clip(radius * b / dt, -_BIG, _BIG),
        Scalar.DIFFUSION: jnp.minimum((radius * jnp.sqrt(jnp.maximum(a, 0.0))) ** 2 / dt, _BIG)})
    collapsed = c[Counter.FAILED] > COLLAPSE_CHECKS
    counters = _set(c, {
        Counter.STEPS: jnp.minimum(c[Counter.STEPS] + 1, _SATURATE),
        Counter.REFIT_PHASE: (c[Counter.REFIT_PHASE] + 1) % config.kernel_b_refit_steps,
        Counter.TRAIN_PHASE: (c[Counter.TRAIN_PHASE] + 1) % config.kernel_b_dgm_refresh_steps,
        Counter.EVENTS: c[Counter.EVENTS] | jnp.where(collapsed, int(KernelEvent.MODE_COLLAPSE), 0)})
    new = replace(fresh, scalars=scalars, counters=counters)
    frozen = jnp.asarray(window.signal_frozen, bool)
    held = jax.tree_util.tree_map(lambda old, fresh: jnp.where(frozen, old, fresh), state, new)
    # a held state repeats no event of its last tick: only the collapse level stays
    level = state.counters[Counter.EVENTS] & int(KernelEvent.MODE_COLLAPSE)
    return replace(held, counters=held.counters.at[Counter.EVENTS].set(
        jnp.where(frozen, level, counters[Counter.EVENTS])))


def predict(state: KernelBState, window: Window, config: PredictorConfig) -> KernelForecast:
    """``u(0, x_t)`` and the calibrated second-moment scale ``update`` prepared (the last value
    and a window-scaled floor before any)."""
    del config
    s = state.scalars
    started = state.counters[Counter.STEPS] > 0
    mean = jnp.where(started, s[Scalar.MEAN], window.values[-1])
    floor = jnp.maximum(SCALE_FLOOR_RELATIVE * jnp.maximum(jnp.max(jnp.abs(window.values)), jnp.abs(mean)), _TINY)
    scale = jnp.minimum(s[Scalar.SCALE] * jnp.sqrt(s[Scalar.CALIBRATION]), _BIG)
    return KernelForecast(mean=mean, scale=jnp.where(started, jnp.maximum(scale, floor), floor))


def fit(state: KernelBState, history: jax.Array, config: PredictorConfig) -> KernelBState:
    """Refit on the history's last ``window_size`` finite values, then train the network for
    ``kernel_b_dgm_fit_iterations``; what it raises is reported on the next tick."""
    size = config.window_size
    tail = history[-size:]
    if tail.shape[-1] < size:
        tail = jnp.concatenate([jnp.full(size - tail.shape[-1], jnp.nan), tail])
    real = jnp.isfinite(tail)
    events = state.counters[Counter.EVENTS]
    fitted = refit(replace(state, counters=state.counters.at[Counter.EVENTS].set(0)), jnp.where(real, tail, 0.0),
                   real, config)
    if config.kernel_b_dgm_fit_iterations > 0:
        fitted = train(fitted, config, config.kernel_b_dgm_fit_iterations)
    c = fitted.counters
    return replace(fitted, counters=_set(c, {Counter.PENDING: c[Counter.PENDING] | c[Counter.EVENTS],
                                             Counter.EVENTS: events}))


#: Names of the diagnostics ``report`` returns, in order (units in :func:`report`).
DIAGNOSTICS = ("dgm_entropy", "reference_entropy", "entropy_ratio", "dgm_error", "dgm_width",
               "dgm_learning_rate", "dgm_loss", "collapse_checks", "bandwidth", "drift", "diffusion",
               "solver_steps", "implicit", "drift_kept")


def report(state: KernelBState, config: PredictorConfig) -> KernelReport:
    """This tick's diagnostics (:data:`DIAGNOSTICS`) and KernelEvent bits.

    ``dgm_entropy`` and ``reference_entropy``: H_DGM and H[g] (nats, in units of the reference's
    value spacing) at the last check; ``entropy_ratio``: κ; ``dgm_error``: the network's relative
    L∞ error against the finite-difference reference at the last check; ``dgm_width``: the active
    width; ``dgm_learning_rate``, ``dgm_loss``: of the last training; ``collapse_checks``: failed
    checks in a row; ``bandwidth``: of the drift regression, in signal units; ``drift`` and
    ``diffusion``: b and σ² at the newest level, per unit of time; ``solver_steps``: time steps of
    the last solve; ``implicit``: 1 when they were backward-Euler steps; ``drift_kept``: 1 while
    the forecast uses the fitted drift, 0 while the zero-drift forecast (the last value) has the
    lower realised loss.
    """
    del config
    s, c = state.scalars, state.counters
    values = jnp.stack([
        s[Scalar.DGM_ENTROPY], s[Scalar.REFERENCE_ENTROPY], s[Scalar.KAPPA], s[Scalar.DGM_ERROR],
        c[Counter.WIDTH].astype(jnp.float64), s[Scalar.LEARNING_RATE], s[Scalar.LOSS],
        c[Counter.FAILED].astype(jnp.float64), jnp.minimum(s[Scalar.BANDWIDTH] * s[Scalar.DX] * s[Scalar.RADIUS], _BIG),
        s[Scalar.DRIFT], s[Scalar.DIFFUSION], c[Counter.SOLVE_STEPS].astype(jnp.float64),
        c[Counter.IMPLICIT].astype(jnp.float64), (s[Scalar.MEAN] == s[Scalar.MODEL_MEAN]).astype(jnp.float64)])
    return KernelReport(values=values, events=c[Counter.EVENTS])


KERNEL_B = KernelSpec(
    name="B", init=init, update=update, predict=predict, fit=fit, diagnostics=DIAGNOSTICS, report=report,
    description="Markov / Fokker–Planck: local-linear drift and diffusion on the level, backward "
                "Kolmogorov by a monotone upwind scheme (CFL, implicit when needed), Deep Galerkin "
                "network with a mode-collapse watch",
)
