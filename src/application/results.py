"""Decoding the core's output vectors (layout ``domain._core.Out``) into host-side results."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import numpy as np

from ..domain._core import Out
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

    outputs: np.ndarray  # float64[N, Out.length(n, k)]
    kernel_names: tuple[str, ...]
    timestamps_ns: np.ndarray

    def __len__(self) -> int:
        return self.outputs.shape[0]

    def __getitem__(self, index: int) -> PredictionResult:
        return result_from_output(self.outputs[index], self.kernel_names, int(self.timestamps_ns[index]))

    def __iter__(self) -> Iterator[PredictionResult]:
        return (self[i] for i in range(len(self)))


def result_from_output(output: np.ndarray, kernel_names: tuple[str, ...], timestamp_ns: int | None,
                       request_id: str | None = None) -> PredictionResult:
    """Build the host-side result from one output vector of the core."""
    n = len(kernel_names)
    out = output.tolist()
    weights = tuple(out[Out.SIZE:Out.SIZE + n])
    means = out[Out.SIZE + n:Out.SIZE + 2 * n]
    koopman = out[Out.koopman(n):]
    k = len(koopman) // 3
    kept = [i for i in range(k) if koopman[2 * k + i] > 0.0]  # modes below koopman_min_power are dropped
    telemetry = Telemetry(
        holder_exponent=out[Out.HOLDER], weights=weights, kernel_names=kernel_names,
        kernel_predictions=dict(zip(kernel_names, means, strict=True)), kurtosis=out[Out.KURTOSIS],
        dgm_entropy=None, adaptive_threshold=out[Out.THRESHOLD], cusum_statistic=out[Out.CUSUM],
        distance_to_collapse=out[Out.DISTANCE], free_energy=out[Out.FREE_ENERGY],
        sinkhorn_converged=bool(out[Out.SINKHORN_CONVERGED]), sinkhorn_error=out[Out.SINKHORN_ERROR],
        sinkhorn_epsilon=out[Out.EPSILON], residual_sigma=out[Out.SIGMA],
        degraded_inference_mode=bool(out[Out.DEGRADED]), emergency_mode=bool(out[Out.EMERGENCY]),
        regime_change_detected=bool(out[Out.REGIME_CHANGE]), mode_collapse_warning=False,
        frozen_signal=bool(out[Out.FROZEN]), holder_exponent_raw=out[Out.HOLDER_RAW],
        singularity_spectrum_width=out[Out.SPECTRUM_WIDTH], koopman_frequencies=tuple(koopman[i] for i in kept),
        koopman_growth_rates=tuple(koopman[k + i] for i in kept),
        koopman_powers=tuple(koopman[2 * k + i] for i in kept),
        paley_wiener_integral=out[Out.PALEY_WIENER], paley_wiener_regular=bool(out[Out.PW_REGULAR]),
        topological_branch_frozen=bool(out[Out.BRANCH_FROZEN]),
        events=decode_events(int(out[Out.EVENTS]), timestamp_ns))
    return PredictionResult(out[Out.PREDICTION], out[Out.LOWER], out[Out.UPPER], int(out[Out.MODE]),
                            telemetry, request_id)


__all__ = ["BatchPrediction", "result_from_output"]
