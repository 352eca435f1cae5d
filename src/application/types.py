"""Host-side types of the API: observations, results, telemetry, operating modes and events."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ..domain import DomainError, TimestampError
from ..domain._events import EventCode

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def to_timestamp_ns(timestamp: _dt.datetime | int | np.integer) -> int:
    """UTC nanoseconds since the epoch from an aware datetime (or integer nanoseconds).

    Raises:
        TimestampError: a naive datetime, or anything that is not a datetime or an integer.
    """
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None or timestamp.tzinfo.utcoffset(timestamp) is None:
            raise TimestampError(f"timestamp {timestamp.isoformat()} is naive; give it a timezone, "
                                 "e.g. datetime.now(timezone.utc)")
        delta = timestamp - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(timestamp, (int, np.integer)) and not isinstance(timestamp, bool):
        if not -(2**63) < timestamp < 2**63:
            raise TimestampError(f"timestamp {timestamp} ns does not fit in int64")
        return int(timestamp)
    raise TimestampError(f"timestamp must be a timezone-aware datetime or integer nanoseconds, got "
                         f"{type(timestamp).__name__}")


def to_magnitude(value: Any) -> float:
    """The scalar value of an observation; shapes other than () or (1,) are a DomainError.

    Non-finite values are returned as they are: the core rejects them as an event.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DomainError(f"magnitude must be a real number, got {type(value).__name__}") from exc
    if array.shape not in ((), (1,)):
        raise DomainError(f"magnitude must be a scalar or shape (1,), got shape {array.shape}")
    return float(array.reshape(()))


@attrs.frozen
class ProcessState:
    """One observation (y_t, τ_utc).

    Attributes:
        magnitude: the value y_t (scalar, or an array of shape (1,)).
        timestamp_utc: timezone-aware datetime (or integer UTC nanoseconds).
        state_tag: optional label carried through (e.g. the asset id).
        dispersion_proxy: optional externally supplied dispersion (informational).
    """

    magnitude: Any
    timestamp_utc: _dt.datetime | int
    state_tag: str | None = None
    dispersion_proxy: Any = None

    @property
    def timestamp_ns(self) -> int:
        return to_timestamp_ns(self.timestamp_utc)

    def validate_domain(self, sigma_bound: float, sigma_val: float, center: float = 0.0) -> bool:
        """Catastrophic-outlier test: finite and |magnitude − center| ≤ sigma_bound·sigma_val."""
        value = to_magnitude(self.magnitude)
        return math.isfinite(value) and abs(value - center) <= sigma_bound * sigma_val


@attrs.frozen
class ColumnarBatch:
    """Observations of many assets at once: float64[N] values and int64[N] UTC nanoseconds."""

    values: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))
    timestamps_ns: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))

    def __attrs_post_init__(self) -> None:
        if self.values.ndim != 1 or self.values.shape != self.timestamps_ns.shape:
            raise DomainError(f"columnar batch needs 1-D values and timestamps of one length, got "
                              f"{self.values.shape} and {self.timestamps_ns.shape}")


class OperatingMode:
    """Integer operating modes of the core and their API strings."""

    INFERENCE = 0
    CALIBRATION = 1
    DIAGNOSTIC = 2
    @staticmethod
    def to_string(mode: int) -> str:
        """Host-side conversion of the int32 mode to its API string (unknown codes: inference)."""
        return _MODE_NAMES.get(int(mode), "inference")


_MODE_NAMES: Mapping[int, str] = {0: "inference", 1: "calibration", 2: "diagnostic"}


# --- events ---------------------------------------------------------------------------------


@attrs.frozen
class Event:
    """Something notable that happened on a tick (see ``EventCode``)."""

    code: EventCode
    message: str
    timestamp_ns: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__


class OutlierRejectedEvent(Event):
    """DomainError: |y − ŷ| beyond sigma_bound·σ; the tick was ignored."""


class NonFiniteRejectedEvent(Event):
    """DomainError: the value was NaN or infinite; the tick was ignored."""


class OutOfOrderRejectedEvent(Event):
    """DomainError: the timestamp is earlier than the previous tick's; the tick was ignored."""


class StaleDataEvent(Event):
    """StalenessWarning: the tick is older than the TTL; weights frozen, degraded mode."""


class SparseArrivalEvent(Event):
    """FrequencyWarning: the gap since the previous tick exceeds the Nyquist interval."""


class FrozenSignalAlarmEvent(Event):
    """N_freeze identical values in a row: degraded mode, weights frozen."""


class FrozenSignalReleasedEvent(Event):
    """The signal moves again."""


class RegimeChangedEvent(Event):
    """CUSUM alarm: weights and energies reset to uniform, grace period started."""


class CriticalSingularityEvent(Event):
    """The circuit breaker entered emergency mode (rough path)."""


class SingularityClearedEvent(Event):
    """The circuit breaker left emergency mode."""


class NormalOperationRestoredEvent(Event):
    """Degraded mode ended (fresh ticks again, or the signal is lively again)."""


class SinkhornNotConvergedEvent(Event):
    """Sinkhorn stopped at its iteration bound above the tolerance."""


class LowEpsilonEvent(Event):
    """ε_t below 1e-4: Sinkhorn is ill-conditioned."""


class FreezingTopologicalBranchEvent(Event):
    """FrequencyWarning: sampling too coarse for the finest wavelet scale; the Hölder reading and the
    circuit breaker are held until density returns."""


class TopologicalBranchReleasedEvent(Event):
    """Sampling is dense again: the Hölder reading and the circuit breaker resume."""


EVENT_TYPES: dict[EventCode, type[Event]] = {
    EventCode.REJECTED_NON_FINITE: NonFiniteRejectedEvent,
    EventCode.REJECTED_OUTLIER: OutlierRejectedEvent,
    EventCode.REJECTED_OUT_OF_ORDER: OutOfOrderRejectedEvent,
    EventCode.STALE_DATA: StaleDataEvent,
    EventCode.SPARSE_ARRIVAL: SparseArrivalEvent,
    EventCode.FROZEN_SIGNAL: FrozenSignalAlarmEvent,
    EventCode.FROZEN_SIGNAL_RELEASED: FrozenSignalReleasedEvent,
    EventCode.REGIME_CHANGED: RegimeChangedEvent,
    EventCode.CRITICAL_SINGULARITY: CriticalSingularityEvent,
    EventCode.SINGULARITY_CLEARED: SingularityClearedEvent,
    EventCode.NORMAL_OPERATION_RESTORED: NormalOperationRestoredEvent,
    EventCode.SINKHORN_NOT_CONVERGED: SinkhornNotConvergedEvent,
    EventCode.LOW_EPSILON: LowEpsilonEvent,
    EventCode.TOPOLOGICAL_BRANCH_FROZEN: FreezingTopologicalBranchEvent,
    EventCode.TOPOLOGICAL_BRANCH_RELEASED: TopologicalBranchReleasedEvent,
}


def decode_events(bits: int, timestamp_ns: int | None = None) -> tuple[Event, ...]:
    """One event record per set bit, in bit order."""
    if not bits:
        return ()
    return tuple(kind(code, kind.__doc__.strip(), timestamp_ns)
                 for code, kind in EVENT_TYPES.items() if bits & code)


# --- results ----------------------------------------------------------------------------------


@attrs.frozen
class Telemetry:
    """Per-tick telemetry (spec §16 names plus the orchestrator's internals).

    ``dgm_entropy`` is None and ``mode_collapse_warning`` False while kernel B is not enabled.
    Units: signal units for predictions, threshold and statistic; weights on the simplex.
    """

    holder_exponent: float
    weights: tuple[float, ...]
    kernel_names: tuple[str, ...]
    kernel_predictions: Mapping[str, float]
    kurtosis: float
    dgm_entropy: float | None
    adaptive_threshold: float
    cusum_statistic: float
    distance_to_collapse: float
    free_energy: float
    sinkhorn_converged: bool
    sinkhorn_error: float
    sinkhorn_epsilon: float
    residual_sigma: float
    degraded_inference_mode: bool
    emergency_mode: bool
    regime_change_detected: bool
    mode_collapse_warning: bool
    frozen_signal: bool
    #: last reading of the identification engine (refreshed every ``wtmm_refresh_steps`` ticks):
    #: WTMM Hölder exponent of the buffer (``holder_exponent`` is its smoothed value), spectrum width
    holder_exponent_raw: float
    singularity_spectrum_width: float
    #: Koopman (DMD) modes by decreasing energy share: cycles and log-growth per
    #: ``signal_sampling_interval``, and shares; at most ``koopman_top_k``, those whose share is
    #: below ``koopman_min_power`` dropped
    koopman_frequencies: tuple[float, ...]
    koopman_growth_rates: tuple[float, ...]
    koopman_powers: tuple[float, ...]
    #: Paley–Wiener integral of the increments' spectral density, and integral ≤ the configured max
    paley_wiener_integral: float
    paley_wiener_regular: bool
    #: sampling too coarse for the finest wavelet scale: Hölder reading and breaker held
    topological_branch_frozen: bool
    events: tuple[Event, ...]
    #: signature depth and latency/jitter figures (ns) when load shedding is on, else None
    load_shedding: Mapping[str, Any] | None = None


@attrs.frozen
class PredictionResult:
    """One-step-ahead forecast ŷ_{t+1} with its interval, mode and telemetry."""

    reference_prediction: float
    confidence_lower: float
    confidence_upper: float
    operating_mode: int
    telemetry: Telemetry | None = None
    request_id: str | None = None

    @property
    def mode(self) -> str:
        return OperatingMode.to_string(self.operating_mode)
