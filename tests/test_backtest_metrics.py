"""Every figure of a ``BacktestResult`` recomputed independently, with plain numpy and Python
loops, from the per-tick arrays (``timestamps_ns``, ``values``, ``outputs``), following the
definitions in ``BacktestResult``'s docstring (not ``usp._backtest.score``, which computes them
for ``usp.backtest`` and ``usp run`` alike).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usp import (
    BacktestResult,
    EventCode,
    NonFiniteRejectedEvent,
    OutlierRejectedEvent,
    OutOfOrderRejectedEvent,
    PredictorConfig,
    RegimeChangedEvent,
    SparseArrivalEvent,
    backtest,
)
from usp._backtest import Recording, score
from usp.domain._core import Out

CONFIG = PredictorConfig()  # one config for every replay here: its step is compiled once
STEP_NS = 10_000_000  # 10 ms apart: below besov_nyquist_interval_ns (100 ms), so ticks are dense
REJECTED_BITS = int(EventCode.rejected())
FIGURES = ("ticks", "evaluated", "rmse", "mae", "mase", "coverage", "nominal", "regime_changes", "emergency_ticks",
           "rejected", "sparse_ticks", "branch_frozen_ticks")


def reference_figures(timestamps_ns: np.ndarray, values: np.ndarray, outputs: np.ndarray,
                      config: PredictorConfig) -> dict[str, float]:
    """The figures as ``BacktestResult`` defines them, from the per-tick arrays alone."""
    ticks = len(values)
    bits = [int(b) for b in outputs[:, Out.EVENTS]]
    accepted = [bit & REJECTED_BITS == 0 for bit in bits]
    # one-step-ahead pairs (t, t+1): t out of calibration, t and t+1 both accepted
    pairs = [t for t in range(ticks - 1) if outputs[t, Out.CALIBRATING] == 0 and accepted[t] and accepted[t + 1]]
    errors = [values[t + 1] - outputs[t, Out.PREDICTION] for t in pairs]
    last_value_errors = [abs(values[t + 1] - values[t]) for t in pairs]
    inside = [outputs[t, Out.LOWER] <= values[t + 1] <= outputs[t, Out.UPPER] for t in pairs]
    n = len(pairs)
    rmse = mae = mase = coverage = math.nan
    if n:
        rmse = math.sqrt(sum(e * e for e in errors) / n)
        mae = sum(abs(e) for e in errors) / n
        naive = sum(last_value_errors) / n
        mase = mae / naive if naive > 0 else (math.inf if mae > 0 else math.nan)
        coverage = sum(inside) / n
    # sparse: an accepted tick further than the Nyquist interval from the previous accepted one
    sparse, previous = 0, None
    for t in range(ticks):
        if not accepted[t]:
            continue
        if previous is not None and timestamps_ns[t] - previous > config.besov_nyquist_interval_ns:
            sparse += 1
        previous = int(timestamps_ns[t])
    return {
        "ticks": ticks, "evaluated": n, "rmse": rmse, "mae": mae, "mase": mase, "coverage": coverage,
        "nominal": config.confidence_level,
        "regime_changes": sum(1 for bit in bits if bit & int(EventCode.REGIME_CHANGED)),
        "emergency_ticks": sum(1 for flag in outputs[:, Out.EMERGENCY] if flag > 0),
        "rejected": sum(1 for ok in accepted if not ok),
        "sparse_ticks": sparse,
        "branch_frozen_ticks": sum(1 for flag in outputs[:, Out.BRANCH_FROZEN] if flag > 0),
    }


def assert_figures(result: BacktestResult, config: PredictorConfig = CONFIG) -> dict[str, float]:
    expected = reference_figures(result.timestamps_ns, result.values, result.outputs, config)
    for name in FIGURES:
        got, want = getattr(result, name), expected[name]
        if isinstance(want, int) and not isinstance(want, bool):
            assert type(got) is int and got == want, name
        else:
            assert type(got) is float, name
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)  # NaN == NaN, inf == inf
    return expected


def check_tick_structure(result: BacktestResult, config: PredictorConfig = CONFIG) -> None:
    """What the definitions rely on, checked against independent readings of each tick: a
    tick's calibration flag follows the count of accepted ticks, and its decoded events (the
    ``PredictionResult`` of ``result(t)``) agree with its event bits."""
    accepted_so_far = 0
    for t in range(result.ticks):
        events = result.result(t).telemetry.events
        rejected = any(isinstance(e, (NonFiniteRejectedEvent, OutlierRejectedEvent, OutOfOrderRejectedEvent))
                       for e in events) or int(result.outputs[t, Out.EVENTS]) & int(EventCode.REJECTED_MAGNITUDE)
        assert bool(rejected) == (not result.accepted[t]), t
        if rejected:
            assert not any(isinstance(e, (RegimeChangedEvent, SparseArrivalEvent)) for e in events), t
            continue
        accepted_so_far += 1
        assert (result.outputs[t, Out.CALIBRATING] == 0) == (accepted_so_far >= config.wtmm_buffer_size), t
        assert any(isinstance(e, RegimeChangedEvent) for e in events) == bool(result.outputs[t, Out.REGIME_CHANGE])


# --- a short series with a calibration, a sampling gap, a regime shift, a NaN, an outlier --------

SHIFT, OUTLIER, OUT_OF_ORDER, GAP = 230, 300, 320, 180


def _designed(nan_at: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2024)
    values = 10.0 + rng.normal(0.0, 1.0, 360)
    values[SHIFT:] += 8.0  # a regime shift of 8σ (below sigma_bound = 20σ: accepted)
    values[OUTLIER] += 1e4  # a catastrophic outlier: rejected
    stamps = np.arange(values.size, dtype=np.int64) * STEP_NS
    stamps[GAP:] += 2_000_000_000  # one arrival 2 s after the previous one: sparse
    stamps[OUT_OF_ORDER] = stamps[OUT_OF_ORDER - 2]  # earlier than the previous tick: rejected
    if nan_at is not None:
        values[nan_at] = np.nan
    return values, stamps


@pytest.fixture(scope="module")
def designed() -> tuple[BacktestResult, int]:
    """The designed series, with its NaN on the tick right after the shift's CUSUM alarm (where
    the rejected tick repeats the last valid output, regime-change flag included)."""
    clean, stamps = _designed(None)
    pilot = backtest(clean, CONFIG, timestamps=stamps)
    alarms = np.flatnonzero(pilot.events & int(EventCode.REGIME_CHANGED))
    alarm = int(alarms[alarms >= SHIFT][0])  # the replay is causal: a later NaN leaves it in place
    assert alarm + 1 not in (OUTLIER, OUT_OF_ORDER)
    return backtest(_designed(alarm + 1)[0], CONFIG, timestamps=stamps), alarm


def test_every_figure_is_recomputed_from_the_ticks_of_a_designed_series(designed):
    result, alarm = designed
    check_tick_structure(result)
    expected = assert_figures(result)
    # the series exercises every rule: calibration, the three rejections, a gap, an alarm
    assert not result.accepted[alarm + 1] and not result.accepted[OUTLIER] and not result.accepted[OUT_OF_ORDER]
    assert np.flatnonzero(~result.accepted).tolist() == sorted([alarm + 1, OUTLIER, OUT_OF_ORDER])
    assert expected["rejected"] == 3 and expected["sparse_ticks"] == 1 and expected["regime_changes"] >= 1
    calibrated = int(np.argmax(result.outputs[:, Out.CALIBRATING] == 0))
    assert calibrated == CONFIG.wtmm_buffer_size - 1
    # pairs lost: the calibration, and the two pairs around each rejected tick
    assert expected["evaluated"] == (result.ticks - 1 - calibrated) - 2 * 3
    assert 0 < expected["coverage"] < 1 and expected["mase"] > 0 and expected["rmse"] >= expected["mae"] > 0
    # the NaN repeats the alarm tick's output: counting the flag, not the event, would count it twice
    assert result.outputs[alarm + 1, Out.REGIME_CHANGE] == 1 == result.outputs[alarm, Out.REGIME_CHANGE]
    assert (result.outputs[:, Out.REGIME_CHANGE] > 0).sum() == result.regime_changes + 1


def test_the_figures_of_a_coarsely_sampled_series_without_timestamps():
    """Ticks 1 s apart (the default spacing): every tick sparse, the roughness branch frozen."""
    values = _designed(305)[0]
    result = backtest(values, CONFIG)
    check_tick_structure(result)
    expected = assert_figures(result)
    assert expected["sparse_ticks"] == result.ticks - 1 - 2 and expected["branch_frozen_ticks"] > 0


def test_the_figures_of_a_series_too_short_to_leave_calibration():
    result = backtest([1.0, 2.0, math.nan, 4.0], CONFIG, timestamps=np.arange(4) * STEP_NS)
    expected = assert_figures(result)
    assert expected["evaluated"] == 0 and math.isnan(result.rmse) and math.isnan(result.mase)


def _recording(values: list[float], predictions: list[float]) -> Recording:
    outputs = np.zeros((len(values), Out.length(1, 0)))
    outputs[:, Out.PREDICTION] = predictions
    outputs[:, Out.LOWER], outputs[:, Out.UPPER] = np.array(predictions) - 1, np.array(predictions) + 1
    return Recording(np.arange(len(values), dtype=np.int64), np.array(values), outputs, 1.0)


@pytest.mark.parametrize(("values", "predictions", "mase"), [
    ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0], math.nan),  # last value and forecast both exact: 0/0
    ([5.0, 5.0, 5.0], [5.5, 5.5, 5.5], math.inf),  # the last value is exact, the forecast is not
    ([1.0, 2.0, 4.0], [2.0, 3.0, 9.0], 0.5 / 1.5),  # forecast errors 0, 1; last-value errors 1, 2
])
def test_mase_when_the_last_value_forecast_is_exact(values, predictions, mase):
    result = score(_recording(values, predictions), ("A",), 0.95)
    assert_figures(result, PredictorConfig())
    np.testing.assert_allclose(result.mase, mase, rtol=1e-12)


# --- random short series ----------------------------------------------------------------------

@st.composite
def series(draw) -> tuple[np.ndarray, np.ndarray]:
    """100–300 ticks: noise at a random scale and level, maybe a shift, NaN/inf ticks, outliers,
    sampling gaps and an out-of-order tick at random places, ticks 10 ms or 1 s apart."""
    n = draw(st.integers(100, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e3]))
    values = draw(st.floats(-1e3, 1e3)) + scale * rng.normal(size=n)
    values[draw(st.integers(0, n - 1)):] += scale * draw(st.floats(-10, 10))
    positions = st.integers(0, n - 1)
    for at in draw(st.lists(positions, max_size=3)):
        values[at] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    for at in draw(st.lists(positions, max_size=3)):
        values[at] += scale * 1e4
    step = draw(st.sampled_from([STEP_NS, 100 * STEP_NS]))  # dense, or 1 s apart (every tick sparse)
    stamps = np.cumsum(rng.choice([step, 50 * step], size=n, p=[0.95, 0.05])).astype(np.int64)
    if draw(st.booleans()):
        at = draw(st.integers(1, n - 1))
        stamps[at] = stamps[at - 1] - 1
    return values, stamps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series())
def test_every_figure_is_recomputed_from_the_ticks_of_random_series(drawn):
    values, stamps = drawn
    result = backtest(values, CONFIG, timestamps=stamps)
    assert_figures(result)


def test_rejected_infinite_values_on_consecutive_ticks_do_not_disturb_the_figures():
    """Two ±inf ticks in a row (both rejected) once made the naive error compute inf − inf."""
    values = np.concatenate([[np.inf, np.inf, -np.inf], 1.0 + np.cumsum(np.full(160, 1e-6))])
    stamps = (np.arange(values.size, dtype=np.int64) + 1) * 10_000_000
    result = backtest(values, CONFIG, timestamps=stamps)
    assert result.rejected == 3
    assert_figures(result)
