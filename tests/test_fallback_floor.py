"""The last-value floor of the fusion (docs/model.md "Fusion and the interval") and the outlier
bound's step scale (docs/model.md "Host checks").

The fused weights are ρ' = (1 − λ) ρ + λ e_N, λ = sigmoid(u), u moved by the transport mixture's
and the last value's errors. They must stay on the simplex, follow the last value after a sudden
move the mixture trails, and leave the mixture alone where it beats the last value.
"""

from __future__ import annotations

import attrs
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from usp import FunctionalPredictor, OutlierRejectedEvent, PredictorConfig, ProcessState
from usp.adapters.clocks import ReplayClock
from usp.domain._fusion import FALLBACK_LOGIT_BOUND, FALLBACK_LOSS_CLIP, fallback_logit_step, floor_weights

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                        kernel_a_order=4)
MS = 1_000_000
T0 = 1_800_000_000_000_000_000
N_INDEX = SMALL.enabled_kernels.index("N")

simplex = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda w: sum(w) > 1e-3).map(
    lambda w: np.asarray(w) / np.sum(w))


@settings(deadline=None, max_examples=60)
@given(simplex, st.floats(-50.0, 50.0), st.data())
def test_floor_weights_stay_on_the_simplex_and_give_the_last_value_at_least_its_share(weights, logit, data):
    index = data.draw(st.integers(0, weights.size - 1))
    floored = np.asarray(floor_weights(jnp.asarray(weights), jnp.float64(logit), index))
    share = 1.0 / (1.0 + np.exp(-logit))
    assert np.all(floored >= 0.0) and abs(floored.sum() - 1.0) < 1e-12
    assert floored[index] >= share - 1e-12
    others = np.delete(np.arange(weights.size), index)
    np.testing.assert_allclose(floored[others], (1.0 - share) * weights[others], rtol=1e-12, atol=1e-15)


# XLA on CPU flushes subnormal numbers to zero, so they are left out of the inputs.
finite = st.floats(-1e6, 1e6, allow_subnormal=False)


@settings(deadline=None, max_examples=60)
@given(st.floats(-FALLBACK_LOGIT_BOUND, FALLBACK_LOGIT_BOUND, allow_subnormal=False), finite, finite,
       st.floats(1e-6, 1e3), st.floats(0.0, 10.0))
def test_the_logit_stays_bounded_and_moves_towards_the_expert_with_the_smaller_error(logit, mixture, last, scale,
                                                                                    rate):
    after = float(fallback_logit_step(jnp.float64(logit), jnp.float64(mixture), jnp.float64(last),
                                      jnp.float64(scale), rate))
    assert -FALLBACK_LOGIT_BOUND <= after <= FALLBACK_LOGIT_BOUND
    assert abs(after - logit) <= rate * FALLBACK_LOSS_CLIP + 1e-9
    if abs(mixture) > abs(last):
        assert after >= logit
    elif abs(mixture) < abs(last):
        assert after <= logit
    else:
        assert after == pytest.approx(logit)


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(SMALL, clock=ReplayClock())


def _run(functional: FunctionalPredictor, series: np.ndarray, history: int = 150):
    """Fit on the first ``history`` values, step through the rest; per step the fused forecast of
    the next value, N's fused weight and the event names."""
    state, _ = functional.fit_history(functional.init_state(), series[:history])
    forecasts, n_weights, events = [], [], []
    for i, value in enumerate(series[history:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + i * MS))
        forecasts.append(result.reference_prediction)
        n_weights.append(result.telemetry.weights[N_INDEX])
        events.append([type(e).__name__ for e in result.telemetry.events])
    return np.asarray(forecasts), np.asarray(n_weights), events


def _mae_ratio(series: np.ndarray, forecasts: np.ndarray, history: int = 150) -> float:
    """MAE of the fused one-step forecasts over the last value's."""
    actual = series[history + 1:]
    return float(np.mean(np.abs(actual - forecasts[:-1])) / np.mean(np.abs(actual - series[history:-1])))


def test_after_a_sudden_drop_to_a_new_level_the_fused_forecast_follows_the_last_value(functional):
    """A fall of 12 σ over three ticks onto a quiet new level (no tick is an outlier): the mixture
    trails it, the floor hands the fused weights to the last value within a few ticks."""
    rng = np.random.default_rng(11)
    before = 100.0 + np.cumsum(rng.standard_normal(400))
    fall = before[-1] - np.array([4.0, 8.0, 12.0])
    after = fall[-1] + 0.05 * rng.standard_normal(40)
    series = np.concatenate([before, fall, after])
    forecasts, n_weights, events = _run(functional, series)
    assert not any("OutlierRejectedEvent" in names for names in events)
    landed = series.size - 150 - after.size  # index (in steps) of the first tick on the new level
    assert np.all(n_weights[landed + 6:] > 0.9), n_weights[landed:landed + 12]
    errors = np.abs(series[150 + landed + 7:] - forecasts[landed + 6:-1])
    assert np.max(errors) < 0.5, errors


def test_where_the_mixture_beats_the_last_value_the_floor_stays_out_of_the_way(functional):
    """Noise around a level: the last value is the worst forecast there (MASE of the mean ≈ 0.71)."""
    series = 5.0 + np.random.default_rng(12).standard_normal(700)
    forecasts, n_weights, _ = _run(functional, series)
    assert np.median(n_weights[200:]) < 0.02
    assert _mae_ratio(series, forecasts) < 0.8


def test_on_a_random_walk_the_fused_forecast_is_as_good_as_the_last_value(functional):
    series = np.cumsum(np.random.default_rng(13).standard_normal(900))
    forecasts, _, _ = _run(functional, series)
    assert _mae_ratio(series, forecasts) < 1.02


def test_a_move_large_against_the_forecast_error_but_ordinary_for_the_series_is_accepted(functional):
    """A trend the kernels forecast to a small fraction of its step: the outlier bound is
    ``sigma_bound`` times the larger of the residual σ and the RMS increment, so a move of a few
    increments is data, while 50 RMS increments is still an outlier."""
    steps = np.arange(600, dtype=np.float64)
    series = 0.5 * steps + 0.002 * np.random.default_rng(14).standard_normal(600)
    state, _ = functional.fit_history(functional.init_state(), series[:150])
    for i, value in enumerate(series[150:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + i * MS))
    sigma = result.telemetry.residual_sigma
    move = 5 * 0.5
    assert move > SMALL.sigma_bound * sigma  # an outlier by the residual σ alone
    stamp = T0 + 10_000 * MS
    _, kept = functional.step(state, ProcessState(result.reference_prediction + move, stamp))
    assert not any(isinstance(e, OutlierRejectedEvent) for e in kept.telemetry.events)
    _, spike = functional.step(state, ProcessState(result.reference_prediction + 50 * 0.5, stamp))
    assert [type(e).__name__ for e in spike.telemetry.events] == ["OutlierRejectedEvent"]


def test_without_the_last_value_kernel_there_is_no_floor():
    config = attrs.evolve(SMALL, enabled_kernels=("A", "D"))
    series = np.cumsum(np.random.default_rng(15).standard_normal(300))
    functional = FunctionalPredictor(config, clock=ReplayClock())
    state, _ = functional.fit_history(functional.init_state(), series[:150])
    for i, value in enumerate(series[150:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + i * MS))
        assert float(state.fallback_logit) == 0.0
    assert sum(result.telemetry.weights) == pytest.approx(1.0, abs=1e-10)


def test_a_re_anchored_level_shift_hands_the_lead_to_the_last_value(functional):
    """The kernels' past is void after a level shift: the floor's log-odds go to the bound, so
    the fused weights sit on N from the re-anchoring tick on. A rejected tick before it leaves
    the log-odds alone (it changes nothing but the outlier streak)."""
    series = np.cumsum(np.random.default_rng(16).standard_normal(400))  # a walk: no emergency
    state, _ = functional.fit_history(functional.init_state(), series[:150])
    for i, value in enumerate(series[150:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + i * MS))
    assert not result.telemetry.emergency_mode and float(state.fallback_logit) < FALLBACK_LOGIT_BOUND
    before = float(state.fallback_logit)
    jump = result.reference_prediction + 200 * max(result.telemetry.residual_sigma, float(np.sqrt(state.incr_var)))
    names = []
    for k in range(SMALL.level_shift_confirm_steps):
        state, result = functional.step(state, ProcessState(jump + 0.1 * k, T0 + (1000 + k) * MS))
        names.append([type(e).__name__ for e in result.telemetry.events])
        if k < SMALL.level_shift_confirm_steps - 1:
            assert names[-1] == ["OutlierRejectedEvent"] and float(state.fallback_logit) == before
    assert "RegimeChangedEvent" in names[-1]
    assert float(state.fallback_logit) == FALLBACK_LOGIT_BOUND
    assert result.telemetry.weights[N_INDEX] > 0.99
