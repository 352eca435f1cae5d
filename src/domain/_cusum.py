"""Residual monitor: volatility, a robust two-sided CUSUM with the kurtosis-adaptive threshold
and a grace period (model.md §2.3–2.4), and the outlier streak that re-anchors a level shift.

**The detector's residual.** The predictor adapts to a change within a few ticks (kernel D
tracks a new level in about ten), so its one-step residual e_t = y_t − ŷ_t carries a +1σ level
shift only as a short transient, about 6σ summed: no CUSUM on e alone can see it at a low false
alarm rate. The detector therefore judges each tick against a reference that does not adapt
within an excursion: the *slow level* m (an EMA of the accepted values, weight
``volatility_alpha · SLOW_VOLATILITY_RATIO``), wherever that level forecasts about as well as the
predictor, and the predictor's forecast elsewhere (random walks, strongly autocorrelated
series, where a level means nothing). With r_t = y_t − m_{t−1} and robust scales s_e, s_r of the
two residuals, the gate

    g = clip((GATE_HIGH − s_r/s_e) / (GATE_HIGH − GATE_LOW), 0, 1)

mixes them, d_t = (1 − g)·e_t + g·r_t, judged by the scale s_d = (1 − g)·s_e + g·s_r. White noise
around a level reads s_r/s_e ≈ 0.95 (g = 1), a random walk ≫ 1 (g = 0). After an alarm the level
restarts as the running mean of the ticks since (weight max(w, 1/n)), so one change is reported
once.

**The score.** z_t = clip(d_t/s_d, −SCORE_CLIP, SCORE_CLIP), a Huber-clipped standardised
residual: heavy tails (Student-t(3)) cannot inflate it, so a small shift is not hidden behind
them, and κ_t, the kurtosis of the last ``kurtosis_window`` scores, stays near the Gaussian value
instead of swinging with the raw residuals' unbounded fourth moment. The robust scales are EMAs of
|x| clipped at ``SCALE_CLIP`` scales (weight as the level's), times √(π/2) so that they equal σ on
Gaussian input.

**The statistic** is kept in residual units: ``G⁺ ← max(0, G⁺ + s_d·(z − k))``,
``G⁻ ← max(0, G⁻ − s_d·(z + k))``, with s_d taken *before* this residual entered it. It is the
CUSUM of the score with slack ``k``, scaled by s_d, so the threshold
``h_t = h · s_d · (1 + ln(κ/3))`` scales with volatility as §2.4 states.

**The outlier streak** ``exceed_run`` (signed: +n after n consecutive rejected exceedances above
the forecast, −n below) is the only field a rejected outlier tick changes (docs/model.md).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ._pytree import pytree
from ._stats import VARIANCE_FLOOR, ema_update, rolling_kurtosis

#: Weight of the slow EMAs (σ̄², the detector's level and robust scales) relative to ``volatility_alpha``.
SLOW_VOLATILITY_RATIO = 0.1

#: Range of the kurtosis factor 1 + ln(κ/3) (κ itself is clamped in _stats).
FACTOR_RANGE = (0.25, 10.0)

#: Huber clip of the detector's score z = d/s_d (in scales).
SCORE_CLIP = 3.0
#: |x| enters a robust scale clipped at this many scales (after ``SCALE_WARMUP`` samples).
SCALE_CLIP = 4.0
#: Samples a robust scale averages unclipped before clipping starts.
SCALE_WARMUP = 16
#: Gate of the level reference: full below this ratio s_r/s_e, none above ``GATE_HIGH``.
GATE_LOW, GATE_HIGH = 1.02, 1.15
#: E|Z| = √(2/π) for a standard normal Z: a mean absolute deviation times this inverse is σ.
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)


@pytree
class CusumState:
    """G⁺, G⁻ (residual units, ≥ 0) and the steps left in the grace period (int32 ≥ 0)."""

    upper: jnp.ndarray
    lower: jnp.ndarray
    grace_left: jnp.ndarray


def cusum_init() -> CusumState:
    return CusumState(jnp.float64(0.0), jnp.float64(0.0), jnp.int32(0))


def adaptive_threshold(h: float, sigma: jnp.ndarray, kurtosis: jnp.ndarray) -> jnp.ndarray:
    """``h_t = h σ (1 + ln(κ/3))``, the factor clamped to FACTOR_RANGE so h_t > 0 and finite."""
    factor = jnp.clip(1.0 + jnp.log(kurtosis / 3.0), *FACTOR_RANGE)
    return h * sigma * factor


def cusum_step(state: CusumState, score: jnp.ndarray, sigma: jnp.ndarray, threshold: jnp.ndarray,
               k: float, grace_period: int, armed: jnp.ndarray,
               force: jnp.ndarray | bool = False) -> tuple[CusumState, jnp.ndarray]:
    """Advance the detector by one standardised score; returns (state, alarm).

    ``G⁺ ← max(0, G⁺ + σ(z − k))``, ``G⁻ ← max(0, G⁻ − σ(z + k))`` (residual units). An alarm
    needs ``armed`` (the caller's warm-up condition) and an expired grace period, or ``force``
    (a re-anchored level shift); it resets G± to 0 and starts a new grace period. During the grace
    period the statistic keeps accumulating but cannot alarm.
    """
    upper = jnp.maximum(0.0, state.upper + sigma * (score - k))
    lower = jnp.maximum(0.0, state.lower - sigma * (score + k))
    alarm = (armed & (state.grace_left == 0) & ((upper > threshold) | (lower > threshold))) | force
    grace = jnp.where(alarm, jnp.int32(grace_period), jnp.maximum(state.grace_left - 1, 0))
    return CusumState(jnp.where(alarm, 0.0, upper), jnp.where(alarm, 0.0, lower), grace), alarm


def robust_scale(deviation: jnp.ndarray) -> jnp.ndarray:
    """σ-equivalent of a mean absolute deviation (exact for Gaussian input), floored above 0."""
    return jnp.sqrt(jnp.maximum((_MAD_TO_SIGMA * deviation) ** 2, VARIANCE_FLOOR))


def deviation_update(deviation: jnp.ndarray, value: jnp.ndarray, weight: float, n_seen: jnp.ndarray,
                     floor: jnp.ndarray) -> jnp.ndarray:
    """EMA of |value| clipped at ``SCALE_CLIP`` × max(robust scale, ``floor``) once
    ``SCALE_WARMUP`` samples are in (``n_seen`` counts this one).

    One sample moves it by at most ``weight · SCALE_CLIP`` scales, so a burst of outliers widens
    it slowly while a lasting change of volatility still carries it along. ``floor`` (the fast σ)
    lets a scale that decayed towards 0 on a constant stretch recover when the signal moves again.
    """
    bound = jnp.where(n_seen > SCALE_WARMUP, SCALE_CLIP * jnp.maximum(robust_scale(deviation), floor),
                      jnp.inf)
    return ema_update(deviation, jnp.minimum(jnp.abs(value), bound), weight, n_seen)


@pytree
class MonitorState:
    """Residual monitor: EMA variances, the detector's level and robust scales, the score window
    (shift register), the CUSUM and the outlier streak."""

    resid_var: jnp.ndarray   # float64, EMA σ² of residuals (signal units²)
    slow_var: jnp.ndarray    # float64, slow EMA σ̄²
    n_resid: jnp.ndarray     # int32, residuals seen
    resid_window: jnp.ndarray  # float64[kurtosis_window], the detector's scores z, newest last
    cusum: CusumState
    level: jnp.ndarray       # float64, the detector's slow level m (signal units)
    level_count: jnp.ndarray  # int32, values in the level since its last restart (saturates)
    level_dev: jnp.ndarray   # float64, robust mean |y − m| (signal units)
    resid_dev: jnp.ndarray   # float64, robust mean |e| (signal units)
    scale_count: jnp.ndarray  # int32, residuals in the robust scales (saturates); 0: detector cold
    exceed_run: jnp.ndarray  # int32, signed count of consecutive same-side rejected outliers


@pytree
class MonitorReading:
    """What the monitor says about one residual."""

    sigma_prev: jnp.ndarray   # fast σ before this residual (outlier bound, standardised losses)
    sigma_detector: jnp.ndarray  # s_d before this residual (the CUSUM scale)
    kurtosis: jnp.ndarray     # κ_t of the scores
    threshold: jnp.ndarray    # h_t
    statistic: jnp.ndarray    # max(G⁺, G⁻) after the update
    vol_ratio: jnp.ndarray    # σ_t/σ̄_t after the update (1 until two residuals)
    gate: jnp.ndarray         # g, the level reference's share of the detector residual
    alarm: jnp.ndarray


def monitor_init(kurtosis_window: int) -> MonitorState:
    zero = jnp.float64(0.0)
    return MonitorState(zero, zero, jnp.int32(0), jnp.zeros(kurtosis_window), cusum_init(),
                        zero, jnp.int32(0), zero, zero, jnp.int32(0), jnp.int32(0))


def monitor_step(state: MonitorState, residual: jnp.ndarray, value: jnp.ndarray, *, alpha: float,
                 h: float, k: float, grace_period: int, warmup: int, shift: jnp.ndarray | float = 0.0,
                 force_alarm: jnp.ndarray | bool = False) -> tuple[MonitorState, MonitorReading]:
    """Feed one accepted tick: its residual e_t = y_t − ŷ_t and value y_t (model.md §2 steps 2–4).

    σ²_t is the bias-corrected EMA of e² with weight ``alpha``, σ̄²_t the same with weight
    ``alpha · SLOW_VOLATILITY_RATIO``; the CUSUM judges the score of d_t (module docstring) by the
    scale before this tick and alarms only after ``warmup`` residuals. ``shift`` moves the
    detector's level first (a re-anchored level shift, signal units); ``force_alarm`` raises the
    alarm whatever the statistic (the re-anchor is a regime change). The outlier streak is reset.
    """
    slow = alpha * SLOW_VOLATILITY_RATIO
    sigma_prev = jnp.sqrt(jnp.maximum(state.resid_var, VARIANCE_FLOOR))
    n_resid = state.n_resid + 1
    resid_var = ema_update(state.resid_var, residual**2, alpha, n_resid)
    slow_var = ema_update(state.slow_var, residual**2, slow, n_resid)

    level = state.level + shift
    level_residual = jnp.where(state.level_count > 0, value - level, residual)
    ratio = robust_scale(state.level_dev) / robust_scale(state.resid_dev)
    gate = jnp.where(state.scale_count > SCALE_WARMUP,
                     jnp.clip((GATE_HIGH - ratio) / (GATE_HIGH - GATE_LOW), 0.0, 1.0), 0.0)
    detector_residual = (1.0 - gate) * residual + gate * level_residual
    sigma_detector = (1.0 - gate) * robust_scale(state.resid_dev) + gate * robust_scale(state.level_dev)
    score = jnp.clip(detector_residual / sigma_detector, -SCORE_CLIP, SCORE_CLIP)

    window = jnp.concatenate([state.resid_window[1:], score[None]])
    size = window.shape[-1]
    kurtosis = rolling_kurtosis(window, jnp.minimum(n_resid, size))
    threshold = adaptive_threshold(h, sigma_detector, kurtosis)
    cusum, alarm = cusum_step(state.cusum, score, sigma_detector, threshold, k, grace_period,
                              armed=(state.n_resid >= warmup) & (state.scale_count >= warmup),
                              force=force_alarm)

    n_scale = jnp.minimum(state.scale_count + 1, 2**30)
    level_dev = deviation_update(state.level_dev, level_residual, slow, n_scale, sigma_prev)
    resid_dev = deviation_update(state.resid_dev, residual, slow, n_scale, sigma_prev)
    level_count = jnp.where(alarm, 1, jnp.minimum(state.level_count + 1, 2**30))
    level = jnp.where(alarm, value, ema_update(level, value, slow, level_count))

    vol_ratio = jnp.where(n_resid > 1, jnp.sqrt(jnp.maximum(resid_var, VARIANCE_FLOOR)
                                                / jnp.maximum(slow_var, VARIANCE_FLOOR)), 1.0)
    reading = MonitorReading(sigma_prev, sigma_detector, kurtosis, threshold, jnp.maximum(cusum.upper, cusum.lower),
                             vol_ratio, gate, alarm)
    return MonitorState(resid_var, slow_var, n_resid, window, cusum, level, level_count, level_dev, resid_dev,
                        n_scale, jnp.int32(0)), reading


def exceedance_run(run: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
    """The outlier streak after one more exceedance on ``side`` (+1 above the forecast, −1 below):
    it extends a streak on the same side and starts a new one (±1) otherwise (int32)."""
    same = jnp.sign(run) == side
    return jnp.where(same, run + side, side).astype(jnp.int32)
