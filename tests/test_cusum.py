"""CUSUM acceptance on the production residual monitor, with default config.

Reference: a two-sided textbook CUSUM with known σ = 1 and (h, k) = (5, 0.5) has, by Siegmund's
approximation, ARL₀ ≈ 469 steps, i.e. a false alarm rate ≈ 2.1e-3 per step (≈ 2.05e-3 with the
20-step grace period, as simulated below). The monitor's robust detector (Huber-clipped score,
robust scale, kurtosis of the score in the threshold, h = 7 by default) keeps false alarms below
0.5 per 1000 steps on Gaussian and Student-t(3) residuals alike and still finds a +1σ shift in
about ten steps. The same figures through the whole predictor are in
benchmarks/bench_change_detection.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import PredictorConfig
from usp.domain._cusum import SCORE_CLIP, CusumState, adaptive_threshold, cusum_step, monitor_init, monitor_step

CONFIG = PredictorConfig()
WARMUP = CONFIG.wtmm_buffer_size
STREAMS, LENGTH = 200, 5000
EXPECTED_GAUSSIAN_RATE = 1.0 / 469.0
MAX_FALSE_ALARMS_PER_1000 = 0.5


def _monitor(residuals: np.ndarray, values: np.ndarray | None = None, h: float = CONFIG.cusum_h):
    """Alarms, thresholds, detector σ, kurtosis and gate for a batch of streams [S, T].

    ``values`` are the observations (default: the residuals themselves, i.e. a forecast of 0)."""
    values = residuals if values is None else values

    def one(stream, observed):
        def body(state, tick):
            e, y = tick
            state, reading = monitor_step(state, e, y, alpha=CONFIG.volatility_alpha, h=h, k=CONFIG.cusum_k,
                                          grace_period=CONFIG.grace_period_steps, warmup=WARMUP)
            return state, (reading.alarm, reading.threshold, reading.sigma_detector, reading.kurtosis, reading.gate)

        return jax.lax.scan(body, monitor_init(CONFIG.kurtosis_window), (stream, observed))[1]

    return tuple(np.asarray(a) for a in jax.jit(jax.vmap(one))(jnp.asarray(residuals), jnp.asarray(values)))


def _classical(residuals: np.ndarray, h: float, k: float, grace: int) -> np.ndarray:
    """Textbook two-sided CUSUM with known σ = 1 and the same grace rule."""

    def one(stream):
        def body(carry, z):
            up, low, left = carry
            up, low = jnp.maximum(0.0, up + z - k), jnp.maximum(0.0, low - z - k)
            alarm = (left == 0) & ((up > h) | (low > h))
            return (jnp.where(alarm, 0.0, up), jnp.where(alarm, 0.0, low),
                    jnp.where(alarm, grace, jnp.maximum(left - 1, 0))), alarm

        return jax.lax.scan(body, (0.0, 0.0, 0), stream)[1]

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(residuals)))


def _delays(alarms: np.ndarray, at: int) -> np.ndarray:
    return np.array([np.flatnonzero(row[at:])[0] if row[at:].any() else np.inf for row in alarms])


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((STREAMS, LENGTH))


@pytest.fixture(scope="module")
def student_t3() -> np.ndarray:
    return np.random.default_rng(12).standard_t(3, (STREAMS, LENGTH)) / np.sqrt(3.0)  # unit variance


def test_false_alarms_are_rare_on_gaussian_and_heavy_tails(gaussian, student_t3):
    classical = _classical(gaussian, 5.0, CONFIG.cusum_k, CONFIG.grace_period_steps)[:, 2 * WARMUP:].mean()
    assert classical == pytest.approx(EXPECTED_GAUSSIAN_RATE, rel=0.15)  # the simulation is sound
    gaussian_rate = _monitor(gaussian)[0][:, 2 * WARMUP:].mean()
    heavy_rate = _monitor(student_t3)[0][:, 2 * WARMUP:].mean()
    assert 0 < gaussian_rate * 1000 <= MAX_FALSE_ALARMS_PER_1000, gaussian_rate
    assert heavy_rate * 1000 <= MAX_FALSE_ALARMS_PER_1000, heavy_rate
    # negative control: the textbook CUSUM (fixed threshold, raw residuals) on Student-t(3)
    fixed = _classical(student_t3, 5.0, CONFIG.cusum_k, CONFIG.grace_period_steps)[:, 2 * WARMUP:].mean()
    assert 1.5 < fixed / classical < 3.0


@pytest.mark.parametrize("noise", ["gaussian", "student_t3"])
def test_one_sigma_shift_is_found_quickly_whatever_the_tails(noise, request):
    residuals = request.getfixturevalue(noise)[:, :1100].copy()
    shift_at = 1000
    residuals[:, shift_at:] += 1.0  # +1σ: σ the noise's standard deviation
    delays = _delays(_monitor(residuals)[0], shift_at)
    assert np.median(delays) <= 20 and np.mean(delays <= 60) >= 0.9, (np.median(delays), np.mean(delays <= 60))


def test_score_kurtosis_stays_near_gaussian_on_heavy_tails(student_t3):
    """The raw Student-t(3) residuals have an unbounded fourth moment; the clipped score's
    kurtosis stays in a narrow band, so the threshold factor 1 + ln(κ/3) does too."""
    kurtosis = _monitor(student_t3[:20])[3][:, 2 * WARMUP:]
    assert kurtosis.min() > 2.0 and kurtosis.max() < 6.0
    # negative control: the raw residuals' kurtosis over the same window length swings far wider
    size = CONFIG.kurtosis_window
    windows = np.lib.stride_tricks.sliding_window_view(student_t3[:20, 2 * WARMUP:], size, axis=1)[:, ::50]
    centred = windows - windows.mean(axis=-1, keepdims=True)
    raw = (centred**4).mean(axis=-1) / (centred**2).mean(axis=-1) ** 2
    assert raw.max() > 20.0


def test_three_sigma_shift_detected_within_30_steps():
    rng = np.random.default_rng(13)
    shift_at = 600
    residuals = rng.standard_normal((STREAMS, shift_at + 60))
    residuals[:, shift_at:] += 3.0
    alarms = _monitor(residuals)[0]
    detected = alarms[:, shift_at:shift_at + 30].any(axis=1)
    assert detected.mean() >= 0.9, detected.mean()


def test_one_change_is_reported_once():
    """After an alarm the detector's level restarts at the new level: a lasting shift of a
    level-stationary series is one regime change, not one every grace period."""
    rng = np.random.default_rng(16)
    residuals = rng.standard_normal((50, 3000))
    residuals[:, 1000:] += 4.0
    alarms = _monitor(residuals)[0]
    assert alarms[:, 1000:1010].any(axis=1).all()
    # afterwards only the false-alarm rate (without the restart: one alarm per grace period)
    assert alarms[:, 1010:].mean() * 1000 <= 1.0


def test_gate_picks_the_level_only_where_a_level_forecasts_well():
    rng = np.random.default_rng(17)
    noise = rng.standard_normal((10, 2000))
    gate_white = _monitor(noise)[4][:, 500:]
    walk = np.cumsum(rng.standard_normal((10, 2000)), axis=1)  # a random walk forecast by its last value
    gate_walk = _monitor(np.diff(walk, axis=1, prepend=0.0), walk)[4][:, 500:]
    assert gate_white.mean() > 0.99 and gate_white.min() > 0.5 and gate_walk.max() == 0.0


def test_no_second_alarm_inside_grace_period():
    """A persistent residual shift on a random walk (where the detector judges the forecast's
    residual, gate 0): the statistic keeps growing during the grace period, and alarms are spaced
    by more than it."""
    rng = np.random.default_rng(14)
    residuals = rng.standard_normal((50, 3000))
    residuals[:, 1000:] += 4.0
    values = np.cumsum(rng.standard_normal((50, 3000)), axis=1) * 10.0
    alarms = _monitor(residuals, values)[0]
    fired = 0
    for row in alarms:
        index = np.flatnonzero(row)
        fired += len(index)
        assert np.all(np.diff(index) > CONFIG.grace_period_steps)
    assert fired > 50  # the detector did fire repeatedly, so the spacing check is meaningful


def test_threshold_follows_volatility_ratio():
    rng = np.random.default_rng(15)
    residuals = np.concatenate([rng.standard_normal((20, 3000)), 3.0 * rng.standard_normal((20, 3000))], axis=1)
    _, thresholds, sigmas, _, _ = _monitor(residuals)
    threshold_ratio = thresholds[:, -500:].mean() / thresholds[:, 2500:3000].mean()
    volatility_ratio = sigmas[:, -500:].mean() / sigmas[:, 2500:3000].mean()
    assert threshold_ratio == pytest.approx(volatility_ratio, rel=0.10)
    assert volatility_ratio == pytest.approx(3.0, rel=0.10)


def test_threshold_positive_and_finite_for_extreme_residuals():
    residuals = np.array([[0.0] * 300 + [1e100, -1e100, 0.0, 1e-300] * 10])
    _, thresholds, sigmas, kurtosis, _ = _monitor(residuals)
    assert np.all(np.isfinite(thresholds)) and np.all(thresholds > 0)
    assert np.all(np.isfinite(sigmas)) and np.all(np.isfinite(kurtosis))


def test_scales_recover_after_a_constant_stretch():
    """A constant stretch decays the robust scales towards 0; when the signal moves again they
    recover (the clip is floored by the fast σ), so the detector is not stuck on ±SCORE_CLIP."""
    rng = np.random.default_rng(18)
    residuals = np.concatenate([rng.standard_normal(400), np.zeros(3000), rng.standard_normal(1500)])[None]
    _, _, sigmas, _, _ = _monitor(residuals)
    assert sigmas[0, -1] == pytest.approx(1.0, rel=0.25)


scores = st.floats(-1e6, 1e6)
positive = st.floats(1e-6, 1e6)


@given(st.floats(0, 1e6), st.floats(0, 1e6), scores, scores, positive, st.floats(0, 3))
def test_cusum_statistic_is_monotone_in_the_score(upper, lower, z1, z2, sigma, k):
    """G⁺ never falls and G⁻ never rises as the score grows; both stay ≥ 0; below the threshold
    the update is the textbook recursion."""
    z1, z2 = min(z1, z2), max(z1, z2)
    state = CusumState(jnp.float64(upper), jnp.float64(lower), jnp.int32(0))
    huge = jnp.float64(np.inf)
    a, alarm_a = cusum_step(state, jnp.float64(z1), jnp.float64(sigma), huge, k, 20, jnp.bool_(True))
    b, alarm_b = cusum_step(state, jnp.float64(z2), jnp.float64(sigma), huge, k, 20, jnp.bool_(True))
    assert not alarm_a and not alarm_b
    assert float(a.upper) <= float(b.upper) and float(a.lower) >= float(b.lower)
    assert min(float(a.upper), float(a.lower), float(b.upper), float(b.lower)) >= 0.0
    assert float(b.upper) == pytest.approx(max(0.0, upper + sigma * (z2 - k)), rel=1e-12, abs=1e-12)


@given(st.floats(0, 1e3), st.floats(-SCORE_CLIP, SCORE_CLIP), positive, st.integers(0, 50))
def test_an_alarm_resets_and_starts_the_grace_period(upper, z, sigma, grace_left):
    state = CusumState(jnp.float64(upper), jnp.float64(0.0), jnp.int32(grace_left))
    threshold = jnp.float64(sigma)
    new, alarm = cusum_step(state, jnp.float64(z), jnp.float64(sigma), threshold, 0.5, 20, jnp.bool_(True))
    crossed = max(0.0, upper + sigma * (z - 0.5)) > sigma or max(0.0, -sigma * (z + 0.5)) > sigma
    assert bool(alarm) == (crossed and grace_left == 0)
    if alarm:
        assert float(new.upper) == float(new.lower) == 0.0 and int(new.grace_left) == 20
    else:
        assert int(new.grace_left) == max(grace_left - 1, 0)
    _, forced = cusum_step(state, jnp.float64(z), jnp.float64(sigma), threshold, 0.5, 20, jnp.bool_(False),
                           force=jnp.bool_(True))
    assert bool(forced)


@given(positive, st.floats(0, 1e300))
def test_threshold_positive_and_finite(sigma, kurtosis):
    kurtosis = float(np.clip(kurtosis, 1.5, 1e4))  # the range rolling_kurtosis clamps to
    value = float(adaptive_threshold(CONFIG.cusum_h, jnp.float64(sigma), jnp.float64(kurtosis)))
    assert np.isfinite(value) and value > 0
