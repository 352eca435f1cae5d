"""Host-side types of the API: observations, results, telemetry, operating modes and events."""

from __future__ import annotations

import datetime as _dt
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from ..domain import DomainError, TimestampError
from ..domain._events import EventCode

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def to_timestamp_ns(timestamp: _dt.datetime | int | np.integer) -> int:
    """UTC nanoseconds since the epoch from an aware datetime (or integer nanoseconds).

    The result is always in (−2⁶³, 2⁶³): int64 nanoseconds, about the years 1678 to 2262, −2⁶³
    being the core's "untimed" marker.

    Raises:
        TimestampError: a naive datetime, a time outside int64 nanoseconds, or anything that is
            not a datetime or an integer.
    """
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None or timestamp.tzinfo.utcoffset(timestamp) is None:
            raise TimestampError(f"timestamp {timestamp.isoformat()} is naive; give it a timezone, "
                                 "e.g. datetime.now(timezone.utc)")
        delta = timestamp - _EPOCH
        stamp = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
        if not -(2**63) < stamp < 2**63:
            raise TimestampError(f"timestamp {timestamp.isoformat()} is outside int64 nanoseconds (about "
                                 f"1678-09-21 to 2262-04-11 UTC)")
        return stamp
    if isinstance(timestamp, (int, np.integer)) and not isinstance(timestamp, bool):
        if not -(2**63) < timestamp < 2**63:
            raise TimestampError(f"timestamp {timestamp} ns does not fit in int64")
        return int(timestamp)
    raise TimestampError(f"timestamp must be a timezone-aware datetime or integer nanoseconds, got "
                         f"{type(timestamp).__name__}")


def _real_kind(value: Any) -> bool:
    """True for a real number: Python int/float, NumPy integer/floating (never a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def to_magnitude(value: Any) -> float:
    """The scalar value of an observation as float64.

    Accepted: a Python or NumPy int or float, or an array (NumPy, JAX) of an integer or floating
    dtype and shape () or (1,). Non-finite values are returned as they are: the core rejects them
    as an event (as it rejects finite values beyond 1e100).

    Raises:
        DomainError: a bool (Python or NumPy), str, bytes, None, complex or any other object, a
            bool/str/object array, a shape other than () or (1,), or an int beyond float64.
    """
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not _real_kind(value):
            raise DomainError(f"magnitude must be a real number, got a bool ({value!r})")
        try:
            return float(value)
        except OverflowError as exc:  # a Python int beyond float64's range
            raise DomainError(f"magnitude (an integer of {len(str(abs(value)))} digits) does not fit in "
                              f"float64") from exc
    is_array = hasattr(value, "dtype") or isinstance(value, (list, tuple))
    if not is_array or isinstance(value, (str, bytes, np.generic)):
        raise DomainError(f"magnitude must be a real number, got {type(value).__name__} ({value!r:.40})")
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DomainError(f"magnitude must be a real number, got an array of dtype {array.dtype}")
    if array.shape not in ((), (1,)):
        raise DomainError(f"magnitude must be a scalar or shape (1,), got shape {array.shape}")
    return float(array.reshape(()))


@attrs.frozen
class ProcessState:
    """One observation (y_t, τ_utc), checked when it is built.

    Attributes:
        magnitude: the value y_t: a real number (int or float, Python or NumPy), or an array of
            shape () or (1,) and a numeric dtype. bool, str, None and other objects raise
            ``DomainError`` (see :func:`to_magnitude`); NaN/±inf are admitted and rejected by
            the core as events.
        timestamp_utc: timezone-aware datetime, or integer UTC nanoseconds (a naive datetime,
            a float, a bool or anything else raises ``TimestampError``).
        state_tag: optional label carried through (e.g. the asset id).
        dispersion_proxy: optional externally supplied dispersion (informational).
    """

    magnitude: Any = attrs.field(validator=lambda _self, _attr, value: to_magnitude(value))
    timestamp_utc: _dt.datetime | int = attrs.field(validator=lambda _self, _attr, value: to_timestamp_ns(value))
    state_tag: str | None = None
    dispersion_proxy: Any = None

    @property
    def timestamp_ns(self) -> int:
        return to_timestamp_ns(self.timestamp_utc)

    def validate_domain(self, sigma_bound: float, sigma_val: float, center: float = 0.0) -> bool:
        """Catastrophic-outlier test: finite and |magnitude − center| ≤ sigma_bound·sigma_val."""
        value = to_magnitude(self.magnitude)
        return math.isfinite(value) and abs(value - center) <= sigma_bound * sigma_val


_INT64_MAX = 2**63 - 1


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))


def batch_values(values: Any) -> np.ndarray:
    """``values`` of a :class:`ColumnarBatch` as float64[N].

    A 1-D array (NumPy, JAX) of an integer or floating dtype, or a sequence of real numbers
    checked one by one (so a ``True`` in a list of floats is refused, not read as 1.0).

    Raises:
        DomainError: a bool, str, complex or object dtype, a non-number in a sequence (naming its
            row), or not one-dimensional.
    """
    if _is_sequence(values):
        out = np.empty(len(values), dtype=np.float64)
        for row, value in enumerate(values):
            if not _real_kind(value):
                raise DomainError(f"columnar batch value at row {row} must be a real number, got "
                                  f"{type(value).__name__} ({value!r:.40})")
            out[row] = to_magnitude(value)
        return out
    if not hasattr(values, "__array__") or isinstance(values, (str, bytes, np.generic)):
        raise DomainError(f"columnar batch values must be a 1-D array or a sequence of numbers, got "
                          f"{type(values).__name__}")
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise DomainError(f"columnar batch values must be real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise DomainError(f"columnar batch values must be one-dimensional, got shape {array.shape}")
    return array.astype(np.float64)


def batch_timestamps(timestamps: Any) -> np.ndarray:
    """``timestamps_ns`` of a :class:`ColumnarBatch` as int64[N] UTC nanoseconds.

    A 1-D array of an integer dtype, or a sequence (or object array) of integers and timezone-aware
    datetimes checked one by one (as :func:`to_timestamp_ns`); every value in (−2⁶³, 2⁶³): −2⁶³ is
    the core's "untimed" marker.

    Raises:
        TimestampError: naming the first offending row: a float (NaN, or any float array: float64
            holds integers exactly only up to 2⁵³ ns, about 104 days after 1970), a naive datetime
            or ``datetime64``, a bool, a str, None, or a value outside int64.
        DomainError: not one-dimensional.
    """
    if _is_sequence(timestamps):
        out = np.empty(len(timestamps), dtype=np.int64)
        for row, stamp in enumerate(timestamps):
            try:
                out[row] = to_timestamp_ns(stamp)
            except TimestampError as exc:
                raise TimestampError(f"timestamp at row {row}: {exc}") from None
        return out
    if not hasattr(timestamps, "__array__") or isinstance(timestamps, (str, bytes, np.generic)):
        raise TimestampError(f"columnar batch timestamps must be a 1-D integer array or a sequence, got "
                             f"{type(timestamps).__name__}")
    array = np.asarray(timestamps)
    if array.ndim != 1:
        raise DomainError(f"columnar batch timestamps must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind == "O":
        return batch_timestamps(list(array))
    if array.size == 0 and array.dtype.kind in "iuf":
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind in "iu":
        bad = np.flatnonzero(array > np.uint64(_INT64_MAX) if array.dtype.kind == "u" else array == -_INT64_MAX - 1)
        if bad.size:
            raise TimestampError(f"timestamp at row {bad[0]} ({array[bad[0]]} ns) does not fit in int64 "
                                 f"(-2**63 is reserved for untimed ticks)")
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        nonfinite = np.flatnonzero(~np.isfinite(array))
        row = int(nonfinite[0]) if nonfinite.size else 0
        detail = ("a float; float64 holds integer nanoseconds exactly only up to 2**53 (about 104 days after "
                  "1970): pass an integer array")
    elif array.dtype.kind == "M":
        row, detail = 0, "a naive datetime64; pass integer UTC nanoseconds (datetime64[ns] viewed as int64)"
    else:
        row, detail = 0, f"of dtype {array.dtype}, not integer nanoseconds"
    shown = repr(array[row]) if array.size else "empty array"
    raise TimestampError(f"timestamp at row {row} ({shown}) is {detail}")


def pandas_kind(obj: Any) -> str | None:
    """``"series"``, ``"frame"`` or ``"index"`` for a pandas object, else None.

    pandas is never imported here: an object can only be a pandas object if pandas is already
    in ``sys.modules`` (it is an optional dependency).
    """
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(obj, pd.DataFrame):
        return "frame"
    if isinstance(obj, pd.Series):
        return "series"
    if isinstance(obj, pd.Index):
        return "index"
    return None


def series_values(series: Any, what: str = "history") -> np.ndarray:
    """The values of a pandas Series (or Index) as float64[T].

    Integer and floating dtypes, NumPy's and pandas' nullable ones (a missing value, ``pd.NA``,
    becomes NaN: the core rejects it as an event, ``fit_history`` refuses it), or an object
    column of real numbers checked one by one. ``what`` names the input in messages.

    Raises:
        DomainError: a bool, string, datetime, categorical or other non-numeric dtype, or a
            non-number in an object column (naming its position).
    """
    kind = getattr(series.dtype, "kind", "O")
    if kind in "iuf":
        return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    if kind == "O" and str(series.dtype) == "object":
        return _checked_sequence(list(series.to_numpy()), what)
    raise DomainError(f"{what} must hold real numbers, got dtype {series.dtype}")


def _is_datetime_column(column: Any) -> bool:
    return getattr(column.dtype, "kind", "") == "M"


def frame_values(frame: Any, what: str = "history") -> np.ndarray:
    """The value columns of a pandas DataFrame: float64[T] for one column, float64[N, T] (one
    row per column, in column order) for N columns. Datetime columns are timestamps, not
    values: they are left out (as is the index).

    Raises:
        DomainError: no value column, or a column that is not numeric (named).
    """
    names = [name for name in frame.columns if not _is_datetime_column(frame[name])]
    if not names:
        raise DomainError(f"{what}: the DataFrame has no value column (columns: {list(frame.columns)!r})")
    rows = [series_values(frame[name], f"{what} column {name!r}") for name in names]
    return rows[0] if len(rows) == 1 else np.stack(rows)


def _checked_sequence(history: Any, what: str) -> np.ndarray:
    array = np.asarray(history, dtype=object)
    for index, value in enumerate(array.ravel()):
        if not _real_kind(value):
            raise DomainError(f"{what} value at index {index} must be a real number, got "
                              f"{type(value).__name__} ({value!r:.40})")
    try:
        return array.astype(np.float64)
    except OverflowError as exc:
        raise DomainError(f"{what} holds an integer beyond float64") from exc


def history_values(history: Any, what: str = "history") -> np.ndarray:
    """Past values for ``fit_history`` as a float64 array (any shape; the caller checks it).

    Accepted: an array (NumPy, JAX) of an integer or floating dtype; (nested) sequences of real
    numbers; a pandas Series (float64[T]); a pandas DataFrame of value columns (one column:
    float64[T]; N columns, one per asset of a batched state: float64[N, T]; datetime columns and
    the index are timestamps, so they are left out). pandas is optional and never imported here.
    ``what`` names the input in messages.

    Raises:
        DomainError: a bool, str, None or other non-number (naming its flat index, or its
            column), or a dtype other than integer or floating.
    """
    kind = pandas_kind(history)
    if kind == "frame":
        return frame_values(history, what)
    if kind in ("series", "index"):
        return series_values(history, what)
    if _is_sequence(history):
        return _checked_sequence(history, what)
    if not hasattr(history, "__array__") or isinstance(history, (str, bytes)):
        raise DomainError(f"{what} must be an array or a sequence of numbers, got {type(history).__name__}")
    array = np.asarray(history)
    if array.dtype.kind not in "iuf":
        raise DomainError(f"{what} must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@attrs.frozen
class ColumnarBatch:
    """Observations of many assets at once: float64[N] values and int64[N] UTC nanoseconds.

    Attributes:
        values: float64[N]: a 1-D array of an integer or floating dtype, or a sequence of real
            numbers (``batch_values``; bool, str, None → ``DomainError``). NaN/±inf are admitted
            and rejected by the core per asset, as events.
        timestamps_ns: int64[N]: a 1-D integer array, or a sequence of integers and aware
            datetimes (``batch_timestamps``; floats, NaN, naive datetimes → ``TimestampError``
            naming the row).

    Both arrays are the batch's own copies, read-only: what was checked is what the core (and
    the predictor's clock) gets.

    Raises:
        DomainError: bad values, or values and timestamps of different lengths.
        TimestampError: a bad timestamp (the message names its row).
    """

    values: np.ndarray = attrs.field(converter=lambda values: _read_only(batch_values(values)))
    timestamps_ns: np.ndarray = attrs.field(converter=lambda stamps: _read_only(batch_timestamps(stamps)))

    def __attrs_post_init__(self) -> None:
        if self.values.shape != self.timestamps_ns.shape:
            raise DomainError(f"columnar batch needs values and timestamps of one length, got "
                              f"{self.values.shape[0]} values and {self.timestamps_ns.shape[0]} timestamps")


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


class MagnitudeRejectedEvent(Event):
    """DomainError: the value was finite but |y| > 1e100 (MAGNITUDE_LIMIT); the tick was ignored."""


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


class KernelUnstableEvent(Event):
    """A kernel's simulation or solve was non-finite or diverged; it fell back to a safe forecast
    (``Telemetry.kernel_events`` names the kernel)."""


class GradientInstabilityEvent(Event):
    """A kernel's training clipped its gradient norm too many iterations in a row; its learning
    rate was lowered."""


class ModeCollapseEvent(Event):
    """A kernel's solution collapsed (its entropy stayed below the threshold): it gets no weight
    until it recovers; ``mode_collapse_warning`` stays on meanwhile."""


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
    EventCode.REJECTED_MAGNITUDE: MagnitudeRejectedEvent,
    EventCode.KERNEL_UNSTABLE: KernelUnstableEvent,
    EventCode.KERNEL_GRADIENT_INSTABILITY: GradientInstabilityEvent,
    EventCode.KERNEL_MODE_COLLAPSE: ModeCollapseEvent,
}


def decode_events(bits: int, timestamp_ns: int | None = None) -> tuple[Event, ...]:
    """One event record per set bit, in bit order."""
    if not bits:
        return ()
    return tuple(kind(code, (kind.__doc__ or kind.__name__).strip(), timestamp_ns)
                 for code, kind in EVENT_TYPES.items() if bits & code)


# --- results ----------------------------------------------------------------------------------


@attrs.frozen
class Telemetry:
    """Per-tick telemetry (spec §16 names plus the orchestrator's internals).

    ``dgm_entropy`` is the ``"dgm_entropy"`` diagnostic of the first enabled kernel that reports
    one (kernel B), else None; ``mode_collapse_warning`` is on while any kernel reports
    ``KernelEvent.MODE_COLLAPSE``.
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
    #: what kernels with a ``report`` said about this tick: kernel name → diagnostic name → value
    #: (units are each kernel's; docs/plugins.md), and kernel name → names of its KernelEvent bits
    kernel_diagnostics: Mapping[str, Mapping[str, float]] = attrs.field(factory=dict)
    kernel_events: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)


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
