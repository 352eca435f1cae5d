"""Decoding the core's output vectors (layout ``domain._core.Out``) into host-side results."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import numpy as np

from ..domain._core import Out, ReportLayout, report_size
from ..domain._kernel import KernelEvent
from .types import PredictionResult, Telemetry, decode_events


class OutputColumns:
    """Column views over stacked output vectors ``outputs`` (float64[R, Out.length(n, k)], one
    row per asset or per tick) of the kernels ``kernel_names``, named as ``PredictionResult``."""

    outputs: np.ndarray
    kernel_names: tuple[str, ...]

    @property
    def reference_prediction(self) -> np.ndarray:
        """float64[R] forecast of the next value (signal units)."""
        return self.outputs[:, Out.PREDICTION]

    @property
    def confidence_lower(self) -> np.ndarray:
        """float64[R] lower bound of the prediction interval (signal units)."""
        return self.outputs[:, Out.LOWER]

    @property
    def confidence_upper(self) -> np.ndarray:
        """float64[R] upper bound of the prediction interval (signal units)."""
        return self.outputs[:, Out.UPPER]

    @property
    def operating_mode(self) -> np.ndarray:
        """int32[R] ``OperatingMode`` codes: 0 inference, 1 calibration, 2 diagnostic."""
        return self.outputs[:, Out.MODE].astype(np.int32)

    @property
    def events(self) -> np.ndarray:
        """int64[R] ``EventCode`` bits."""
        return self.outputs[:, Out.EVENTS].astype(np.int64)

    @property
    def emergency_mode(self) -> np.ndarray:
        """bool[R] circuit breaker in emergency mode after the tick."""
        return self.outputs[:, Out.EMERGENCY] != 0.0

    @property
    def degraded_inference_mode(self) -> np.ndarray:
        """bool[R] degraded inference mode (staleness or a frozen signal) after the tick."""
        return self.outputs[:, Out.DEGRADED] != 0.0

    @property
    def weights(self) -> np.ndarray:
        """float64[R, n] kernel weights (on the simplex), in ``kernel_names`` order."""
        return self.outputs[:, Out.SIZE:Out.SIZE + len(self.kernel_names)]


@attrs.frozen
class BatchPrediction(OutputColumns):
    """Results of ``step_batch``: arrays over assets, with PredictionResult views per asset."""

    outputs: np.ndarray  # float64[N, Out.length(n, k, report size)]
    kernel_names: tuple[str, ...]
    timestamps_ns: np.ndarray
    kernel_reports: ReportLayout = None  #: the report block's layout (``domain._core.report_layout``)

    def __len__(self) -> int:
        return self.outputs.shape[0]

    def __getitem__(self, index: int) -> PredictionResult:
        return result_from_output(self.outputs[index], self.kernel_names, int(self.timestamps_ns[index]),
                                  reports=self.kernel_reports)

    def __iter__(self) -> Iterator[PredictionResult]:
        return (self[i] for i in range(len(self)))


def _kernel_reports(block: list[float], kernel_names: tuple[str, ...], layout: ReportLayout
                    ) -> tuple[dict[str, dict[str, float]], dict[str, tuple[str, ...]]]:
    """Decode the report block: diagnostics and event names per reporting kernel."""
    diagnostics: dict[str, dict[str, float]] = {}
    events: dict[str, tuple[str, ...]] = {}
    if layout is None:
        return diagnostics, events
    n = len(kernel_names)
    offset = n
    for index, (name, names) in enumerate(zip(kernel_names, layout, strict=True)):
        if names is None:
            continue
        diagnostics[name] = dict(zip(names, block[offset:offset + len(names)], strict=True))
        offset += len(names)
        bits = int(block[index])
        events[name] = tuple(str(flag.name) for flag in KernelEvent if bits & flag)
    return diagnostics, events


def result_from_output(output: np.ndarray, kernel_names: tuple[str, ...], timestamp_ns: int | None,
                       request_id: str | None = None, *, reports: ReportLayout = None) -> PredictionResult:
    """Build the host-side result from one output vector of the core; ``reports`` is the layout
    of its report block (``domain._core.report_layout`` of the kernels; None: no block)."""
    n = len(kernel_names)
    out = output.tolist()
    weights = tuple(out[Out.SIZE:Out.SIZE + n])
    means = out[Out.SIZE + n:Out.SIZE + 2 * n]
    size = report_size(reports)
    koopman = out[Out.koopman(n):len(out) - size]
    diagnostics, kernel_events = _kernel_reports(out[len(out) - size:], kernel_names, reports)
    entropies = [values["dgm_entropy"] for values in diagnostics.values() if "dgm_entropy" in values]
    k = len(koopman) // 3
    kept = [i for i in range(k) if koopman[2 * k + i] > 0.0]  # modes below koopman_min_power are dropped
    telemetry = Telemetry(
        holder_exponent=out[Out.HOLDER], weights=weights, kernel_names=kernel_names,
        kernel_predictions=dict(zip(kernel_names, means, strict=True)), kurtosis=out[Out.KURTOSIS],
        dgm_entropy=entropies[0] if entropies else None, adaptive_threshold=out[Out.THRESHOLD],
        cusum_statistic=out[Out.CUSUM],
        distance_to_collapse=out[Out.DISTANCE], free_energy=out[Out.FREE_ENERGY],
        sinkhorn_converged=bool(out[Out.SINKHORN_CONVERGED]), sinkhorn_error=out[Out.SINKHORN_ERROR],
        sinkhorn_epsilon=out[Out.EPSILON], residual_sigma=out[Out.SIGMA],
        degraded_inference_mode=bool(out[Out.DEGRADED]), emergency_mode=bool(out[Out.EMERGENCY]),
        regime_change_detected=bool(out[Out.REGIME_CHANGE]),
        mode_collapse_warning=any("MODE_COLLAPSE" in names for names in kernel_events.values()),
        frozen_signal=bool(out[Out.FROZEN]), holder_exponent_raw=out[Out.HOLDER_RAW],
        singularity_spectrum_width=out[Out.SPECTRUM_WIDTH], koopman_frequencies=tuple(koopman[i] for i in kept),
        koopman_growth_rates=tuple(koopman[k + i] for i in kept),
        koopman_powers=tuple(koopman[2 * k + i] for i in kept),
        paley_wiener_integral=out[Out.PALEY_WIENER], paley_wiener_regular=bool(out[Out.PW_REGULAR]),
        topological_branch_frozen=bool(out[Out.BRANCH_FROZEN]),
        events=decode_events(int(out[Out.EVENTS]), timestamp_ns),
        kernel_diagnostics=diagnostics, kernel_events=kernel_events)
    return PredictionResult(out[Out.PREDICTION], out[Out.LOWER], out[Out.UPPER], int(out[Out.MODE]),
                            telemetry, request_id)


__all__ = ["BatchPrediction", "result_from_output"]
