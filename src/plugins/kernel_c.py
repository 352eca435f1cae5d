"""Kernel C — Itô–Lévy jump diffusion: robust jump estimation, simulated intervals (model.md §4).

Model, per unit of time (Δt = ``signal_sampling_interval``)::

    dX = b(X) dt + σ dW + dJ,   b(x) = μ − κ (x − x̄),   J compound Poisson (intensity λ)

Each tick ``update`` re-estimates the model on the window and prepares the forecast; ``predict``
returns it. All estimation runs on the window divided by its largest magnitude (nothing
overflows for any finite window; results are scaled back to signal units).

1. **Estimation** (:func:`estimate`), on the increments ``d_i`` between real observations,
   centred on their median ``d̃``:
   - diffusion by bipower variation, ``σ² Δt = (π/2) mean(|d_i − d̃| |d_{i−1} − d̃|)``, made
     threshold bipower in ``JUMP_PASSES`` passes: each pass leaves out the pairs that touch a
     jump found by the previous one (the first jumps are found with the robust scale
     1.4826 · median |d_i − d̃|) (with frequent jumps plain bipower is still inflated by the
     products of a jump and its neighbour);
   - jumps: the increments with ``|d_i − μΔt| > JUMP_THRESHOLD · σ√Δt`` (centred on the mean
     ``μΔt`` of the other increments after the first pass); the drift ``μ`` is the mean of the
     non-jump increments, each jump's size is its increment minus ``μΔt``;
   - ``λ`` inverts the Poisson law of the exceedance share ``p`` (``λΔt = −log(1 − p)``: a step
     may hold several jumps), the jump mean is the mean size times ``(1 − e^{−λΔt})/(λΔt)``, the
     jump scale the standard deviation of the sizes (the diffusion variance removed), each
     shrunk towards its
     prior ``kernel_c_jump_intensity`` / ``kernel_c_jump_mean`` / ``kernel_c_jump_scale`` with
     ``PRIOR_STEPS`` pseudo-steps (λ) and ``PRIOR_JUMPS`` pseudo-jumps (m, s; the priors in units
     of the window's magnitude clipped to ±``PRIOR_RELATIVE_MAX``). Bound: ``λΔt ≤
     kernel_c_jump_max_events / 4`` so that truncating at ``kernel_c_jump_max_events`` jumps per
     step loses a negligible part of the Poisson law;
   - mean reversion ``κ``: least squares of the non-jump increments on the lagged level; kept
     only when ``κ > 0`` with a t-statistic above ``KAPPA_T_MIN`` (else 0: a random walk);
   - the Hölder exponent ``H`` of the window (``usp.domain.levy.holder_exponent``).
2. **Tail rule** (α-stable jumps), on the jumps beyond ``TAIL_THRESHOLD`` σ√Δt (a few
   diffusion exceedances just above 3σ beside a cluster of large normal jumps would look like
   heavy tails). With at least ``STABLE_MIN_JUMPS`` of them whose sizes have an
   excess kurtosis above ``STABLE_KURTOSIS`` (a normal has 0) and a Hill estimate (below) under
   ``STABLE_ALPHA_MAX``, the jumps are drawn as
   ``m + c X``, ``X ~ S(α, β, 1, 0)`` (``usp.domain.levy.sample_stable``, S1: for α > 1 the
   mean of ``m + c X`` is ``m``, so the compensator is unchanged): ``α`` is the Hill estimate
   on the sizes' absolute deviations from their median above the median deviation, clamped to
   [``STABLE_ALPHA_MIN``, ``STABLE_ALPHA_MAX``]; ``β`` the sign balance of those deviations;
   ``c`` the sizes' interquartile range over the interquartile range of the draws. Otherwise the
   jumps are normal, ``N(m, s²)``.
3. **Forecast**: ``mean = x + (μ + λ m) Δt`` (the compensated drift; the mean reversion enters
   the simulation, not the mean).
4. **Interval by simulation** (:func:`simulate`): ``N_PATHS`` paths over one step in
   ``SUBSTEPS`` substeps. The stiffness ``S = |b'(x)| Δt`` (central finite difference with
   ``sde_fd_epsilon``) and ``H`` set the implicit share ``w`` (``usp.domain.levy``): explicit
   Euler–Maruyama below ``θ_L`` (Milstein coincides with it: σ does not depend on the state),
   ``(1 − w)·explicit + w·implicit`` between, implicit above ``θ_H``; the implicit scheme is the
   trapezoidal rule solved by ``IMPLICIT_ITERATIONS`` predictor–corrector (simplified Newton)
   sweeps with the finite-difference Jacobian. The Poisson number ``N`` of jumps, at most
   ``kernel_c_jump_max_events`` (inverse CDF of one uniform per path), is added over the step
   as one draw of the sum of ``N`` jumps (``Nm + s√N Z`` for normal jumps, ``Nm + c N^{1/α} X``
   for α-stable ones: both laws are closed under sums). The kernel's scale is
   ``(q_{1−p} − q_p) / (2 z_{1−p})``, ``p = (1 − confidence_level)/2``: the normal scale whose
   central interval matches the simulated one, smoothed over ticks (EMA weight
   ``SCALE_SMOOTHING`` on its logarithm).
5. **Instability**: a simulation with a non-finite endpoint, or whose interval is wider than
   ``DIVERGENCE_FACTOR`` times the analytic scale ``√(σ²Δt + λΔt (m² + s²))`` (a diverging
   scheme), sets the ``unstable`` event bit in the state, counts it, and falls back to the
   analytic scale: NaN never enters the state.

Every draw comes from the state's own key: each ``update`` splits it into the next state key
and the key of this tick's simulation, so replays are bit-identical. While
``window.signal_frozen`` the state is held (the forecast stays at its last value).

Telemetry kept in the state: ticks per scheme (explicit, blended, implicit), the largest
stiffness seen, the implicit sweeps of the last tick and their last residual, the instability
count, and the latest estimates. :func:`report` hands them to the core every tick
(``Telemetry.kernel_diagnostics["C"]``, names in :data:`DIAGNOSTICS`), and a diverged
simulation raises ``KernelEvent.UNSTABLE`` (the ``KernelUnstableEvent`` of the tick).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.special
from jax.scipy.special import ndtri

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window
from ..domain._kernel import KernelEvent, KernelReport
from ..domain._pytree import pytree
from ..domain.levy import holder_exponent, implicit_share, sample_stable, stiffness

#: Simulated paths per tick.
N_PATHS = 256
#: Substeps of the one-step simulation.
SUBSTEPS = 4
#: A centred increment beyond this many diffusion standard deviations is a jump.
JUMP_THRESHOLD = 3.0
#: Passes of the threshold bipower estimate (the first is plain bipower variation).
JUMP_PASSES = 3
#: Pseudo-steps of the λ prior; pseudo-jumps of the jump mean and scale priors.
PRIOR_STEPS = 10.0
PRIOR_JUMPS = 0.5
#: Tail rule: α-stable jumps with at least this many jumps and this excess kurtosis of the sizes.
STABLE_MIN_JUMPS = 8
#: The tail rule looks only at the jumps beyond this many diffusion standard deviations.
TAIL_THRESHOLD = 5.0
STABLE_KURTOSIS = 3.0
STABLE_ALPHA_MIN, STABLE_ALPHA_MAX = 1.1, 1.95
#: Mean reversion is kept only above this t-statistic.
KAPPA_T_MIN = 3.0
#: Predictor–corrector sweeps of the implicit trapezoidal scheme.
IMPLICIT_ITERATIONS = 3
#: EMA weight of the log scale across ticks.
SCALE_SMOOTHING = 0.1
#: A simulated interval wider than this many analytic scales is a diverging simulation.
DIVERGENCE_FACTOR = 1e3
#: The jump priors, in units of the window's largest |value|, are clipped to ± this (a prior of
#: 0.1 on a window of magnitude 1e-300 would otherwise overflow).
PRIOR_RELATIVE_MAX = 1e3
#: Smallest scale, relative to the largest |value| of the window and the forecast.
SCALE_FLOOR_RELATIVE = 1e-12
_TINY = 1e-300
_BIG = float(jnp.finfo(jnp.float64).max)
_SATURATE = 2**30


@pytree
class JumpDiffusion:
    """Parameters of the jump diffusion, in the window's normalised units (values / magnitude)
    and per step (Δt = 1): what :func:`estimate` returns and :func:`simulate` integrates.

    Attributes (float64 scalars unless stated):
        mu: drift per step. sigma: diffusion standard deviation per step (≥ 0).
        kappa: mean-reversion rate per step (≥ 0). level: the reversion level x̄ (window mean).
        lam: jump intensity per step (≥ 0). jump_mean, jump_scale: mean and standard deviation
        of a normal jump size. stable: bool, jumps are α-stable (tail rule). alpha, beta, stable_scale:
        the stable law of a jump, ``jump_mean + stable_scale · S(α, β, 1, 0)``.
        jumps: float64, jumps found in the window. holder: the window's Hölder exponent.
    """

    mu: jax.Array
    sigma: jax.Array
    kappa: jax.Array
    level: jax.Array
    lam: jax.Array
    jump_mean: jax.Array
    jump_scale: jax.Array
    stable: jax.Array
    alpha: jax.Array
    beta: jax.Array
    stable_scale: jax.Array
    jumps: jax.Array
    holder: jax.Array


@pytree
class Simulation:
    """One simulated step: endpoints float64[N_PATHS] (normalised units) and diagnostics."""

    endpoints: jax.Array
    stiffness: jax.Array       # float64, S = |b'(x)| Δt
    implicit_share: jax.Array  # float64 in [0, 1]
    residual: jax.Array        # float64, last predictor–corrector residual (0 when unused)


@pytree
class KernelCState:
    """Kernel C state (one asset). Signal units; rates per unit of time (Δt =
    ``signal_sampling_interval``).

    Attributes:
        key: uint32[2], this kernel's PRNG key (split every update).
        mean: float64, forecast of the next value. log_scale: float64, log of the smoothed
            simulated scale. steps: int32, updates performed.
        mu, sigma, lam, jump_mean, jump_scale, kappa, holder: float64, latest estimates
            (drift, diffusion per √time, intensity, jump mean and scale, mean reversion per
            time, Hölder exponent). stable: bool, α-stable jumps in use; alpha, beta: their law.
        unstable: bool, the event bit: the last simulation diverged (the scale fell back).
        unstable_count: int32, diverged simulations so far.
        scheme_ticks: int32[3], ticks integrated explicitly, blended, implicitly.
        max_stiffness: float64, largest stiffness S seen. implicit_iterations: int32, sweeps of
            the last tick (0 when purely explicit). implicit_residual: float64, their last residual.
    """

    key: jax.Array
    mean: jax.Array
    log_scale: jax.Array
    steps: jax.Array
    mu: jax.Array
    sigma: jax.Array
    lam: jax.Array
    jump_mean: jax.Array
    jump_scale: jax.Array
    kappa: jax.Array
    holder: jax.Array
    stable: jax.Array
    alpha: jax.Array
    beta: jax.Array
    unstable: jax.Array
    unstable_count: jax.Array
    scheme_ticks: jax.Array
    max_stiffness: jax.Array
    implicit_iterations: jax.Array
    implicit_residual: jax.Array


def _raw_key(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def init(config: PredictorConfig, key: jax.Array) -> KernelCState:
    """A cold state holding ``key``; estimates at the priors."""
    f0, i0 = jnp.float64(0.0), jnp.int32(0)
    return KernelCState(
        key=_raw_key(key), mean=f0, log_scale=f0, steps=i0, mu=f0, sigma=f0,
        lam=jnp.float64(config.kernel_c_jump_intensity), jump_mean=jnp.float64(config.kernel_c_jump_mean),
        jump_scale=jnp.float64(config.kernel_c_jump_scale), kappa=f0, holder=jnp.float64(0.5),
        stable=jnp.bool_(False), alpha=jnp.float64(2.0), beta=f0, unstable=jnp.bool_(False),
        unstable_count=i0, scheme_ticks=jnp.zeros(3, jnp.int32), max_stiffness=f0,
        implicit_iterations=i0, implicit_residual=f0)


def _masked_median(x: jax.Array, mask: jax.Array) -> jax.Array:
    filled = jnp.where(mask > 0, x, jnp.nan)
    return jnp.where(jnp.sum(mask) > 0, jnp.nanmedian(filled), 0.0)


def _masked_quantile(x: jax.Array, mask: jax.Array, q: float) -> jax.Array:
    filled = jnp.where(mask > 0, x, jnp.nan)
    return jnp.where(jnp.sum(mask) > 0, jnp.nanquantile(filled, q), 0.0)


def estimate(u: jax.Array, mask: jax.Array, prior_lam: float, prior_mean: jax.Array,
             prior_scale: jax.Array, max_events: int) -> JumpDiffusion:
    """The jump diffusion of a normalised window (module docstring, step 1 and the tail rule).

    Args:
        u: float64[n], the window divided by its largest magnitude (|u| ≤ 1), oldest first.
        mask: float64[n], 1 on real observations.
        prior_lam: prior jump intensity per step. prior_mean, prior_scale: prior jump mean and
            scale in normalised units.
        max_events: most jumps per step (bounds λ ≤ max_events / 4).
    """
    d = u[1:] - u[:-1]
    md = mask[1:] * mask[:-1]
    n = jnp.sum(md)
    centred = d - _masked_median(d, md)
    start = 1.4826 * _masked_median(jnp.abs(centred), md)  # MAD: the first jumps, robustly
    jump = (md > 0) & (jnp.abs(centred) > JUMP_THRESHOLD * start) & (start > 0)
    for _ in range(JUMP_PASSES):  # threshold bipower: pairs touching a found jump are left out
        keep = md * (~jump)
        centred = d - jnp.sum(keep * d) / jnp.maximum(jnp.sum(keep), 1.0)
        pair = keep[1:] * keep[:-1]
        bipower = (math.pi / 2) * jnp.sum(pair * jnp.abs(centred[1:]) * jnp.abs(centred[:-1]))
        var = bipower / jnp.maximum(jnp.sum(pair), 1.0)
        sigma = jnp.sqrt(var)
        jump = (md > 0) & (jnp.abs(centred) > JUMP_THRESHOLD * sigma) & (sigma > 0)
    calm = md * (~jump)
    n_calm = jnp.sum(calm)
    mu = jnp.sum(calm * d) / jnp.maximum(n_calm, 1.0)
    jf = jump.astype(jnp.float64)
    n_jumps = jnp.sum(jf)
    sizes = d - mu
    raw_mean = jnp.sum(jf * sizes) / jnp.maximum(n_jumps, 1.0)
    raw_var = jnp.sum(jf * (sizes - raw_mean) ** 2) / jnp.maximum(n_jumps - 1.0, 1.0)
    raw_s2 = jnp.maximum(raw_var - var, 0.0)
    # Poisson inversion: a step holds at least one jump with probability 1 − exp(−λ), and its
    # size has the mean m·λ/(1 − exp(−λ)) (it may hold several)
    share = (n_jumps + PRIOR_STEPS * -jnp.expm1(-prior_lam)) / (n + PRIOR_STEPS)
    lam = jnp.clip(-jnp.log1p(-jnp.minimum(share, 1.0 - 1e-12)), 0.0, max_events / 4.0)
    per_jump = jnp.where(lam > 0, -jnp.expm1(-lam) / jnp.maximum(lam, _TINY), 1.0)
    jump_mean = (n_jumps * raw_mean * per_jump + PRIOR_JUMPS * prior_mean) / (n_jumps + PRIOR_JUMPS)
    jump_scale = jnp.sqrt((n_jumps * raw_s2 + PRIOR_JUMPS * prior_scale**2) / (n_jumps + PRIOR_JUMPS))
    # mean reversion: increments on lagged deviations from the window mean (non-jump steps)
    level = jnp.sum(mask * u) / jnp.maximum(jnp.sum(mask), 1.0)
    lagged = u[:-1] - level
    sxx = jnp.sum(calm * lagged**2)
    slope = jnp.sum(calm * lagged * (d - mu)) / jnp.maximum(sxx, _TINY)
    resid = jnp.sum(calm * (d - mu - slope * lagged) ** 2) / jnp.maximum(n_calm - 2.0, 1.0)
    t_stat = -slope / jnp.sqrt(jnp.maximum(resid / jnp.maximum(sxx, _TINY), _TINY))
    kappa = jnp.where((sxx > 0) & (t_stat > KAPPA_T_MIN), jnp.clip(-slope, 0.0, 2.0), 0.0)
    # tail rule, on the jumps beyond TAIL_THRESHOLD σ (diffusion exceedances of 3σ would be
    # outliers of a cluster of large normal jumps and fake heavy tails)
    tf = jf * (jnp.abs(centred) > TAIL_THRESHOLD * sigma)
    n_tail = jnp.sum(tf)
    tail_mean = jnp.sum(tf * sizes) / jnp.maximum(n_tail, 1.0)
    dev = sizes - tail_mean
    tail_var = jnp.sum(tf * dev**2) / jnp.maximum(n_tail, 1.0)
    kurt = (jnp.sum(tf * dev**4) / jnp.maximum(n_tail, 1.0)) / jnp.maximum(tail_var, _TINY) ** 2 - 3.0
    centre = _masked_median(sizes, tf)
    absdev = jnp.abs(sizes - centre)
    cut = jnp.maximum(_masked_median(absdev, tf), _TINY)
    top = tf * (absdev > cut)
    hill = jnp.sum(top) / jnp.maximum(jnp.sum(top * jnp.log(jnp.maximum(absdev, cut) / cut)), _TINY)
    alpha = jnp.clip(hill, STABLE_ALPHA_MIN, STABLE_ALPHA_MAX)
    stable = (n_tail >= STABLE_MIN_JUMPS) & (kurt > STABLE_KURTOSIS) & (hill < STABLE_ALPHA_MAX)
    beta = jnp.clip(jnp.sum(top * jnp.sign(sizes - centre)) / jnp.maximum(jnp.sum(top), 1.0), -1.0, 1.0)
    iqr = _masked_quantile(sizes, jf, 0.75) - _masked_quantile(sizes, jf, 0.25)
    return JumpDiffusion(mu=mu, sigma=sigma, kappa=kappa, level=level, lam=lam, jump_mean=jump_mean,
                         jump_scale=jump_scale, stable=stable, alpha=jnp.where(stable, alpha, 2.0),
                         beta=jnp.where(stable, beta, 0.0), stable_scale=iqr, jumps=n_jumps,
                         holder=holder_exponent(u, mask))


def simulate(key: jax.Array, x: jax.Array, model: JumpDiffusion, *, n_paths: int, substeps: int,
             max_events: int, epsilon: float, share: jax.Array | None = None) -> Simulation:
    """``n_paths`` endpoints of one step (Δt = 1, normalised units) of the jump diffusion from ``x``.

    The scheme follows :func:`usp.domain.levy.implicit_share` of the stiffness and Hölder
    exponent, unless ``share`` (the implicit weight, in [0, 1]) is given. Jumps: a Poisson
    number (at most ``max_events``) of normal or α-stable sizes, added over the step.
    """
    k_dw, k_n, k_z, k_s = jax.random.split(key, 4)

    def drift(y: jax.Array) -> jax.Array:
        return model.mu - model.kappa * (y - model.level)

    stiff = stiffness(drift, x, 1.0, epsilon)
    w = implicit_share(stiff, model.holder) if share is None else jnp.asarray(share, jnp.float64)
    h = 1.0 / substeps
    fd_step = epsilon * jnp.maximum(1.0, jnp.abs(x))
    jacobian = (drift(x + fd_step) - drift(x - fd_step)) / (2.0 * fd_step)  # b'(x), finite difference
    dw = jnp.sqrt(h) * jax.random.normal(k_dw, (substeps, n_paths), jnp.float64)
    y = jnp.full((n_paths,), x, jnp.float64)
    residual = jnp.float64(0.0)
    for k in range(substeps):
        noise = model.sigma * dw[k]
        explicit = y + drift(y) * h + noise
        base = y + 0.5 * drift(y) * h + noise
        z = explicit  # predictor
        for _ in range(IMPLICIT_ITERATIONS):  # corrector: simplified Newton on z − base − ½ b(z) h
            z = z - (z - base - 0.5 * drift(z) * h) / (1.0 - 0.5 * jacobian * h)
        residual = jnp.max(jnp.abs(z - base - 0.5 * drift(z) * h))
        y = (1.0 - w) * explicit + w * z
    # N ~ Poisson(λ) truncated at max_events, by inverting its CDF on one uniform per path
    events = jnp.arange(max_events, dtype=jnp.float64)
    log_pmf = (events * jnp.log(jnp.maximum(model.lam, _TINY)) - model.lam
               - jax.scipy.special.gammaln(events + 1.0))
    cdf = jnp.cumsum(jnp.exp(log_pmf))
    count = jnp.sum(jax.random.uniform(k_n, (n_paths, 1), jnp.float64) > cdf[None, :], axis=1)
    count = count.astype(jnp.float64)
    # the sum of N iid jumps, by the closure of each law under sums: N m + s √N Z for normal
    # jumps, N m + c N^{1/α} X for α-stable ones (α ≠ 1 here, and E X = 0 for α > 1 in S1)
    normal = count * model.jump_mean + model.jump_scale * jnp.sqrt(count) * jax.random.normal(
        k_z, (n_paths,), jnp.float64)
    draws = sample_stable(k_s, model.alpha, model.beta, (n_paths,))
    draws_iqr = jnp.quantile(draws, 0.75) - jnp.quantile(draws, 0.25)
    heavy = count * model.jump_mean + (model.stable_scale / jnp.maximum(draws_iqr, _TINY)
                                       * count ** (1.0 / model.alpha) * draws)
    jumps = jnp.where(model.stable, heavy, normal)
    return Simulation(endpoints=y + jumps, stiffness=stiff, implicit_share=w,
                      residual=jnp.where(w > 0, residual, 0.0))


def analytic_scale(model: JumpDiffusion) -> jax.Array:
    """``√(σ² + λ(m² + s²))`` per step (normalised units): the standard deviation of a normal-jump step."""
    spread = jnp.where(model.stable, model.stable_scale, model.jump_scale)
    return jnp.sqrt(model.sigma**2 + model.lam * (model.jump_mean**2 + spread**2))


def interval_scale(endpoints: jax.Array, level: float, reference: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(scale, unstable): the normal scale of the simulated central ``level`` interval, and whether
    the simulation diverged (a non-finite endpoint, or an interval wider than
    ``DIVERGENCE_FACTOR × reference``); a diverged one returns ``reference``."""
    tail = 0.5 * (1.0 - level)
    finite = jnp.all(jnp.isfinite(endpoints))
    safe = jnp.where(finite, endpoints, 0.0)
    q = jnp.quantile(safe, jnp.array([tail, 1.0 - tail]))
    scale = (q[1] - q[0]) / (2.0 * ndtri(1.0 - tail))
    unstable = (~finite) | ~jnp.isfinite(scale) | (scale > DIVERGENCE_FACTOR * reference)
    return jnp.where(unstable, reference, scale), unstable


def _magnitude(values: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.max(jnp.abs(values)), _TINY)


def update(state: KernelCState, window: Window, config: PredictorConfig) -> KernelCState:
    """Re-estimate on the window, simulate one step, prepare the forecast (module docstring)."""
    magnitude = _magnitude(window.values)
    prior_mean = jnp.clip(config.kernel_c_jump_mean / magnitude, -PRIOR_RELATIVE_MAX, PRIOR_RELATIVE_MAX)
    prior_scale = jnp.minimum(config.kernel_c_jump_scale / magnitude, PRIOR_RELATIVE_MAX)
    prior_lam = config.kernel_c_jump_intensity * config.signal_sampling_interval
    model = estimate(window.values / magnitude, window.mask, prior_lam, prior_mean, prior_scale,
                     config.kernel_c_jump_max_events)
    return advance(state, window, model, config)


def advance(state: KernelCState, window: Window, model: JumpDiffusion, config: PredictorConfig,
            share: jax.Array | None = None) -> KernelCState:
    """Simulate one step of ``model`` (fitted to ``window`` in normalised units: values over
    their largest magnitude) and prepare the forecast: the second half of :func:`update`.
    ``share`` forces the implicit share (None: the stiffness rule of :func:`simulate`)."""
    dt = config.signal_sampling_interval
    key, sim_key = jax.random.split(state.key)
    values = window.values
    magnitude = _magnitude(values)
    u = values / magnitude
    sim = simulate(sim_key, u[-1], model, n_paths=N_PATHS, substeps=SUBSTEPS,
                   max_events=config.kernel_c_jump_max_events, epsilon=config.sde_fd_epsilon, share=share)
    reference = jnp.maximum(analytic_scale(model), SCALE_FLOOR_RELATIVE)
    scale_u, unstable = interval_scale(sim.endpoints - u[-1], config.confidence_level, reference)
    scale = jnp.maximum(scale_u, SCALE_FLOOR_RELATIVE) * magnitude
    log_scale = jnp.log(jnp.maximum(scale, _TINY))
    log_scale = jnp.where(state.steps > 0, state.log_scale + SCALE_SMOOTHING * (log_scale - state.log_scale),
                          log_scale)
    step = model.mu + model.lam * model.jump_mean
    mean = jnp.clip(values[-1] + step * magnitude, -_BIG, _BIG)
    w = sim.implicit_share
    scheme = jnp.where(w <= 0.0, 0, jnp.where(w >= 1.0, 2, 1))
    per_time = magnitude / dt
    new = KernelCState(
        key=key, mean=mean, log_scale=log_scale, steps=jnp.minimum(state.steps + 1, _SATURATE),
        mu=jnp.clip(model.mu * per_time, -_BIG, _BIG), sigma=jnp.minimum(model.sigma * magnitude / math.sqrt(dt), _BIG),
        lam=model.lam / dt, jump_mean=jnp.clip(model.jump_mean * magnitude, -_BIG, _BIG),
        jump_scale=jnp.minimum(model.jump_scale * magnitude, _BIG), kappa=model.kappa / dt,
        holder=model.holder, stable=model.stable, alpha=model.alpha, beta=model.beta,
        unstable=unstable, unstable_count=jnp.minimum(state.unstable_count + unstable.astype(jnp.int32), _SATURATE),
        scheme_ticks=jnp.minimum(state.scheme_ticks + (jnp.arange(3) == scheme).astype(jnp.int32), _SATURATE),
        max_stiffness=jnp.maximum(state.max_stiffness, jnp.minimum(sim.stiffness, _BIG)),
        implicit_iterations=jnp.where(w > 0, IMPLICIT_ITERATIONS * SUBSTEPS, 0).astype(jnp.int32),
        implicit_residual=jnp.where(jnp.isfinite(sim.residual), sim.residual, _BIG))
    frozen = jnp.asarray(window.signal_frozen, bool)
    return jax.tree_util.tree_map(lambda old, fresh: jnp.where(frozen, old, fresh), state, new)


def predict(state: KernelCState, window: Window, config: PredictorConfig) -> KernelForecast:
    """The forecast ``update`` prepared (the last value and a window-scaled floor before any)."""
    del config
    started = state.steps > 0
    mean = jnp.where(started, state.mean, window.values[-1])
    floor = jnp.maximum(SCALE_FLOOR_RELATIVE * jnp.maximum(jnp.max(jnp.abs(window.values)), jnp.abs(mean)), _TINY)
    scale = jnp.where(started, jnp.exp(state.log_scale), floor)
    return KernelForecast(mean=mean, scale=jnp.maximum(scale, floor))


#: What :func:`report` says each tick, in order: the shares of ticks integrated explicitly, in
#: the blend and implicitly (each in [0, 1], summing to 1 once a tick was simulated); the
#: largest stiffness ``S = |b'(x)| Δt`` seen (dimensionless); the implicit predictor–corrector
#: sweeps of the last tick and their last residual (normalised units); diverged simulations so
#: far; the jump intensity λ (per unit of time) and the stable index α (2 for normal jumps).
DIAGNOSTICS = ("explicit_share", "blended_share", "implicit_share", "max_stiffness", "implicit_iterations",
               "implicit_residual", "unstable_count", "jump_intensity", "stable_alpha")


def report(state: KernelCState, config: PredictorConfig) -> KernelReport:
    """The scheme telemetry and estimates (:data:`DIAGNOSTICS`) and this tick's instability event."""
    del config
    ticks = state.scheme_ticks.astype(jnp.float64)
    shares = ticks / jnp.maximum(jnp.sum(ticks), 1.0)
    values = jnp.concatenate([shares, jnp.stack([
        state.max_stiffness, state.implicit_iterations.astype(jnp.float64), state.implicit_residual,
        state.unstable_count.astype(jnp.float64), state.lam, jnp.where(state.stable, state.alpha, 2.0)])])
    events = jnp.where(state.unstable, int(KernelEvent.UNSTABLE), 0).astype(jnp.int32)
    return KernelReport(values=values, events=events)


KERNEL_C = KernelSpec(
    name="C", init=init, update=update, predict=predict, diagnostics=DIAGNOSTICS, report=report,
    description="Itô–Lévy jump diffusion: bipower σ, threshold jumps (λ, m, s), mean x + (μ + λm)Δt, "
                "interval by simulation (α-stable jumps by CMS when the tails call for it)",
)
