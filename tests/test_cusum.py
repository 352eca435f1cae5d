"""CUSUM acceptance on the production residual monitor, with default config.

Reference: a two-sided CUSUM with known σ = 1 and (h, k) = (5, 0.5) has, by Siegmund's
approximation, ARL₀ ≈ 2·(e^{2k(h+1.166)} − 2k(h+1.166) − 1)/(2k²)/2 ≈ 469 steps, i.e. a false
alarm rate ≈ 2.1e-3 per step (≈ 2.05e-3 with the 20-step grace period, as simulated below).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import PredictorConfig
from usp.domain._cusum import monitor_init, monitor_step

CONFIG = PredictorConfig()
WARMUP = CONFIG.wtmm_buffer_size
STREAMS, LENGTH = 200, 5000
EXPECTED_GAUSSIAN_RATE = 1.0 / 469.0


def _monitor(residuals: np.ndarray, h: float = CONFIG.cusum_h):
    """Alarms, thresholds and the detector σ for a batch of residual streams [S, T]."""

    def one(stream):
        def body(state, e):
            state, reading = monitor_step(state, e, alpha=CONFIG.volatility_alpha, h=h, k=CONFIG.cusum_k,
                                          grace_period=CONFIG.grace_period_steps, warmup=WARMUP)
            return state, (reading.alarm, reading.threshold, reading.sigma_detector)

        return jax.lax.scan(body, monitor_init(CONFIG.kurtosis_window), stream)[1]

    alarms, thresholds, sigmas = jax.jit(jax.vmap(one))(jnp.asarray(residuals))
    return np.asarray(alarms), np.asarray(thresholds), np.asarray(sigmas)


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


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((STREAMS, LENGTH))


@pytest.fixture(scope="module")
def student_t3() -> np.ndarray:
    return np.random.default_rng(12).standard_t(3, (STREAMS, LENGTH)) / np.sqrt(3.0)  # unit variance


def test_gaussian_false_alarm_rate_matches_classical_cusum(gaussian):
    measured = _monitor(gaussian)[0][:, 2 * WARMUP:].mean()
    classical = _classical(gaussian, CONFIG.cusum_h, CONFIG.cusum_k, CONFIG.grace_period_steps)[:, 2 * WARMUP:].mean()
    assert classical == pytest.approx(EXPECTED_GAUSSIAN_RATE, rel=0.15)
    assert measured == pytest.approx(classical, rel=0.25), (measured, classical)


def test_kurtosis_adaptive_threshold_contains_heavy_tails(gaussian, student_t3):
    gaussian_rate = _monitor(gaussian)[0][:, 2 * WARMUP:].mean()
    heavy_rate = _monitor(student_t3)[0][:, 2 * WARMUP:].mean()
    assert heavy_rate <= 1.5 * gaussian_rate, (heavy_rate, gaussian_rate)
    # negative control: a fixed threshold (no kurtosis factor, σ known) roughly doubles the rate
    fixed = _classical(student_t3, CONFIG.cusum_h, CONFIG.cusum_k, CONFIG.grace_period_steps)[:, 2 * WARMUP:].mean()
    classical = _classical(gaussian, CONFIG.cusum_h, CONFIG.cusum_k, CONFIG.grace_period_steps)[:, 2 * WARMUP:].mean()
    assert 1.5 < fixed / classical < 3.0


def test_three_sigma_shift_detected_within_30_steps():
    rng = np.random.default_rng(13)
    shift_at = 600
    residuals = rng.standard_normal((STREAMS, shift_at + 60))
    residuals[:, shift_at:] += 3.0
    alarms = _monitor(residuals)[0]
    detected = alarms[:, shift_at:shift_at + 30].any(axis=1)
    assert detected.mean() >= 0.9, detected.mean()


def test_no_second_alarm_inside_grace_period():
    rng = np.random.default_rng(14)
    residuals = rng.standard_normal((50, 3000))
    residuals[:, 1000:] += 4.0  # persistent shift: the statistic keeps growing during the grace period
    alarms = _monitor(residuals)[0]
    fired = 0
    for row in alarms:
        index = np.flatnonzero(row)
        fired += len(index)
        assert np.all(np.diff(index) > CONFIG.grace_period_steps)
    assert fired > 50  # the detector did fire repeatedly, so the spacing check is meaningful


def test_threshold_follows_volatility_ratio():
    rng = np.random.default_rng(15)
    residuals = np.concatenate([rng.standard_normal((20, 3000)), 3.0 * rng.standard_normal((20, 3000))], axis=1)
    _, thresholds, sigmas = _monitor(residuals)
    threshold_ratio = thresholds[:, -500:].mean() / thresholds[:, 2500:3000].mean()
    volatility_ratio = sigmas[:, -500:].mean() / sigmas[:, 2500:3000].mean()
    assert threshold_ratio == pytest.approx(volatility_ratio, rel=0.10)
    assert volatility_ratio == pytest.approx(3.0, rel=0.10)


def test_threshold_positive_and_finite_for_extreme_residuals():
    residuals = np.array([[0.0] * 300 + [1e100, -1e100, 0.0, 1e-300] * 10])
    _, thresholds, _ = _monitor(residuals)
    assert np.all(np.isfinite(thresholds)) and np.all(thresholds > 0)
