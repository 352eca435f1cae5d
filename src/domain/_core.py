"""The predictor state pytree and the tick transition ``core_step`` (model.md §2).

``make_core(config, kernels)`` returns ``(init, step, refresh_due, read)``, pure functions closed
over the static configuration and kernel set:

* ``init(key) -> CoreState``
* ``step(state, y, timestamp_ns, now_ns, sia_reading) -> (CoreState, output)`` where ``output``
  is one float64 vector (layout ``Out``) so that the host fetches a tick's result in one transfer.
* ``refresh_due(count, sia_age) -> bool``: whether the next accepted tick re-reads the roughness
  buffer (:func:`refresh_due` is the same rule in numpy, for hosts).
* ``read(window, y) -> float64[Sia.length(k)]``: the identification engine on the buffer that
  tick would hold.

The engine costs about 100 µs, so it runs only on refresh ticks, and outside the step: the host
(which knows ``count`` and ``sia_age``) calls ``read`` on refresh ticks and passes the reading
in; on other ticks it passes ``state.sia`` back, which the step ignores. A ``lax.cond`` inside the
step would do the same, but on CPU a conditional in the compiled step costs about 100 µs on every
tick, taken or not. Only the ``lax.scan`` of ``fit_history`` uses one (``sia_reading=None``).
An asset adopts a reading only on its own refresh ticks, so the numbers do not depend on batching,
and only a valid one taken while the branch is not held (sampling too coarse, frozen signal).

A tick that is rejected (non-finite value, finite value beyond ``MAGNITUDE_LIMIT``, catastrophic
outlier, out-of-order timestamp) returns the previous state *bit-identically* and the last valid
output with the rejection bits set, with one exception: a rejected catastrophic outlier
(|y − ŷ| > ``sigma_bound``·max(σ, σ_Δ), σ the residual σ and σ_Δ the RMS increment, in time
order) updates the outlier streak
``state.monitor.exceed_run`` (+n after n consecutive exceedances above the forecast, −n below;
an exceedance on the other side starts a new streak at ±1; non-finite and out-of-order ticks
leave it as it is; any accepted tick resets it to 0). The ``level_shift_confirm_steps``-th
consecutive exceedance on one side is a **level shift** and is accepted: with Δ = y − ŷ, the
window, the kernel forecasts the losses are taken from and the detector's level are moved by Δ
first (the series reads as if it had always been at the new level, and y lands where the
forecast said relative to it), the kernels learn from that window, the residual Δ itself widens
the fast residual σ (so the move's aftermath is not rejected again), and the tick is a regime
change: ``REGIME_CHANGED``, weights uniform, G± reset, grace period, and the last-value floor at
its upper bound. A single corrupt tick can never do this.

The fused weights are the transport weights with the last-value floor on top (``_fusion``): a
share λ of them moves to kernel N, λ following which of the two forecast better lately.
``timestamp_ns == UNTIMED`` (the smallest int64) marks an untimed tick (history replay): no
staleness, Nyquist or ordering checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np

from ._config import PredictorConfig
from ._cusum import MonitorState, exceedance_run, monitor_init, monitor_step
from ._events import EventCode
from ._fusion import FALLBACK_LOGIT_BOUND, fallback_logit_step, floor_weights, fuse
from ._kernel import KernelEvent, KernelSpec, Window
from ._pytree import pytree, replace
from ._roughness import (
    Sia,
    analyse_buffer,
    breaker_step,
    density_step,
    initial_reading,
    koopman_modes,
    refresh_weight,
    smooth_holder,
    validate_sia,
)
from ._stats import MAGNITUDE_LIMIT, VARIANCE_FLOOR, ema_update
from ._transport import (
    LOG_WEIGHT_FLOOR,
    SinkhornResult,
    free_energy,
    jko_step,
    sinkhorn_symmetric,
    transport_cost,
)

#: Sinkhorn is flagged ill-conditioned below this ε (model.md §5).
EPSILON_WARNING = 1e-4
#: Timestamp of an untimed tick, and of "no timestamp seen yet".
UNTIMED = -(2**63)


class Out:
    """Indices of the output vector: ``SIZE`` scalars, then n weights, n kernel means, the
    Koopman block (k frequencies, k growth rates, k powers) and, when some kernel has a
    ``report``, the report block: n ``KernelEvent`` words (0 for a kernel without a report),
    then every reporting kernel's diagnostics in kernel order (:func:`report_layout`)."""

    PREDICTION, LOWER, UPPER, MODE, EVENTS = 0, 1, 2, 3, 4
    HOLDER, KURTOSIS, CUSUM, THRESHOLD, DISTANCE = 5, 6, 7, 8, 9
    FREE_ENERGY, SINKHORN_ERROR, SINKHORN_CONVERGED, EPSILON, SIGMA = 10, 11, 12, 13, 14
    DEGRADED, EMERGENCY, REGIME_CHANGE, FROZEN, CALIBRATING = 15, 16, 17, 18, 19
    HOLDER_RAW, SPECTRUM_WIDTH, PALEY_WIENER, PW_REGULAR, BRANCH_FROZEN = 20, 21, 22, 23, 24
    SIZE = 25

    @staticmethod
    def koopman(n_kernels: int) -> int:
        """Offset of the Koopman block."""
        return Out.SIZE + 2 * n_kernels

    @staticmethod
    def reports(n_kernels: int, n_modes: int) -> int:
        """Offset of the report block."""
        return Out.SIZE + 2 * n_kernels + 3 * n_modes

    @staticmethod
    def length(n_kernels: int, n_modes: int, report_size: int = 0) -> int:
        return Out.SIZE + 2 * n_kernels + 3 * n_modes + report_size


#: Per kernel, the names of its diagnostics (``()`` for a report without values) or None for a
#: kernel without a ``report``; None as a whole when no kernel reports (no report block).
ReportLayout = tuple[tuple[str, ...] | None, ...] | None


def report_layout(kernels: Sequence[KernelSpec]) -> ReportLayout:
    """The report block's layout for ``kernels`` (:class:`Out`)."""
    layout = tuple(spec.diagnostics if spec.report is not None else None for spec in kernels)
    return layout if any(entry is not None for entry in layout) else None


def report_size(layout: ReportLayout) -> int:
    """Length of the report block: one event word per kernel plus every diagnostic."""
    if layout is None:
        return 0
    return len(layout) + sum(len(entry) for entry in layout if entry is not None)


@pytree
class CoreState:
    """Everything one asset's predictor remembers. All leaves are arrays (vmap adds a batch axis).

    Units: signal units unless stated; variances in squared signal units.
    """

    window: jnp.ndarray            # float64[window_size], oldest first
    count: jnp.ndarray             # int32, accepted ticks (saturates at 2^30)
    last_timestamp_ns: jnp.ndarray  # int64, UNTIMED before the first timed tick
    prediction: jnp.ndarray        # float64, fused ŷ_{t+1|t}
    kernel_means: jnp.ndarray      # float64[n], ŷ_{i,t+1|t}
    monitor: MonitorState          # residual σ², σ̄², kurtosis window, CUSUM
    energies: jnp.ndarray          # float64[n], standardised
    log_weights: jnp.ndarray       # float64[n], normalised log ρ
    dual_f: jnp.ndarray            # float64[n], Sinkhorn warm start
    dual_g: jnp.ndarray            # float64[n]
    holder: jnp.ndarray            # float64, smoothed Hölder exponent (drives the breaker)
    sia: jnp.ndarray               # float64[Sia.length(k)], last reading of the identification engine
    sia_age: jnp.ndarray           # int32, ticks since the last refresh (saturates; see refresh_due)
    coarse_share: jnp.ndarray      # float64, EMA share of gaps too coarse for the finest scale
    branch_frozen: jnp.ndarray     # bool, topological branch (reading and breaker) frozen
    emergency: jnp.ndarray         # bool
    stale_degraded: jnp.ndarray    # bool, degraded by staleness
    fresh_streak: jnp.ndarray      # int32, consecutive fresh ticks while degraded
    repeat_run: jnp.ndarray        # int32, length of the current run of identical values
    frozen: jnp.ndarray            # bool, frozen-signal alarm
    lively_streak: jnp.ndarray     # int32
    incr_var: jnp.ndarray          # float64, historical mean squared increment
    interval_log_scale: jnp.ndarray  # float64, log of the interval width multiplier
    fallback_logit: jnp.ndarray    # float64, log-odds u of the last-value floor's share λ (_fusion)
    key: jnp.ndarray               # uint32[2], PRNG key (threefry)
    kernels: tuple                 # per-kernel state pytrees, in enabled order
    last_output: jnp.ndarray       # float64[Out.length(n, k)], last valid result


def _standardised_loss(errors, sigma, huber, delta):
    return transport_cost(errors / sigma, huber, delta)


def refresh_due(count, sia_age, buffer: int, refresh: int, xp=np):
    """The next accepted tick re-reads the roughness buffer: the buffer is full and the reading
    is ``refresh`` ticks old. ``sia_age`` starts at ``refresh − buffer`` (so the first reading
    comes when the buffer first fills) and is set back there while the branch is held, so the
    next reading sees only ticks from after the hold. ``xp``: numpy (hosts) or jax.numpy (jit)."""
    return (xp.asarray(count) + 1 >= buffer) & (xp.asarray(sia_age) + 1 >= refresh)


#: The sensitivity keys (the fast tuning tier): traced parameters of ``init`` and ``step``, so
#: that a change of their values compiles nothing (``usp.application.compiled_core``).
SENSITIVITY_KEYS = ("cusum_h", "cusum_k", "entropy_window_relaxation_factor", "epsilon", "grace_period_steps",
                    "learning_rate")


@pytree
class Sensitivity:
    """The values of :data:`SENSITIVITY_KEYS` as scalar arrays (float64; ``grace_period_steps``
    int32), standing for the config's floats and ints wherever the step reads them."""

    cusum_h: Any
    cusum_k: Any
    entropy_window_relaxation_factor: Any
    epsilon: Any
    grace_period_steps: Any
    learning_rate: Any


def sensitivity(config: PredictorConfig) -> Sensitivity:
    """``config``'s sensitivity values, the traced parameters of ``make_core``'s functions."""
    values: dict[str, Any] = {name: np.asarray(getattr(config, name), np.int32 if name == "grace_period_steps"
                                               else np.float64) for name in SENSITIVITY_KEYS}
    return Sensitivity(**values)


def make_core(config: PredictorConfig, kernels: Sequence[KernelSpec]):
    """Build the pure ``(init, step, refresh_due, read)`` for a static config and kernel set.

    ``init`` and ``step`` take a last, optional argument ``params``: a :class:`Sensitivity` whose
    values replace ``config``'s sensitivity keys (None: ``config``'s own), so one compiled graph
    serves every value of those keys.
    """
    kernels = tuple(kernels)
    n = len(kernels)
    names = tuple(k.name for k in kernels)
    d_index = names.index("D") if "D" in names else -1
    n_index = names.index("N") if "N" in names else -1
    size = config.window_size
    buffer = config.wtmm_buffer_size
    alpha = config.volatility_alpha
    huber_config = config.sinkhorn_cost_type == "huber"
    refresh = config.wtmm_refresh_steps
    holder_weight = refresh_weight(config.holder_smoothing, refresh)
    n_modes = koopman_modes(config)
    layout = report_layout(kernels)
    validate_sia(config)

    def init(key: jax.Array, params: Sensitivity | None = None) -> CoreState:
        params = sensitivity(config) if params is None else params
        keys = jax.random.split(key, n + 1)
        kernel_states = tuple(spec.init(config, keys[i + 1]) for i, spec in enumerate(kernels))
        last = (jnp.zeros(Out.length(n, n_modes, report_size(layout))).at[Out.CALIBRATING].set(1.0)
                .at[Out.MODE].set(1.0).at[Out.HOLDER].set(0.5).at[Out.HOLDER_RAW].set(0.5))
        uniform = jnp.full(n, -jnp.log(float(n)), dtype=jnp.float64)
        return CoreState(
            window=jnp.zeros(size), count=jnp.int32(0), last_timestamp_ns=jnp.int64(UNTIMED),
            prediction=jnp.float64(0.0), kernel_means=jnp.zeros(n),
            monitor=monitor_init(config.kurtosis_window),
            energies=jnp.zeros(n), log_weights=uniform, dual_f=jnp.zeros(n), dual_g=jnp.zeros(n),
            holder=jnp.float64(0.5), sia=initial_reading(config), sia_age=jnp.int32(refresh - buffer),
            coarse_share=jnp.float64(0.0), branch_frozen=jnp.bool_(False), emergency=jnp.bool_(False),
            stale_degraded=jnp.bool_(False),
            fresh_streak=jnp.int32(0), repeat_run=jnp.int32(0), frozen=jnp.bool_(False),
            lively_streak=jnp.int32(0), incr_var=jnp.float64(0.0),
            interval_log_scale=jnp.float64(0.0), fallback_logit=jnp.float64(0.0), key=keys[0],
            kernels=kernel_states,
            last_output=last.at[Out.EPSILON].set(params.epsilon))

    def due(count: jax.Array, sia_age: jax.Array) -> jax.Array:
        return refresh_due(count, sia_age, buffer, refresh, jnp)

    def admissible(y: jax.Array) -> jax.Array:
        return jnp.isfinite(y) & (jnp.abs(y) <= MAGNITUDE_LIMIT)

    def read(window: jax.Array, y: jax.Array) -> jax.Array:
        """The engine's reading of the last ``wtmm_buffer_size`` samples once ``y`` is appended."""
        y = jnp.asarray(y, jnp.float64)
        y_safe = jnp.where(admissible(y), y, window[-1])
        return analyse_buffer(jnp.concatenate([window[size - buffer + 1:], y_safe[None]]), config)

    def step(state: CoreState, y: jax.Array, timestamp_ns: jax.Array, now_ns: jax.Array,
             sia_reading: jax.Array | None, params: Sensitivity | None = None):
        params = sensitivity(config) if params is None else params
        y = jnp.asarray(y, jnp.float64)
        timestamp_ns = jnp.asarray(timestamp_ns, jnp.int64)
        now_ns = jnp.asarray(now_ns, jnp.int64)
        timed = timestamp_ns != UNTIMED
        seen_time = state.last_timestamp_ns != UNTIMED
        has_prev = state.count > 0
        sigma_prev = jnp.sqrt(jnp.maximum(state.monitor.resid_var, VARIANCE_FLOOR))

        # 1. host checks (as data) ------------------------------------------------------------
        finite = admissible(y)
        too_large = jnp.isfinite(y) & ~finite  # finite, but beyond MAGNITUDE_LIMIT
        y_safe = jnp.where(finite, y, state.window[-1])
        residual = jnp.where(has_prev, y_safe - state.prediction, 0.0)
        warm = state.monitor.n_resid >= buffer
        step_scale = jnp.sqrt(jnp.maximum(state.incr_var, VARIANCE_FLOOR))  # the last value's RMS error
        exceeds = finite & warm & (jnp.abs(residual) > config.sigma_bound * jnp.maximum(sigma_prev, step_scale))
        out_of_order = timed & seen_time & (timestamp_ns < state.last_timestamp_ns)
        # Level shift: the K-th consecutive exceedance on one side is accepted and re-anchors the
        # state by ``shift`` (window, kernel forecasts, the detector's level); the K − 1 before it
        # are rejected and change only the streak. A re-anchor is a regime change.
        streak = exceedance_run(state.monitor.exceed_run, jnp.where(residual > 0, 1, -1))
        reanchor = exceeds & ~out_of_order & (jnp.abs(streak) >= config.level_shift_confirm_steps)
        outlier = exceeds & ~reanchor
        shift = jnp.where(reanchor, residual, 0.0)
        prev_window = jnp.where(reanchor, state.window + shift, state.window)
        rejected = ~finite | outlier | out_of_order
        latency = now_ns - timestamp_ns
        stale = timed & (latency > config.staleness_ttl_ns)
        fresh = ~timed | (latency < config.inference_recovery_hysteresis * config.staleness_ttl_ns)
        sparse = timed & seen_time & (
            timestamp_ns - state.last_timestamp_ns > config.besov_nyquist_interval_ns)

        # window and counters -----------------------------------------------------------------
        first = ~has_prev
        window = jnp.where(first, jnp.full(size, y_safe), jnp.roll(prev_window, -1).at[-1].set(y_safe))
        count = jnp.minimum(state.count + 1, 2**30)
        filled = jnp.minimum(count, size)
        increment = jnp.where(has_prev, y_safe - prev_window[-1], 0.0)

        # frozen signal ---------------------------------------------------------------------------
        same = has_prev & (increment == 0.0)
        repeat_run = jnp.where(same, state.repeat_run + 1, 1)
        n_freeze = config.frozen_signal_steps
        recent = window[-n_freeze:] - window[-n_freeze - 1:-1]
        local_var = jnp.mean((recent - recent.mean()) ** 2)
        lively = local_var > config.frozen_signal_variance_ratio * state.incr_var
        lively_streak = jnp.where(state.frozen & lively, state.lively_streak + 1, 0)
        released = state.frozen & (lively_streak >= config.frozen_signal_release_steps)
        raised = ~state.frozen & (repeat_run >= n_freeze)
        frozen = (state.frozen & ~released) | raised
        incr_var = jnp.where(has_prev & ~frozen,
                             ema_update(state.incr_var, increment**2, 1.0 / size, count - 1),
                             state.incr_var)

        # degraded mode (staleness) ---------------------------------------------------------------
        fresh_streak = jnp.where(state.stale_degraded & fresh & ~stale, state.fresh_streak + 1, 0)
        recovered = state.stale_degraded & (fresh_streak >= config.degraded_recovery_min_steps)
        stale_degraded = stale | (state.stale_degraded & ~recovered)
        degraded = stale_degraded | frozen
        was_degraded = state.stale_degraded | state.frozen

        # 2-4. residuals, volatility, kurtosis, CUSUM ------------------------------------------
        fed, reading = monitor_step(state.monitor, residual, y_safe, alpha=alpha, h=params.cusum_h,
                                    k=params.cusum_k, grace_period=params.grace_period_steps,
                                    warmup=buffer, shift=shift, force_alarm=reanchor)
        monitor = jax.tree_util.tree_map(lambda new, old: jnp.where(has_prev, new, old), fed, state.monitor)
        alarm = has_prev & reading.alarm
        vol_ratio = reading.vol_ratio
        resid_var = monitor.resid_var
        calibrating = count < buffer

        # 5. roughness (SIA), sampling-density guard, circuit breaker ----------------------------
        coarse_share, branch_frozen = density_step(
            state.coarse_share, state.branch_frozen, timestamp_ns - state.last_timestamp_ns,
            timed & seen_time, config)
        # Held while the sampling is too coarse or the signal frozen: no reading is taken, and the
        # next one waits until the buffer holds only ticks from after the hold.
        held = branch_frozen | frozen
        is_due = due(state.count, state.sia_age)
        if sia_reading is None:  # inside lax.scan: the host cannot pick the refresh ticks
            sia_reading = jax.lax.cond(is_due, lambda: read(state.window, y), lambda: state.sia)
        adopt = is_due & ~held & (sia_reading[Sia.VALID] > 0)
        sia = jnp.where(adopt, sia_reading, state.sia)
        sia_age = jnp.where(held, refresh - buffer, jnp.where(is_due, 0, jnp.minimum(state.sia_age + 1, refresh)))
        holder = jnp.where(adopt, smooth_holder(state.holder, sia[Sia.HOLDER], holder_weight), state.holder)
        emergency = jnp.where(calibrating, False,
                              jnp.where(branch_frozen, state.emergency,
                                        breaker_step(state.emergency, holder, config.holder_threshold,
                                                     config.robustness_dimension_threshold,
                                                     config.robustness_hysteresis_margin)))
        huber = jnp.bool_(huber_config) | emergency

        # 6. transport (JKO step on the weights) ------------------------------------------------
        # Standardise by σ *after* this residual entered it: bounded by 1/volatility_alpha per unit
        # of weight even for the first residual or a burst, and common to all kernels.
        sigma_post = jnp.sqrt(jnp.maximum(resid_var, VARIANCE_FLOOR))
        losses = _standardised_loss(y_safe - (state.kernel_means + shift), sigma_post, huber,
                                    config.sinkhorn_huber_delta)
        entropy_window = jnp.clip(params.entropy_window_relaxation_factor * config.jko_domain_length**2
                                  / vol_ratio**2, config.entropy_window_bounds_min,
                                  config.entropy_window_bounds_max)
        energy_alpha = 2.0 / (entropy_window + 1.0)
        energies = jnp.where(has_prev & (state.monitor.n_resid > 0),
                             state.energies + energy_alpha * (losses - state.energies),
                             jnp.where(has_prev, losses, state.energies))
        epsilon = jnp.maximum(config.epsilon_min, params.epsilon * (1.0 + config.epsilon_volatility_coupling
                                                                    * vol_ratio))
        tau = jnp.maximum(config.learning_rate_minimum,
                          jnp.minimum(params.learning_rate,
                                      config.learning_rate_safety_factor * 2.0 * epsilon * vol_ratio**2))
        cost = _standardised_loss(state.kernel_means[:, None] - state.kernel_means[None, :], sigma_post,
                                  huber, config.sinkhorn_huber_delta)
        if n > 1:
            sink = sinkhorn_symmetric(state.log_weights, cost, epsilon, state.dual_f,
                                      config.sinkhorn_max_iter, config.sinkhorn_tolerance)
        else:  # one kernel: the plan is the point mass and f = ε log 1 / 2 = 0
            sink = SinkhornResult(jnp.zeros(1), jnp.zeros(1), jnp.float64(0.0), jnp.bool_(True))
        # Energy of a kernel: its standardised loss summed over the entropy window (n_e × EMA mean).
        window_energy = entropy_window * energies
        moved = jko_step(state.log_weights, window_energy, sink.f, epsilon, tau, config.jko_mirror_step)
        forced = emergency & config.robustness_force_kernel_d & (d_index >= 0)
        one_hot = (jnp.where(jnp.arange(n) == d_index, 0.0, LOG_WEIGHT_FLOOR) if d_index >= 0 else moved)
        freeze_weights = degraded | stale | sparse | ~has_prev
        log_weights = jnp.where(freeze_weights, state.log_weights, moved)
        uniform = jnp.full(n, -jnp.log(float(n)), dtype=jnp.float64)
        log_weights = jnp.where(alarm, uniform, log_weights)
        log_weights = jnp.where(forced, one_hot, log_weights)  # the robustness postulate overrides a reset
        weights = jnp.exp(log_weights)

        # 7. kernels learn and predict ----------------------------------------------------------
        view = Window(values=window, count=filled.astype(jnp.int32), signal_frozen=frozen,
                      emergency=emergency)
        kernel_states, forecasts = [], []
        for spec, kstate in zip(kernels, state.kernels, strict=True):
            kstate = spec.update(kstate, view, config)
            kernel_states.append(kstate)
            forecasts.append(spec.predict(kstate, view, config))
        means = jnp.stack([forecast.mean for forecast in forecasts])
        scales = jnp.maximum(jnp.stack([forecast.scale for forecast in forecasts]), jnp.sqrt(VARIANCE_FLOOR))
        finite_kernels = jnp.isfinite(means) & jnp.isfinite(scales)
        means = jnp.where(finite_kernels, means, y_safe)
        scales = jnp.where(finite_kernels, scales, jnp.sqrt(jnp.maximum(resid_var, VARIANCE_FLOOR)))
        report_block, kernel_events = kernel_reports(kernel_states)
        # A collapsed kernel gets no weight while it reports the collapse (the rest renormalised).
        collapsed = (kernel_events & int(KernelEvent.MODE_COLLAPSE)) != 0
        masked = jnp.where(collapsed, LOG_WEIGHT_FLOOR, log_weights)
        masked = masked - jax.scipy.special.logsumexp(masked)
        log_weights = jnp.where(jnp.any(collapsed) & ~jnp.all(collapsed), masked, log_weights)
        weights = jnp.exp(log_weights)
        previous_events = (state.last_output[Out.reports(n, n_modes):Out.reports(n, n_modes) + n].astype(jnp.int32)
                           if layout is not None else jnp.zeros(n, jnp.int32))
        kernel_bits = jax.lax.reduce(kernel_events, jnp.int32(0), jax.lax.bitwise_or, (0,))
        collapse_raised = jnp.any(collapsed & ((previous_events & int(KernelEvent.MODE_COLLAPSE)) == 0))

        # 8. the last-value floor, fuse, calibrate the interval --------------------------------
        if n_index >= 0:
            mixture_before = jnp.sum(jnp.exp(state.log_weights) * state.kernel_means) + shift
            scored = has_prev & ~freeze_weights
            stepped = fallback_logit_step(state.fallback_logit, y_safe - mixture_before,
                                          y_safe - (state.kernel_means[n_index] + shift), step_scale,
                                          config.fallback_learning_rate)
            fallback_logit = jnp.where(scored, stepped, state.fallback_logit)
            # After a level shift the kernels' past is void: the last value leads until they win.
            fallback_logit = jnp.where(reanchor, FALLBACK_LOGIT_BOUND, fallback_logit)
            fused_weights = jnp.where(forced, weights, floor_weights(weights, fallback_logit, n_index))
        else:
            fallback_logit, fused_weights = state.fallback_logit, weights
        level = config.confidence_level
        missed = has_prev & ((y_safe < state.last_output[Out.LOWER]) | (y_safe > state.last_output[Out.UPPER]))
        adapt = config.interval_adaptation_rate * (missed.astype(jnp.float64) - (1.0 - level)) / (1.0 - level)
        interval_log_scale = jnp.where(warm, jnp.clip(state.interval_log_scale + adapt, -3.0, 3.0),
                                       state.interval_log_scale)
        prediction, lower, upper = fuse(fused_weights, means, scales, level, jnp.exp(interval_log_scale))

        # 9. flags, events, telemetry -------------------------------------------------------------
        mode = jnp.where(calibrating, 1, jnp.where(degraded | emergency, 2, 0))
        bits = (jnp.where(stale, int(EventCode.STALE_DATA), 0)
                | jnp.where(sparse, int(EventCode.SPARSE_ARRIVAL), 0)
                | jnp.where(raised, int(EventCode.FROZEN_SIGNAL), 0)
                | jnp.where(released, int(EventCode.FROZEN_SIGNAL_RELEASED), 0)
                | jnp.where(alarm, int(EventCode.REGIME_CHANGED), 0)
                | jnp.where(emergency & ~state.emergency, int(EventCode.CRITICAL_SINGULARITY), 0)
                | jnp.where(~emergency & state.emergency, int(EventCode.SINGULARITY_CLEARED), 0)
                | jnp.where(was_degraded & ~degraded, int(EventCode.NORMAL_OPERATION_RESTORED), 0)
                | jnp.where(has_prev & ~freeze_weights & ~sink.converged,
                            int(EventCode.SINKHORN_NOT_CONVERGED), 0)
                | jnp.where(epsilon < EPSILON_WARNING, int(EventCode.LOW_EPSILON), 0)
                | jnp.where(branch_frozen & ~state.branch_frozen, int(EventCode.TOPOLOGICAL_BRANCH_FROZEN), 0)
                | jnp.where(~branch_frozen & state.branch_frozen, int(EventCode.TOPOLOGICAL_BRANCH_RELEASED), 0)
                | jnp.where((kernel_bits & int(KernelEvent.UNSTABLE)) != 0, int(EventCode.KERNEL_UNSTABLE), 0)
                | jnp.where((kernel_bits & int(KernelEvent.GRADIENT_INSTABILITY)) != 0,
                            int(EventCode.KERNEL_GRADIENT_INSTABILITY), 0)
                | jnp.where(collapse_raised, int(EventCode.KERNEL_MODE_COLLAPSE), 0))
        statistic = jnp.maximum(monitor.cusum.upper, monitor.cusum.lower)
        threshold, kurtosis = reading.threshold, reading.kurtosis
        head = jnp.stack([
            prediction, lower, upper, mode.astype(jnp.float64), bits.astype(jnp.float64),
            holder, kurtosis, statistic, threshold, threshold - statistic,
            free_energy(weights, window_energy, epsilon), sink.error, sink.converged.astype(jnp.float64),
            epsilon, jnp.sqrt(jnp.maximum(resid_var, 0.0)), degraded.astype(jnp.float64),
            emergency.astype(jnp.float64), alarm.astype(jnp.float64), frozen.astype(jnp.float64),
            calibrating.astype(jnp.float64), sia[Sia.HOLDER], sia[Sia.WIDTH], sia[Sia.PALEY_WIENER],
            (sia[Sia.PALEY_WIENER] <= config.paley_wiener_integral_max).astype(jnp.float64),
            branch_frozen.astype(jnp.float64)])
        output = jnp.concatenate([head, fused_weights, means, sia[Sia.KOOPMAN:], report_block])

        new_state = CoreState(
            window=window, count=count,
            last_timestamp_ns=jnp.where(timed, timestamp_ns, state.last_timestamp_ns),
            prediction=prediction, kernel_means=means, monitor=monitor,
            energies=energies, log_weights=log_weights,
            dual_f=jnp.where(freeze_weights, state.dual_f, sink.f),
            dual_g=jnp.where(freeze_weights, state.dual_g, sink.g),
            holder=holder, sia=sia, sia_age=sia_age, coarse_share=coarse_share, branch_frozen=branch_frozen,
            emergency=emergency, stale_degraded=stale_degraded, fresh_streak=fresh_streak,
            repeat_run=repeat_run, frozen=frozen, lively_streak=lively_streak, incr_var=incr_var,
            interval_log_scale=interval_log_scale, fallback_logit=fallback_logit, key=state.key,
            kernels=tuple(kernel_states),
            last_output=output)

        reject_bits = (jnp.where(~jnp.isfinite(y), int(EventCode.REJECTED_NON_FINITE), 0)
                       | jnp.where(too_large, int(EventCode.REJECTED_MAGNITUDE), 0)
                       | jnp.where(outlier, int(EventCode.REJECTED_OUTLIER), 0)
                       | jnp.where(out_of_order, int(EventCode.REJECTED_OUT_OF_ORDER), 0))
        rejected_output = state.last_output.at[Out.EVENTS].set(reject_bits.astype(jnp.float64))
        # A rejected outlier changes the streak and nothing else; other rejections change nothing.
        kept = replace(state, monitor=replace(state.monitor, exceed_run=jnp.where(
            outlier & ~out_of_order, streak, state.monitor.exceed_run)))
        final_state = jax.tree_util.tree_map(lambda old, new: jnp.where(rejected, old, new), kept, new_state)
        return final_state, jnp.where(rejected, rejected_output, output)

    def kernel_reports(kernel_states: Sequence[Any]) -> tuple[jax.Array, jax.Array]:
        """The report block (float64[report_size]) and each kernel's event word (int32[n])."""
        events, values = [], []
        for spec, kstate in zip(kernels, kernel_states, strict=True):
            if spec.report is None:
                events.append(jnp.int32(0))
                continue
            report = spec.report(kstate, config)
            events.append(jnp.asarray(report.events, jnp.int32).reshape(()))
            values.append(jnp.asarray(report.values, jnp.float64).reshape(len(spec.diagnostics)))
        event_words = jnp.stack(events) if events else jnp.zeros(0, jnp.int32)
        if layout is None:
            return jnp.zeros(0), event_words
        return jnp.concatenate([event_words.astype(jnp.float64), *values]), event_words

    return init, step, due, read
