"""Predictor behaviour: robustness to bad input, host checks, determinism, batching."""

from __future__ import annotations

import datetime as dt
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import (
    ColumnarBatch,
    DomainError,
    EventCode,
    FrequencyWarning,
    FunctionalPredictor,
    MagnitudeRejectedEvent,
    NonFiniteRejectedEvent,
    NormalOperationRestoredEvent,
    OperatingMode,
    OutlierRejectedEvent,
    PredictorConfig,
    ProcessState,
    StaleDataEvent,
    StalenessWarning,
    TimestampError,
    UniversalPredictor,
)
from usp.adapters.clocks import ManualClock, ReplayClock
from usp.application import decode_events
from usp.application.batching import read_piece
from usp.domain._core import Out
from usp.domain._pytree import replace
from usp.plugins.manager import build_plugin_manager

from .helpers import random_walk
from .plugins import martingale_kernel

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32, kernel_a_order=4,
                        enabled_kernels=("A", "D", "M"))
MS = 1_000_000
T0 = 1_800_000_000_000_000_000


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(SMALL, clock=ReplayClock(),
                               plugin_manager=build_plugin_manager([martingale_kernel]))


@pytest.fixture(scope="module")
def warm_state(functional):
    state, _ = functional.fit_history(functional.init_state(), random_walk(200, seed=1))
    return state


def _leaves(state):
    return jax.tree_util.tree_leaves(state)


def _identical(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in
               zip(_leaves(a), _leaves(b), strict=True))


def _without_streak(state):
    """``state`` with the outlier streak at 0: the one field a rejected outlier may change."""
    return replace(state, monitor=replace(state.monitor, exceed_run=jnp.int32(0)))


def _all_finite(state) -> bool:
    return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in _leaves(state)
               if np.issubdtype(np.asarray(leaf).dtype, np.floating))


def _predictor(clock=None) -> UniversalPredictor:
    return UniversalPredictor(SMALL, clock=clock or ReplayClock(),
                              plugin_manager=build_plugin_manager([martingale_kernel]))


anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 1e101]),
                     st.floats(-10, 10))


@given(st.lists(anything, min_size=1, max_size=40))
def test_arbitrary_floats_never_crash_nor_poison_the_state(functional, warm_state, values):
    state = warm_state
    for i, value in enumerate(values):
        before = state
        state, result = functional.step(state, ProcessState(value, T0 + i * MS))
        bits = sum(int(e.code) for e in result.telemetry.events)
        if bits & EventCode.REJECTED_OUTLIER:  # only the outlier streak moves
            assert _identical(_without_streak(before), _without_streak(state))
        elif bits & EventCode.rejected():
            assert _identical(before, state)
        assert math.isfinite(result.reference_prediction)
    assert _all_finite(state)
    weights = np.exp(np.asarray(state.log_weights))
    assert abs(weights.sum() - 1.0) < 1e-10 and np.all(weights >= 0)


def test_rejected_tick_is_bit_identical_and_returns_last_valid_result(functional, warm_state):
    state, good = functional.step(warm_state, ProcessState(0.5, T0))
    for bad, kind in ((math.nan, NonFiniteRejectedEvent), (math.inf, NonFiniteRejectedEvent),
                      (-math.inf, NonFiniteRejectedEvent), (1e200, MagnitudeRejectedEvent),
                      (-1e101, MagnitudeRejectedEvent), (np.finfo(np.float64).max, MagnitudeRejectedEvent)):
        after, result = functional.step(state, ProcessState(bad, T0 + MS))
        assert _identical(state, after)
        assert result.reference_prediction == good.reference_prediction
        assert [type(e) for e in result.telemetry.events] == [kind]


def test_magnitude_limit_is_its_own_rejection_event(functional, caplog):
    """|y| ≤ 1e100 is admissible (here on a cold state, where no outlier bound applies yet); beyond
    it, finite values are rejected as REJECTED_MAGNITUDE, not as non-finite."""
    assert EventCode.REJECTED_MAGNITUDE in EventCode.rejected()
    assert decode_events(int(EventCode.REJECTED_MAGNITUDE)) == (
        MagnitudeRejectedEvent(EventCode.REJECTED_MAGNITUDE, MagnitudeRejectedEvent.__doc__.strip()),)
    cold = functional.init_state()
    _, at_limit = functional.step(cold, ProcessState(-1e100, T0))
    assert not any(e.code & EventCode.rejected() for e in at_limit.telemetry.events)
    after, beyond = functional.step(cold, ProcessState(np.nextafter(1e100, math.inf), T0))
    assert [e.name for e in beyond.telemetry.events] == ["MagnitudeRejectedEvent"] and _identical(cold, after)
    predictor = _predictor()
    with caplog.at_level("ERROR", logger="usp.predictor"):
        result = predictor.step(ProcessState(1e150, T0))
    assert isinstance(result.telemetry.events[0], MagnitudeRejectedEvent)
    assert "REJECTED_MAGNITUDE" in caplog.text and int(predictor.state.count) == 0


def test_catastrophic_outlier_is_rejected_and_weights_do_not_move(functional, warm_state):
    state = warm_state
    for i in range(150):  # warm the residual monitor past wtmm_buffer_size residuals
        state, result = functional.step(state, ProcessState(float(np.sin(i / 5.0)), T0 + i * MS))
    # the bound's scale: the larger of the residual σ and the RMS increment (docs/model.md)
    sigma = max(result.telemetry.residual_sigma, float(np.sqrt(state.incr_var)))
    spike = result.reference_prediction + 25 * sigma
    after, rejected = functional.step(state, ProcessState(spike, T0 + 200 * MS))
    assert [type(e) for e in rejected.telemetry.events] == [OutlierRejectedEvent]
    assert rejected.telemetry.weights == result.telemetry.weights
    assert _identical(_without_streak(state), _without_streak(after))
    assert int(state.monitor.exceed_run) == 0 and int(after.monitor.exceed_run) == 1
    within = result.reference_prediction + 15 * sigma  # inside the 20σ bound: accepted
    _, accepted = functional.step(state, ProcessState(within, T0 + 200 * MS))
    assert not any(isinstance(e, OutlierRejectedEvent) for e in accepted.telemetry.events)


def test_validate_domain_matches_spec_rule():
    assert ProcessState(3.0, T0).validate_domain(20.0, 0.2)
    assert not ProcessState(5.0, T0).validate_domain(20.0, 0.2)
    assert not ProcessState(math.nan, T0).validate_domain(20.0, 1.0)
    assert ProcessState(105.0, T0).validate_domain(20.0, 1.0, center=100.0)


def test_staleness_enters_degraded_mode_and_recovers_only_on_fresh_ticks():
    clock = ManualClock()
    predictor = _predictor(clock)
    predictor.fit_history(random_walk(200, seed=2))
    ttl = SMALL.staleness_ttl_ns
    clock.set(T0)
    result = predictor.step(ProcessState(0.1, T0))
    assert not result.telemetry.degraded_inference_mode
    clock.set(T0 + 2 * ttl)
    with pytest.warns(StalenessWarning):
        stale = predictor.step(ProcessState(0.2, T0 + MS))  # arrives 2 TTL late
    assert stale.telemetry.degraded_inference_mode
    assert any(isinstance(e, StaleDataEvent) for e in stale.telemetry.events)
    assert stale.operating_mode == OperatingMode.DIAGNOSTIC
    frozen = stale.telemetry.weights
    # late but within the TTL (0.9 TTL > 0.8 TTL): still degraded, weights still frozen
    for k in range(3):
        stamp = T0 + (10 + k) * MS
        clock.set(stamp + int(0.9 * ttl))
        late = predictor.step(ProcessState(0.2 + k, stamp))
        assert late.telemetry.degraded_inference_mode and late.telemetry.weights == frozen
    # fresh ticks: recovery after degraded_recovery_min_steps, with the restored event
    events = []
    for k in range(SMALL.degraded_recovery_min_steps):
        stamp = T0 + (20 + k) * MS
        clock.set(stamp + int(0.1 * ttl))
        fresh = predictor.step(ProcessState(0.3, stamp))
        events += fresh.telemetry.events
    assert not fresh.telemetry.degraded_inference_mode
    assert any(isinstance(e, NormalOperationRestoredEvent) for e in events)


def test_sparse_arrivals_warn_and_freeze_the_weights():
    predictor = _predictor()
    predictor.fit_history(random_walk(200, seed=3))
    before = predictor.step(ProcessState(0.0, T0)).telemetry.weights
    with pytest.warns(FrequencyWarning):
        sparse = predictor.step(ProcessState(5.0, T0 + 2 * SMALL.besov_nyquist_interval_ns))
    assert sparse.telemetry.weights == before
    assert any(e.code & EventCode.SPARSE_ARRIVAL for e in sparse.telemetry.events)


def test_frozen_signal_alarm_and_release(functional, warm_state):
    state, codes = warm_state, 0
    for i in range(SMALL.frozen_signal_steps + 2):
        state, result = functional.step(state, ProcessState(1.25, T0 + i * MS))
        codes |= sum(int(e.code) for e in result.telemetry.events)
    assert codes & EventCode.FROZEN_SIGNAL and result.telemetry.frozen_signal
    assert result.telemetry.degraded_inference_mode
    frozen_weights = result.telemetry.weights
    rng = np.random.default_rng(0)
    released = False
    for i in range(10):
        state, result = functional.step(state, ProcessState(1.25 + 3 * rng.standard_normal(), T0 + (20 + i) * MS))
        if any(e.code & EventCode.FROZEN_SIGNAL_RELEASED for e in result.telemetry.events):
            released = True
            assert i + 1 >= SMALL.frozen_signal_release_steps
            break
        assert result.telemetry.weights == frozen_weights
    assert released and not result.telemetry.frozen_signal


def test_out_of_order_ticks_are_rejected(functional, warm_state):
    state, _ = functional.step(warm_state, ProcessState(0.0, T0 + 10 * MS))
    after, result = functional.step(state, ProcessState(0.1, T0 + 5 * MS))
    assert _identical(state, after)
    assert any(e.code & EventCode.REJECTED_OUT_OF_ORDER for e in result.telemetry.events)


def test_same_inputs_give_bit_identical_outputs():
    series = random_walk(300, seed=4)
    runs = []
    for _ in range(2):
        predictor = _predictor()
        predictor.fit_history(series[:100])
        runs.append([predictor.step(ProcessState(v, T0 + i * MS)) for i, v in enumerate(series[100:])])
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def chunked() -> FunctionalPredictor:
    """Chunks of 2: a batch of 5 runs two mapped chunks and a remainder of one."""
    return FunctionalPredictor(SMALL, clock=ReplayClock(), batch_chunk=2,
                               plugin_manager=build_plugin_manager([martingale_kernel]))


@pytest.mark.parametrize("which", ["plain", "chunked"])
def test_step_batch_equals_single_steps(functional, chunked, which):
    functional = chunked if which == "chunked" else functional
    n_assets, ticks = 5, 90
    series = np.stack([random_walk(ticks, seed=10 + a) for a in range(n_assets)])
    series[2, 40] = math.nan  # one rejected tick inside the batch
    batched = functional.init_state(n_assets)
    singles = [jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], batched) for a in range(n_assets)]
    for t in range(ticks):
        stamps = T0 + t * MS + np.arange(n_assets)
        if t % 2:
            obs = [ProcessState(series[a, t], int(stamps[a])) for a in range(n_assets)]
        else:
            obs = ColumnarBatch(series[:, t], stamps)
        batched, out = functional.step_batch(batched, obs)
        for a in range(n_assets):
            singles[a], result = functional.step(singles[a], ProcessState(series[a, t], int(stamps[a])))
            assert abs(out.reference_prediction[a] - result.reference_prediction) <= 1e-12
            assert abs(out.confidence_upper[a] - result.confidence_upper) <= 1e-12
    for a in range(n_assets):
        for x, y in zip(_leaves(singles[a]), _leaves(jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], batched)),
                        strict=True):
            np.testing.assert_allclose(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                       rtol=0, atol=1e-12)
    assert out[0].telemetry.kernel_names == ("A", "D", "M")


def test_step_batch_reads_only_the_due_assets_of_a_desynchronised_batch(functional):
    """Rejected ticks put assets' refresh ticks out of step. step_batch then reads just the due
    rows, gathered in pieces of read_piece rows, and still equals stepping each asset alone."""
    n_assets, refresh = 12, SMALL.wtmm_refresh_steps
    ticks = SMALL.wtmm_buffer_size + 4 * refresh + 8
    piece = read_piece(n_assets, refresh)
    assert piece == 8 < n_assets
    series = np.stack([random_walk(ticks, seed=60 + a) for a in range(n_assets)])
    for a in range(n_assets):
        series[a, 10:10 + a % refresh] = math.nan  # asset a lags a % R accepted ticks
    batched = functional.init_state(n_assets)
    functional.warm_up(batched)
    pieces = functional._read_rows._cache_size()
    singles = [jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], batched) for a in range(n_assets)]
    gathered = 0
    for t in range(ticks):
        stamps = np.full(n_assets, T0 + t * MS)
        due = functional.refresh_due(batched)
        gathered += 0 < due.sum() <= n_assets // 2
        batched, out = functional.step_batch(batched, ColumnarBatch(series[:, t], stamps))
        for a in range(n_assets):
            singles[a], result = functional.step(singles[a], ProcessState(series[a, t], int(stamps[a])))
            assert out[a].telemetry.holder_exponent_raw == pytest.approx(result.telemetry.holder_exponent_raw,
                                                                         abs=1e-12)
    assert gathered >= 4 * refresh  # after the first fills, every tick had a few assets due
    assert functional._read_rows._cache_size() == pieces  # one compiled piece size, from warm_up
    for a in range(n_assets):
        for x, y in zip(_leaves(singles[a]), _leaves(jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], batched)),
                        strict=True):
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=1e-12)


def test_fit_history_paths_agree_with_host_driven_refreshes(functional, chunked):
    """The scans pick refresh ticks inside the graph (a lax.cond per asset, or per chunk for a
    batch); the stepping predictors pick them on the host. All three give the same states, also
    when a rejected tick puts one asset's refresh ticks out of step with the others."""
    n_assets, ticks = 3, SMALL.wtmm_buffer_size + 5 * SMALL.wtmm_refresh_steps + 3
    series = np.stack([random_walk(ticks, seed=30 + a) for a in range(n_assets)])
    series[1, 20] = math.nan
    cold = chunked.init_state(n_assets)
    batched, _ = chunked.fit_history(cold, series)
    for a in range(n_assets):
        start = jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], cold)
        single, _ = functional.fit_history(start, series[a])
        stepped = start
        for t in range(ticks):
            stepped, _ = functional.step(stepped, ProcessState(series[a, t], T0 + t * MS))
        row = jax.tree_util.tree_map(lambda leaf, a=a: leaf[a], batched)
        for x, y in zip(_leaves(single), _leaves(row), strict=True):
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(single.sia), np.asarray(stepped.sia), rtol=0, atol=1e-12)
        assert float(single.holder) == pytest.approx(float(stepped.holder), abs=1e-12)
        assert int(single.sia_age) == int(stepped.sia_age) and int(single.count) == ticks - (a == 1)


def test_no_retrace_for_repeated_batch_size_or_steps(functional):
    states = functional.init_state(7)
    states, _ = functional.step_batch(states, ColumnarBatch(np.zeros(7), np.full(7, T0)))
    compiled = functional._step_batch._cache_size()
    for t in range(1, 5):  # list and columnar input, same batch size: no new compilation
        obs = ([ProcessState(float(t), T0 + t * MS)] * 7 if t % 2 else
               ColumnarBatch(np.full(7, float(t)), np.full(7, T0 + t * MS)))
        states, _ = functional.step_batch(states, obs)
    assert functional._step_batch._cache_size() == compiled
    state, _ = functional.step(functional.init_state(), ProcessState(0.0, T0))
    compiled = functional._step._cache_size()
    for t in range(1, 5):
        state, _ = functional.step(state, ProcessState(float(t), T0 + t * MS))
    assert functional._step._cache_size() == compiled


def test_warm_up_compiles_everything_a_stream_needs():
    """After warm_up, ticks through calibration and several roughness refreshes compile nothing."""
    config = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                             kernel_a_order=4, enabled_kernels=("A",), seed=11)  # a config no other test uses
    fp = FunctionalPredictor(config, clock=ReplayClock())
    states, state = fp.init_state(3), fp.init_state()
    fp.warm_up(states)
    fp.warm_up(state)
    compiled = [f._cache_size() for f in (fp._step_batch, fp._read_batch, fp._step, fp._read)]
    assert compiled == [1, 1, 1, 1]
    for t in range(config.wtmm_buffer_size + 3 * config.wtmm_refresh_steps):
        states, _ = fp.step_batch(states, ColumnarBatch(np.full(3, float(t % 7)), np.full(3, T0 + t * MS)))
        state, _ = fp.step(state, ProcessState(float(t % 5), T0 + t * MS))
    assert [f._cache_size() for f in (fp._step_batch, fp._read_batch, fp._step, fp._read)] == compiled
    assert int(state.count) > config.wtmm_buffer_size and int(state.sia_age) < config.wtmm_refresh_steps


def test_a_stateful_predictor_compiles_nothing_after_construction():
    """``UniversalPredictor`` warms up the packed step it ticks with: ticks through calibration and
    several refreshes, state reads and a state write compile nothing."""
    config = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                             kernel_a_order=4, enabled_kernels=("A",), seed=12)  # a config no other test uses
    predictor = UniversalPredictor(config, clock=ReplayClock())
    fp = predictor.functional
    jitted = (fp._step_packed, fp._read_packed, fp._pack, fp._unpack)
    compiled = [f._cache_size() for f in jitted]
    assert compiled == [1, 1, 1, 1]
    for t in range(config.wtmm_buffer_size + 3 * config.wtmm_refresh_steps):
        predictor.step(ProcessState(float(t % 5), T0 + t * MS))
        if t % 20 == 0:
            predictor.state = predictor.state
    assert [f._cache_size() for f in jitted] == compiled
    assert int(predictor.state.count) > config.wtmm_buffer_size


def test_naive_datetime_and_bad_shapes_are_clear_errors(functional):
    state = functional.init_state()
    with pytest.raises(TimestampError, match="naive"):
        functional.step(state, ProcessState(1.0, dt.datetime(2026, 1, 1, 12, 0)))
    with pytest.raises(TimestampError):
        functional.step(state, ProcessState(1.0, "2026-01-01"))
    with pytest.raises(DomainError, match="shape"):
        functional.step(state, ProcessState(np.ones(3), T0))
    with pytest.raises(DomainError):
        functional.step(state, ProcessState("abc", T0))
    with pytest.raises(DomainError, match="observations"):
        functional.step_batch(functional.init_state(3), ColumnarBatch(np.ones(2), np.full(2, T0)))
    aware = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    _, result = functional.step(state, ProcessState(1.0, aware))
    assert result.telemetry.events == () or all(e.timestamp_ns == 1767261600 * 10**9
                                                for e in result.telemetry.events)


def test_fit_history_requires_the_buffer_and_reports_convergence():
    predictor = _predictor()
    with pytest.raises(ValueError, match="Insufficient history"):
        predictor.fit_history(np.zeros(SMALL.wtmm_buffer_size - 1))
    with pytest.raises(ValueError, match="NaN"):
        predictor.fit_history(np.r_[np.zeros(100), math.nan])
    assert predictor.fit_history(random_walk(400, seed=5)) is True
    result = predictor.step(ProcessState(0.0, T0))
    assert result.mode == "inference"


def test_calibration_mode_until_the_buffer_is_full():
    predictor = _predictor()
    modes = [predictor.step(ProcessState(float(v), T0 + i * MS)).operating_mode
             for i, v in enumerate(random_walk(SMALL.wtmm_buffer_size + 2, seed=6))]
    assert set(modes[: SMALL.wtmm_buffer_size - 1]) == {OperatingMode.CALIBRATION}
    assert modes[-1] != OperatingMode.CALIBRATION


def test_interval_is_calibrated_on_heavy_tails():
    series = np.cumsum(np.random.default_rng(7).standard_t(4, 3000))
    functional = FunctionalPredictor(PredictorConfig(), clock=ReplayClock())
    _, outputs = functional._scan(functional.init_state(), series)
    outputs = np.asarray(outputs)[500:-1]
    inside = (series[501:] >= outputs[:, Out.LOWER]) & (series[501:] <= outputs[:, Out.UPPER])
    assert abs(inside.mean() - PredictorConfig().confidence_level) < 0.02


def test_warnings_are_opt_out():
    predictor = _predictor()
    predictor.fit_history(random_walk(200, seed=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrequencyWarning)
        predictor.step(ProcessState(0.0, T0))
        predictor.step(ProcessState(0.0, T0 + 10 * SMALL.besov_nyquist_interval_ns))
