"""The identification engine inside the predictor: the circuit breaker on random walks and rough
paths, the amortised refresh, the sampling-density guard and the spectral telemetry."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import (
    ColumnarBatch,
    CriticalSingularityEvent,
    EventCode,
    FreezingTopologicalBranchEvent,
    FrequencyWarning,
    FunctionalPredictor,
    OperatingMode,
    PredictorConfig,
    ProcessState,
    TopologicalBranchReleasedEvent,
    UniversalPredictor,
)
from usp.adapters.clocks import ReplayClock
from usp.domain._core import UNTIMED, Out
from usp.domain._roughness import BROWNIAN_HOLDER, Sia, analyse_buffer, koopman_modes, refresh_weight
from usp.domain.sia import holder_exponent, wtmm

from .fbm import fbm, ornstein_uhlenbeck

MS = 1_000_000
T0 = 1_800_000_000_000_000_000
DEFAULT = PredictorConfig()


def _run_batch(config: PredictorConfig, series: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Outputs float64[T, N, L] of step_batch fed series[N, T] at timestamps[N, T]."""
    predictor = FunctionalPredictor(config, clock=ReplayClock())
    states = predictor.init_state(series.shape[0])
    outputs = []
    for t in range(series.shape[1]):
        states, batch = predictor.step_batch(states, ColumnarBatch(series[:, t], stamps[:, t]))
        outputs.append(batch.outputs)
    return np.stack(outputs)


@pytest.mark.slow
def test_breaker_is_quiet_on_random_walks_and_fires_on_rough_paths():
    """Default config and 128-sample buffer, 16 Gaussian random walks and 16 fBm paths with
    H = 0.2, 3000 ticks after calibration: the share of post-calibration ticks in emergency.
    Measured: random walk 0.0% (≤ 10% required), H = 0.2: 95.6%, worst path 91% (≥ 80%
    required); over 32 paths of 8000 ticks (benchmarks/bench_wtmm.py) 0.2% and 98.2%."""
    paths, ticks = 16, DEFAULT.wtmm_buffer_size + 3000
    walks = np.cumsum(np.random.default_rng(5).standard_normal((paths, ticks)), axis=1)
    rough = np.stack([fbm(ticks, 0.2, np.random.default_rng(500 + p)) for p in range(paths)])
    series = np.concatenate([walks, rough])
    stamps = np.broadcast_to(T0 + MS * np.arange(ticks), series.shape)
    outputs = _run_batch(DEFAULT, series, stamps)
    warm = outputs[:, :, Out.MODE] != OperatingMode.CALIBRATION
    assert warm[DEFAULT.wtmm_buffer_size:].all() and not warm[:DEFAULT.wtmm_buffer_size - 1].any()
    emergency = outputs[:, :, Out.EMERGENCY] > 0
    share = emergency[:, :paths][warm[:, :paths]].mean(), emergency[:, paths:][warm[:, paths:]].mean()
    assert share[0] <= 0.10, f"random walks in emergency {share[0]:.1%} of the time"
    assert share[1] >= 0.80, f"rough paths in emergency only {share[1]:.1%} of the time"
    # each rough path raised the event, and emergency puts all the weight on kernel D
    raised = (outputs[:, paths:, Out.EVENTS].astype(np.int64) & int(EventCode.CRITICAL_SINGULARITY)) > 0
    assert raised.any(axis=0).all()
    d_weight = outputs[:, :, Out.SIZE + DEFAULT.enabled_kernels.index("D")]
    assert np.all(d_weight[emergency] == 1.0)
    # the smoothed exponent the breaker reads sits near the truth on both
    holder = outputs[-1, :, Out.HOLDER]
    assert abs(np.mean(holder[:paths]) - 0.5) < 0.05 and abs(np.mean(holder[paths:]) - 0.2) < 0.05


def test_reading_is_refreshed_every_refresh_steps_and_smoothed_from_the_brownian_prior():
    config = PredictorConfig(wtmm_buffer_size=64, window_size=64, kurtosis_window=32, wtmm_refresh_steps=8,
                             holder_smoothing=0.01)
    ticks = 64 + 5 * 8 + 3
    series = np.cumsum(np.random.default_rng(7).standard_normal(ticks))
    outputs = _run_batch(config, series[None, :], (T0 + MS * np.arange(ticks))[None, :])[:, 0]
    raw, smoothed = outputs[:, Out.HOLDER_RAW], outputs[:, Out.HOLDER]
    refreshes = [t for t in range(ticks) if t + 1 >= 64 and (t + 1 - 64) % 8 == 0]
    expected_smoothed, weight = BROWNIAN_HOLDER, refresh_weight(0.01, 8)
    assert np.all(raw[:63] == BROWNIAN_HOLDER) and np.all(smoothed[:63] == BROWNIAN_HOLDER)
    for t in range(63, ticks):
        if t in refreshes:
            reading = float(holder_exponent(series[t + 1 - 64:t + 1], config))
            assert raw[t] == pytest.approx(reading, abs=1e-12)
            expected_smoothed += weight * (reading - expected_smoothed)
        else:
            assert raw[t] == raw[t - 1]  # held between refreshes
        assert smoothed[t] == pytest.approx(expected_smoothed, abs=1e-12)


def test_invalid_readings_are_not_adopted_and_the_breaker_reads_them_clipped():
    """A reading that says "no maxima lines" is ignored; a valid one is adopted, and the smoothed
    exponent moves by at most what a reading of H = 1 would move it (a cubic trend reads 6.5)."""
    config = PredictorConfig(wtmm_buffer_size=64, window_size=64, kurtosis_window=32, wtmm_refresh_steps=8,
                             holder_smoothing=0.01)
    predictor = FunctionalPredictor(config, clock=ReplayClock())
    state, _ = predictor.fit_history(predictor.init_state(), np.cumsum(np.random.default_rng(2).standard_normal(63)))
    assert predictor.refresh_due(state)
    weight = refresh_weight(config.holder_smoothing, config.wtmm_refresh_steps)
    trend = np.asarray(analyse_buffer((np.arange(64.0) / 64) ** 3, config))
    assert trend[Sia.HOLDER] > 5 and trend[Sia.VALID] == 1.0
    for valid, adopted in ((0.0, False), (1.0, True)):
        reading = trend.copy()
        reading[Sia.VALID] = valid
        after, output = predictor._step(state, 0.0, UNTIMED, 0, reading)
        assert np.array_equal(np.asarray(after.sia), reading if adopted else np.asarray(state.sia))
        expected = BROWNIAN_HOLDER + weight * (1.0 - BROWNIAN_HOLDER) if adopted else BROWNIAN_HOLDER
        assert float(output[Out.HOLDER]) == pytest.approx(expected, abs=1e-15)
    assert int(after.sia_age) == 0  # an ignored reading still uses up the refresh


def test_spectrum_width_is_never_negative():
    """Regression noise can bend τ the wrong way (a period-3 cosine: chord difference −1.5): the
    width of a spectrum's support reads 0 then, not a negative number."""
    period3 = np.cos(2 * np.pi * np.arange(128.0) / 3)
    result = wtmm(period3, DEFAULT)
    tau, q = np.asarray(result.tau), np.asarray(result.q)
    assert (tau[1] - tau[0]) / (q[1] - q[0]) - (tau[-1] - tau[-2]) / (q[-1] - q[-2]) < -1.0
    assert float(result.width) == 0.0


def test_decimation_freezes_the_branch_before_the_holder_error_exceeds_10_percent():
    """A reference Ornstein–Uhlenbeck signal (relaxation θ = 4096 ms, sampled every ms) is rough
    like Brownian motion (H = 1/2) below θ and featureless above it. Decimated by 2^k, the WTMM
    reading drifts once the finest scales approach θ. With besov_nyquist_interval_ns = θ/32 (the
    documented rule), the guard freezes the branch from k = 8 (256 ms gaps) on. Measured error of
    the reading (mean of 64 buffers): at most 4.9% for k ≤ 8, then 12% at k = 9 and 29% at k = 10:
    the freeze comes one octave before the reading aliases."""
    theta_ms, levels = 4096, 11
    config = PredictorConfig(besov_nyquist_interval_ns=theta_ms * MS // 32)
    reference = ornstein_uhlenbeck(2**21, theta_ms, np.random.default_rng(2024))
    buffer = config.wtmm_buffer_size
    error = []
    for k in range(levels):
        decimated = reference[::2**k]
        windows = decimated[:(decimated.size // buffer) * buffer].reshape(-1, buffer)[:64]
        estimates = np.asarray([holder_exponent(w, config) for w in windows])
        error.append(abs(estimates.mean() - 0.5) / 0.5)
    ticks = 2 * buffer
    series = np.stack([reference[::2**k][:ticks] for k in range(levels)])
    stamps = T0 + MS * (2 ** np.arange(levels))[:, None] * np.arange(ticks)[None, :]
    outputs = _run_batch(config, series, stamps)
    events = outputs[:, :, Out.EVENTS].astype(np.int64)
    fired = ((events & int(EventCode.TOPOLOGICAL_BRANCH_FROZEN)) > 0).any(axis=0)
    first_fired = int(np.argmax(fired))
    assert fired.tolist() == [k >= 8 for k in range(levels)]
    assert max(error[:first_fired]) <= 0.10 and error[0] < 0.05
    assert all(fired[k] for k in range(levels) if error[k] > 0.10)
    assert max(error) > 0.10  # the reference does alias when decimated far enough
    # frozen branches never take a reading nor trip the breaker
    frozen = outputs[-1, first_fired:]
    assert np.all(frozen[:, Out.BRANCH_FROZEN] == 1.0) and np.all(frozen[:, Out.EMERGENCY] == 0.0)
    assert np.all(frozen[:, Out.HOLDER_RAW] == BROWNIAN_HOLDER)


def test_branch_freezes_on_coarse_sampling_holds_the_reading_and_is_released_when_density_returns():
    config = PredictorConfig()
    buffer = config.wtmm_buffer_size
    rng = np.random.default_rng(9)
    gaps = np.concatenate([np.full(300, MS), np.full(100, 2 * config.besov_nyquist_interval_ns),
                           np.full(300, MS)])
    stamps = T0 + np.cumsum(gaps)
    values = np.cumsum(rng.standard_normal(gaps.size))
    predictor = UniversalPredictor(config, clock=ReplayClock())
    results = []
    with pytest.warns(FrequencyWarning):
        for value, stamp in zip(values, stamps, strict=True):
            results.append(predictor.step(ProcessState(float(value), int(stamp))))
    kinds = [[type(e) for e in r.telemetry.events] for r in results]
    frozen_at = next(i for i, k in enumerate(kinds) if FreezingTopologicalBranchEvent in k)
    released_at = next(i for i, k in enumerate(kinds) if TopologicalBranchReleasedEvent in k)
    assert 300 < frozen_at < 400 < released_at
    assert frozen_at - 300 == 18  # the share of coarse gaps passes 1/4 after ≈ ln(4/3) · B/2 ticks
    # 1/8 after ≈ ln(0.79 · 8) · B/2 dense ticks, from the share of 0.79 that 100 coarse gaps left
    assert released_at - 400 == 117
    held = [r.telemetry for r in results[frozen_at:released_at]]
    assert all(t.topological_branch_frozen for t in held)
    assert len({(t.holder_exponent, t.holder_exponent_raw, t.emergency_mode) for t in held}) == 1
    after = [r.telemetry for r in results[released_at:]]
    assert not any(t.topological_branch_frozen for t in after)
    # the first reading after the release waits until the buffer holds only ticks from after it
    raw = [r.telemetry.holder_exponent_raw for r in results]
    first = released_at + buffer - 1
    assert len(set(raw[300:first])) == 1 and raw[first] != raw[first - 1]
    assert sum(FreezingTopologicalBranchEvent in k for k in kinds) == 1


def test_a_frozen_stretch_holds_the_reading_so_the_breaker_stays_armed():
    """A rough path (H = 0.2) trips the breaker; then the price stands still for 200 ticks (a
    halt) and resumes. Buffers that straddle the halt read anything from −1 to 4 (measured), and
    before readings were held one of them switched emergency off for about 800 ticks. Now no
    reading is taken while the frozen-signal alarm is on nor until the buffer holds only ticks
    after it, and a reading moves the breaker at most as far as H = 1 would."""
    buffer = DEFAULT.wtmm_buffer_size
    before, halt, resumed = fbm(1200, 0.2, np.random.default_rng(3)), 200, fbm(600, 0.2, np.random.default_rng(4))
    series = np.concatenate([before, np.full(halt, before[-1]), before[-1] + resumed])
    outputs = _run_batch(DEFAULT, series[None, :], (T0 + MS * np.arange(series.size))[None, :])[:, 0]
    alarm = outputs[:, Out.FROZEN] > 0
    raised, released = int(np.argmax(alarm)), int(series.size - np.argmax(alarm[::-1]))
    assert 1200 < raised < 1200 + halt < released
    raw = outputs[:, Out.HOLDER_RAW]
    first = released + buffer - 1
    assert len(set(raw[raised:first])) == 1 and raw[first] != raw[first - 1]
    assert np.all((raw[first:] > 0.0) & (raw[first:] < 0.5))
    emergency = outputs[:, Out.EMERGENCY] > 0
    entered = int(np.argmax(emergency))
    assert entered < raised and emergency[entered:].all()


def test_emergency_raises_critical_singularity_through_the_predictor():
    config = PredictorConfig(holder_smoothing=0.02)
    predictor = UniversalPredictor(config, clock=ReplayClock())
    path = fbm(600, 0.15, np.random.default_rng(3))
    results = [predictor.step(ProcessState(float(v), T0 + i * MS)) for i, v in enumerate(path)]
    events = [e for r in results for e in r.telemetry.events]
    assert any(isinstance(e, CriticalSingularityEvent) for e in events)
    assert results[-1].telemetry.emergency_mode and results[-1].mode == "diagnostic"
    assert results[-1].telemetry.weights[config.enabled_kernels.index("D")] == 1.0


def test_koopman_and_paley_wiener_diagnostics_reach_the_telemetry():
    config = PredictorConfig(signal_sampling_interval=0.5, koopman_min_power=1e-3)
    t = np.arange(400.0)
    rng = np.random.default_rng(1)
    oscillating = 3.0 * np.sin(2 * np.pi * 0.05 * t) + 0.05 * rng.standard_normal(t.size)
    walk = np.cumsum(rng.standard_normal(t.size))
    telemetry = []
    for series in (oscillating, walk):
        predictor = UniversalPredictor(config, clock=ReplayClock())
        for i, v in enumerate(series):
            result = predictor.step(ProcessState(float(v), T0 + i * MS))
        telemetry.append(result.telemetry)
    oscillation, noise = telemetry
    # modes below koopman_min_power are dropped: the oscillation's noise modes (shares ≈ 2e-4) are
    for diagnostics in (oscillation, noise):
        kept = len(diagnostics.koopman_powers)
        assert len(diagnostics.koopman_frequencies) == len(diagnostics.koopman_growth_rates) == kept
        assert kept <= config.koopman_top_k and min(diagnostics.koopman_powers) >= config.koopman_min_power
    assert len(oscillation.koopman_powers) == 2 and len(noise.koopman_powers) == config.koopman_top_k
    # the dominant conjugate pair: 0.05 cycles per sample = 0.1 per unit time at Δt = 0.5
    assert oscillation.koopman_frequencies[:2] == pytest.approx((0.1, 0.1), abs=2e-3)
    assert sum(oscillation.koopman_powers[:2]) > 0.9
    assert abs(oscillation.koopman_growth_rates[0]) < 0.01
    assert noise.paley_wiener_regular and 0 < noise.paley_wiener_integral < config.paley_wiener_integral_max
    assert np.all(np.diff(noise.koopman_powers) <= 1e-12)
    assert 0.0 <= noise.singularity_spectrum_width < 5.0


_READ = jax.jit(lambda buffer: analyse_buffer(buffer, DEFAULT))
_admissible = st.floats(-1e100, 1e100, allow_nan=False, allow_subnormal=False)


@given(st.one_of(
    st.lists(_admissible, min_size=128, max_size=128),
    st.tuples(_admissible, st.lists(st.sampled_from([0.0, 1e-12, -3.0, 1e90]), min_size=128, max_size=128))
    .map(lambda pair: [pair[0] + v for v in pair[1]])))
def test_reading_is_finite_and_well_formed_for_any_admissible_buffer(values):
    """Any buffer the core can hold (finite, |y| ≤ 1e100: constant, stepped, huge, tiny) gives a
    finite reading with shares on the simplex, so the state stays finite."""
    reading = np.asarray(_READ(np.asarray(values, dtype=np.float64)))
    k = koopman_modes(DEFAULT)
    assert reading.shape == (Sia.length(k),) and np.all(np.isfinite(reading))
    power = reading[Sia.KOOPMAN + 2 * k:]
    assert np.all(power >= 0) and power.sum() <= 1 + 1e-9
    assert np.all(reading[Sia.KOOPMAN:Sia.KOOPMAN + k] >= 0)  # |frequency|
    assert reading[Sia.PALEY_WIENER] >= 0 and reading[Sia.WIDTH] >= 0 and reading[Sia.VALID] in (0.0, 1.0)
