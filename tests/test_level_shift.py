"""Outlier rejection and level shifts (model.md §2.1, docs/model.md "Host checks").

A tick beyond ``sigma_bound``·σ of the forecast is rejected and changes nothing but the outlier
streak; the ``level_shift_confirm_steps``-th consecutive one on the same side is a level shift:
accepted, the state re-anchored at the new level, a regime change reported.
"""

from __future__ import annotations

import math

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usp import EventCode, FunctionalPredictor, OutlierRejectedEvent, PredictorConfig, ProcessState, RegimeChangedEvent
from usp.adapters.clocks import ReplayClock
from usp.domain._pytree import replace

from .helpers import random_walk

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                        kernel_a_order=4, enabled_kernels=("A", "D"))
MS = 1_000_000
T0 = 1_800_000_000_000_000_000
JUMP = 50.0  # in residual σ


@pytest.fixture(scope="module", params=["A+D", "default kernels"])
def functional(request) -> FunctionalPredictor:
    config = SMALL if request.param == "A+D" else attrs.evolve(SMALL, enabled_kernels=PredictorConfig().enabled_kernels)
    return FunctionalPredictor(config, clock=ReplayClock())


def _warm(functional: FunctionalPredictor, series: np.ndarray):
    """A state past calibration and the outlier warm-up, and the result of its last tick."""
    state, _ = functional.fit_history(functional.init_state(), series[:100])
    for i, value in enumerate(series[100:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + i * MS))
    return state, result


@pytest.fixture(scope="module", params=["noise", "walk"])
def warm(request, functional):
    rng = np.random.default_rng(5)
    series = rng.standard_normal(300) if request.param == "noise" else random_walk(300, seed=5)
    state, result = _warm(functional, series)
    return state, result, series


def _leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]


def _identical(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _streak(state) -> int:
    return int(state.monitor.exceed_run)


def _without_streak(state):
    return replace(state, monitor=replace(state.monitor, exceed_run=jnp.int32(0)))


def _names(result) -> list[str]:
    return [type(event).__name__ for event in result.telemetry.events]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_single_spike_is_rejected_and_changes_only_the_streak(functional, warm, sign):
    state, last, _ = warm
    stamp = T0 + 10_000 * MS
    spike = last.reference_prediction + sign * JUMP * last.telemetry.residual_sigma
    after, rejected = functional.step(state, ProcessState(spike, stamp))
    assert _names(rejected) == ["OutlierRejectedEvent"]
    assert rejected.reference_prediction == last.reference_prediction
    assert _streak(state) == 0 and _streak(after) == int(sign)
    assert _identical(_without_streak(after), state)
    # the next normal tick resets the streak, and everything is as if the spike never came
    normal = last.reference_prediction + 0.3 * last.telemetry.residual_sigma
    resumed, result = functional.step(after, ProcessState(normal, stamp + MS))
    untouched, expected = functional.step(state, ProcessState(normal, stamp + MS))
    assert _streak(resumed) == 0 and _identical(resumed, untouched)
    assert result == expected


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_permanent_level_shift_is_followed_within_10_ticks(functional, warm, sign):
    state, last, series = warm
    sigma = last.telemetry.residual_sigma
    jump = sign * JUMP * sigma
    rng = np.random.default_rng(7)
    if np.ptp(series) > 20:  # random walk: it keeps walking from the new level
        path = series[-1] + jump + np.cumsum(rng.standard_normal(30))
    else:
        path = jump + rng.standard_normal(30)
    events, errors = [], []
    for i, value in enumerate(path):
        state, result = functional.step(state, ProcessState(float(value), T0 + (10_000 + i) * MS))
        events.append(_names(result))
        if i + 1 < path.size:
            errors.append(abs(result.reference_prediction - path[i + 1]) / sigma)
    confirm = SMALL.level_shift_confirm_steps
    assert events[:confirm - 1] == [["OutlierRejectedEvent"]] * (confirm - 1)
    assert "RegimeChangedEvent" in events[confirm - 1] and "OutlierRejectedEvent" not in events[confirm - 1]
    assert not any("OutlierRejectedEvent" in names for names in events[confirm:])
    # followed: the re-anchoring tick (the 3rd) moves the forecast most of the way, and from the
    # next tick on, forecasts are within a few σ
    assert errors[confirm - 1] < JUMP / 4, errors[:10]
    assert max(errors[confirm:10]) < 5.0, errors[:10]
    assert _streak(state) == 0


def test_alternating_spikes_never_re_anchor(functional, warm):
    """Exceedances on alternating sides are corrupt ticks, not a new level: all rejected."""
    state, last, _ = warm
    sigma = last.telemetry.residual_sigma
    for i in range(8):
        sign = 1.0 if i % 2 == 0 else -1.0
        before = state
        state, result = functional.step(state, ProcessState(last.reference_prediction + sign * JUMP * sigma,
                                                            T0 + (20_000 + i) * MS))
        assert _names(result) == ["OutlierRejectedEvent"] and _streak(state) == int(sign)
        assert _identical(_without_streak(state), _without_streak(before))


def test_confirmation_steps_come_from_the_config():
    config = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                             kernel_a_order=4, enabled_kernels=("A", "D"), level_shift_confirm_steps=5)
    functional = FunctionalPredictor(config, clock=ReplayClock())
    state, last = _warm(functional, np.random.default_rng(8).standard_normal(300))
    level = last.reference_prediction + JUMP * last.telemetry.residual_sigma
    kinds = []
    for i in range(6):
        state, result = functional.step(state, ProcessState(level + 0.1 * i, T0 + (30_000 + i) * MS))
        kinds.append(_names(result))
    assert kinds[:4] == [["OutlierRejectedEvent"]] * 4
    assert "RegimeChangedEvent" in kinds[4]
    assert not any(isinstance(e, OutlierRejectedEvent) for e in result.telemetry.events)


def test_a_streak_interrupted_by_a_non_finite_tick_carries_on(functional, warm):
    """Non-finite and out-of-order ticks are not observations: they leave the streak as it is."""
    state, last, _ = warm
    spike = last.reference_prediction + JUMP * last.telemetry.residual_sigma
    state, _ = functional.step(state, ProcessState(spike, T0 + 40_000 * MS))
    held, result = functional.step(state, ProcessState(math.nan, T0 + 40_001 * MS))
    assert _identical(held, state) and _streak(held) == 1
    late, result = functional.step(held, ProcessState(spike, T0 + 50 * MS))  # before the last accepted tick
    assert _identical(late, held)
    assert any(e.code & EventCode.REJECTED_OUT_OF_ORDER for e in result.telemetry.events)
    state, result = functional.step(late, ProcessState(spike, T0 + 40_002 * MS))
    assert _streak(state) == 2
    state, result = functional.step(state, ProcessState(spike, T0 + 40_003 * MS))
    assert any(isinstance(e, RegimeChangedEvent) for e in result.telemetry.events) and _streak(state) == 0


values = st.one_of(st.floats(-3, 3), st.floats(20, 1e6), st.floats(-1e6, -20), st.just(math.nan),
                   st.floats(allow_nan=True, allow_infinity=True))


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(values, min_size=1, max_size=12))
def test_a_rejected_tick_changes_nothing_but_the_streak(functional, warm, offsets):
    """Values are offsets in residual σ from the last forecast (huge ones are outliers)."""
    state, last, _ = warm
    sigma = last.telemetry.residual_sigma
    for i, offset in enumerate(offsets):
        before = state
        value = last.reference_prediction + offset * sigma if math.isfinite(offset) else offset
        state, result = functional.step(state, ProcessState(value, T0 + (50_000 + i) * MS))
        bits = sum(int(e.code) for e in result.telemetry.events)
        if bits & EventCode.rejected():
            assert _identical(_without_streak(state), _without_streak(before))
            if bits & EventCode.REJECTED_OUTLIER:
                side = 1 if value > before.prediction else -1
                expected = _streak(before) + side if np.sign(_streak(before)) == side else side
                assert _streak(state) == expected and abs(expected) < SMALL.level_shift_confirm_steps
            else:
                assert _streak(state) == _streak(before)
        else:
            assert _streak(state) == 0
