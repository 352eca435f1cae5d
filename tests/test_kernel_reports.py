"""The report contract: a kernel's diagnostics and events reach the prediction, the event log,
the mixture weights (mode collapse) and the snapshot; older snapshots without a report block load."""

from __future__ import annotations

import math

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import FunctionalPredictor, PredictorConfig, ProcessState
from usp.adapters.stores import FileStore
from usp.application.snapshot import decode_snapshot
from usp.application.types import GradientInstabilityEvent, KernelUnstableEvent, ModeCollapseEvent
from usp.domain._core import LOG_WEIGHT_FLOOR, Out, report_layout, report_size
from usp.domain._events import EventCode
from usp.domain._roughness import koopman_modes
from usp.kernel import KernelEvent, KernelForecast, KernelReport, KernelSpec, pytree
from usp.plugins.kernel_n import KERNEL_N
from usp.testing import check_kernel

UNSTABLE_AT, GRADIENT_AT, COLLAPSE_FROM, COLLAPSE_TO = 20, 22, 30, 40


@pytree
class CountingState:
    count: jax.Array
    last: jax.Array


def _init(config: PredictorConfig, key: jax.Array) -> CountingState:
    del config, key
    return CountingState(jnp.int32(0), jnp.float64(0.0))


def _update(state: CountingState, window, config: PredictorConfig) -> CountingState:
    del config
    return CountingState(state.count + 1, window.values[-1])


def _predict(state: CountingState, window, config: PredictorConfig) -> KernelForecast:
    del config
    return KernelForecast(mean=window.values[-1] + 0.01, scale=jnp.float64(1.0))


def _report(state: CountingState, config: PredictorConfig) -> KernelReport:
    """Events on fixed ticks; "dgm_entropy" = 2 × the last value, "count" = the ticks seen."""
    del config
    events = (jnp.where(state.count == UNSTABLE_AT, int(KernelEvent.UNSTABLE), 0)
              | jnp.where(state.count == GRADIENT_AT, int(KernelEvent.GRADIENT_INSTABILITY), 0)
              | jnp.where((state.count >= COLLAPSE_FROM) & (state.count < COLLAPSE_TO),
                          int(KernelEvent.MODE_COLLAPSE), 0))
    return KernelReport(values=jnp.stack([2.0 * state.last, state.count.astype(jnp.float64)]),
                        events=events.astype(jnp.int32))


REPORTING = KernelSpec(name="R", init=_init, update=_update, predict=_predict,
                       diagnostics=("dgm_entropy", "count"), report=_report)
CONFIG = PredictorConfig(window_size=32, wtmm_buffer_size=32, kurtosis_window=32, wtmm_refresh_steps=8,
                         kernel_a_order=4,
                         enabled_kernels=("N", "R"))
TICKS = 50


def _series() -> np.ndarray:
    return 100.0 + np.cumsum(np.random.default_rng(3).normal(0.0, 0.1, TICKS))


@pytest.fixture(scope="module")
def results():
    predictor = FunctionalPredictor(CONFIG, kernels=[KERNEL_N, REPORTING])
    state = predictor.init_state()
    out = []
    for t, value in enumerate(_series()):
        state, result = predictor.step(state, ProcessState(float(value), (t + 1) * 1_000_000_000))
        out.append(result)
    return predictor, state, out


def test_the_reporting_test_kernel_passes_check_kernel():
    report = check_kernel(REPORTING)
    assert "report" in report.passed


def test_diagnostics_and_events_reach_the_prediction(results):
    _, _, out = results
    series = _series()
    for t, result in enumerate(out):
        telemetry = result.telemetry
        count = t + 1
        assert telemetry.kernel_diagnostics == {"R": {"dgm_entropy": 2.0 * series[t], "count": float(count)}}
        assert telemetry.dgm_entropy == 2.0 * series[t]
        names = {type(e) for e in telemetry.events}
        assert (KernelUnstableEvent in names) == (count == UNSTABLE_AT)
        assert (GradientInstabilityEvent in names) == (count == GRADIENT_AT)
        collapsed = COLLAPSE_FROM <= count < COLLAPSE_TO
        assert telemetry.mode_collapse_warning == collapsed
        assert (ModeCollapseEvent in names) == (count == COLLAPSE_FROM)  # the rising edge only
        expected_events = (("UNSTABLE",) if count == UNSTABLE_AT else ()) + (
            ("GRADIENT_INSTABILITY",) if count == GRADIENT_AT else ()) + (("MODE_COLLAPSE",) if collapsed else ())
        assert telemetry.kernel_events == {"R": expected_events}


def test_a_collapsed_kernel_gets_no_weight_and_the_rest_sum_to_one(results):
    _, _, out = results
    for t, result in enumerate(out):
        weights = dict(zip(result.telemetry.kernel_names, result.telemetry.weights, strict=True))
        if COLLAPSE_FROM <= t + 1 < COLLAPSE_TO:
            assert weights["R"] < math.exp(LOG_WEIGHT_FLOOR) * 1e10  # floored: no weight
            assert weights["N"] == pytest.approx(1.0, abs=1e-12)
            assert result.reference_prediction == pytest.approx(result.telemetry.kernel_predictions["N"], abs=1e-9)


def test_kernels_without_a_report_add_no_block():
    assert report_layout([KERNEL_N]) is None and report_size(None) == 0
    layout = report_layout([KERNEL_N, REPORTING])
    assert layout == (None, ("dgm_entropy", "count")) and report_size(layout) == 4
    plain = FunctionalPredictor(attrs.evolve(CONFIG, enabled_kernels=("N",)), kernels=[KERNEL_N])
    _, result = plain.step(plain.init_state(), ProcessState(1.0, 1_000_000_000))
    assert result.telemetry.kernel_diagnostics == {} and result.telemetry.dgm_entropy is None
    assert not result.telemetry.mode_collapse_warning


def test_kernel_spec_refuses_diagnostics_without_report_and_duplicates():
    with pytest.raises(TypeError, match="no report function"):
        KernelSpec(name="X", init=_init, update=_update, predict=_predict, diagnostics=("a",))
    with pytest.raises(TypeError, match="unique"):
        KernelSpec(name="X", init=_init, update=_update, predict=_predict, diagnostics=("a", "a"), report=_report)
    with pytest.raises(TypeError, match="unique"):
        KernelSpec(name="X", init=_init, update=_update, predict=_predict, diagnostics=["a"], report=_report)


def test_check_kernel_catches_a_report_of_the_wrong_shape():
    def short(state, config):
        return KernelReport(values=jnp.zeros(1), events=jnp.int32(0))

    bad = attrs.evolve(REPORTING, report=short)
    with pytest.raises(AssertionError, match="report"):
        check_kernel(bad)


def test_snapshot_carries_the_entropy_and_the_collapse_flag_and_old_layouts_load(results, tmp_path):
    predictor, state, _ = results
    store = FileStore(tmp_path)
    predictor.save_states(store, "asset", state)
    payload = decode_snapshot(store.load("asset"), expected_schema=CONFIG.schema_version)
    assert payload["telemetry"]["dgm_entropy"] == 2.0 * _series()[-1]
    assert payload["flags"]["mode_collapse"] is False
    restored, ok = predictor.load_states(store, "asset")
    assert ok and np.array_equal(np.asarray(restored.last_output), np.asarray(state.last_output))

    # a snapshot written before its kernels reported: last_output without the report block
    unreported = Out.length(2, koopman_modes(CONFIG))
    cut = attrs.evolve(state, last_output=state.last_output[:unreported])
    legacy = FunctionalPredictor(CONFIG, kernels=[KERNEL_N, attrs.evolve(REPORTING, diagnostics=(), report=None)])
    legacy.save_states(store, "legacy", cut)
    loaded, ok = predictor.load_states(store, "legacy")
    assert ok and loaded.last_output.shape == state.last_output.shape
    assert np.array_equal(np.asarray(loaded.last_output[:unreported]), np.asarray(state.last_output[:unreported]))
    assert not np.any(np.asarray(loaded.last_output[unreported:]))
    _, result = predictor.step(loaded, ProcessState(float(_series()[-1]), (TICKS + 1) * 1_000_000_000))
    assert np.isfinite(result.reference_prediction)
    assert int(result.telemetry.kernel_diagnostics["R"]["count"]) == TICKS + 1


def test_event_bits_are_distinct():
    bits = [EventCode.KERNEL_UNSTABLE, EventCode.KERNEL_GRADIENT_INSTABILITY, EventCode.KERNEL_MODE_COLLAPSE]
    assert len({int(b) for b in bits}) == 3 and not any(int(b) & int(EventCode.rejected()) for b in bits)
