"""``usp.backtest``: stream a series through a predictor on a replay clock and score it, exactly as
``usp run`` does (the command line computes its summary here too).

The score is walk-forward: the forecast made at tick t (for t+1) is compared with the value at
t+1, over the ticks after calibration where both ticks were accepted (every figure is defined in
``BacktestResult``'s docstring).

Inputs: a list or a NumPy array of values, a pandas Series or DataFrame (pandas is optional and
never imported to read them: an object can only be a pandas object if pandas is already loaded),
with timestamps from a tz-aware ``DatetimeIndex``, a datetime column or ``timestamps=``. Without
timestamps, tick i is at ``i * signal_sampling_interval`` seconds after the epoch, as for a
one-column file in ``usp run``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from .adapters.clocks import ReplayClock
from .adapters.csv_reader import NS_PER_SECOND, TIMESTAMP_MAX_NS
from .application.config_file import load_config
from .application.results import OutputColumns, result_from_output
from .application.types import (
    OperatingMode,
    PredictionResult,
    ProcessState,
    batch_timestamps,
    history_values,
    pandas_kind,
    series_values,
)
from .composition import UniversalPredictor
from .domain import (
    ConfigError,
    DomainError,
    KernelSpec,
    PredictorConfig,
    TimestampError,
)
from .domain._core import Out, ReportLayout, report_size
from .domain._events import EventCode


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


_FLOAT_EQ = attrs.cmp_using(eq=_same_float)
_ARRAY_EQ = attrs.cmp_using(eq=_same_array)


@attrs.frozen(unsafe_hash=False)
class BacktestResult(OutputColumns):
    """The walk-forward score of a replay (every figure of ``usp run``'s summary) and its ticks.

    Two results are equal when every figure and every per-tick array is equal (NaN equal to
    NaN); ``ticks_per_second`` (wall-clock) is not compared. Not hashable (it holds arrays).

    **Definitions.** With T ticks, ``y[t] = values[t]``, ``ŷ[t] = reference_prediction[t]`` (the
    forecast made at tick t for the next tick), ``[lo[t], hi[t]] = [confidence_lower[t],
    confidence_upper[t]]``, and tick t
    *accepted* when its event bits hold no rejection (``EventCode.rejected()``), the scored
    pairs are the one-step-ahead pairs (t, t+1), 0 ≤ t < T − 1, with

    - tick t out of calibration (its ``Out.CALIBRATING`` flag is 0: it is at least the
      ``wtmm_buffer_size``-th accepted tick), and
    - ticks t and t+1 both accepted (a rejected tick, such as NaN or an outlier, is neither a
      forecast origin nor a target; the forecast made before it is not scored).

    Over the set E of scored pairs, with ``e[t] = y[t+1] − ŷ[t]``:

    Attributes:
        ticks: observations streamed (T), rejected ones included.
        evaluated: the number of scored pairs, |E|.
        rmse: ``sqrt(mean(e[t]²))`` over E (signal units); NaN when E is empty.
        mae: ``mean(|e[t]|)`` over E (signal units); NaN when E is empty.
        mase: ``mae`` over the mean absolute error of the last-value forecast on the same pairs,
            ``mean(|y[t+1] − y[t]|)`` over E (in-sample, one step, not a separate training
            set); below 1 beats it. inf when that denominator is 0 and ``mae`` is not, NaN when
            both are 0 or E is empty.
        coverage: share of E with ``lo[t] ≤ y[t+1] ≤ hi[t]`` (bounds included; 0..1); NaN when
            E is empty.
        nominal: the interval's nominal coverage, ``confidence_level`` (0..1).
        regime_changes: CUSUM alarms: ticks whose event bits hold ``REGIME_CHANGED`` (a rejected
            tick never does, although it repeats the last valid output's flags).
        emergency_ticks: ticks in emergency mode (roughness circuit breaker): ticks whose
            ``Out.EMERGENCY`` flag is set; a rejected tick keeps the mode it was in.
        rejected: ticks rejected (non-finite, beyond 1e100, outlier or out of order).
        sparse_ticks: ticks further apart than ``besov_nyquist_interval_ns`` from the previous
            accepted one (weights held): event bit ``SPARSE_ARRIVAL`` (accepted ticks only).
        branch_frozen_ticks: ticks with the roughness branch frozen (sampling too coarse for the
            finest wavelet scale): the ``Out.BRANCH_FROZEN`` flag; a rejected tick keeps it.
        timestamps_ns: int64[T], UTC nanoseconds of each tick.
        values: float64[T], the observations.
        outputs: float64[T, Out.length(K, M)], the core's output vector of each tick (layout
            ``usp.domain._core.Out``; the properties below read it). A rejected tick's row is the
            last valid one with only its event bits replaced.
        kernel_names: the K kernels, in weight order.
        kernel_reports: the layout of the outputs' report block (``usp.domain._core.report_layout``;
            None when no kernel reports).
        ticks_per_second: throughput, the T − 1 ticks after the first (which may compile) over
            their wall-clock seconds; informational, not part of equality.
    """

    ticks: int
    evaluated: int
    rmse: float = attrs.field(eq=_FLOAT_EQ)
    mae: float = attrs.field(eq=_FLOAT_EQ)
    mase: float = attrs.field(eq=_FLOAT_EQ)
    coverage: float = attrs.field(eq=_FLOAT_EQ)
    nominal: float
    regime_changes: int
    emergency_ticks: int
    rejected: int
    sparse_ticks: int
    branch_frozen_ticks: int
    timestamps_ns: np.ndarray = attrs.field(eq=_ARRAY_EQ, converter=_read_only, repr=False)
    values: np.ndarray = attrs.field(eq=_ARRAY_EQ, converter=_read_only, repr=False)
    outputs: np.ndarray = attrs.field(eq=_ARRAY_EQ, converter=_read_only, repr=False)
    kernel_names: tuple[str, ...]
    kernel_reports: ReportLayout = None
    ticks_per_second: float = attrs.field(default=math.nan, eq=False)

    # -- per-tick views (float64[T] unless stated) ---------------------------------------------
    @property
    def accepted(self) -> np.ndarray:
        """bool[T]: the tick was not rejected."""
        return (self.events & int(EventCode.rejected())) == 0

    def result(self, tick: int) -> PredictionResult:
        """The full ``PredictionResult`` of one tick (telemetry and decoded events included)."""
        return result_from_output(self.outputs[tick], self.kernel_names, int(self.timestamps_ns[tick]),
                                  reports=self.kernel_reports)

    def to_frame(self) -> Any:
        """The ticks as a pandas DataFrame indexed by UTC time: value, prediction (for the next
        tick), lower, upper, mode, one ``weight_<kernel>`` column per kernel, regime_change,
        emergency, events (``EventCode`` bits). Needs pandas."""
        import pandas as pd

        frame = pd.DataFrame(
            {"value": self.values, "prediction": self.reference_prediction, "lower": self.confidence_lower,
             "upper": self.confidence_upper,
             "mode": pd.Categorical([OperatingMode.to_string(mode) for mode in self.operating_mode],
                                    categories=["inference", "calibration", "diagnostic"]),
             **{f"weight_{name}": self.weights[:, i] for i, name in enumerate(self.kernel_names)},
             "regime_change": self.outputs[:, Out.REGIME_CHANGE] > 0,
             "emergency": self.outputs[:, Out.EMERGENCY] > 0, "events": self.events},
            index=pd.DatetimeIndex(pd.to_datetime(self.timestamps_ns, unit="ns", utc=True), name="timestamp"))
        return frame

    # -- the summary of ``usp run`` --------------------------------------------------------------
    def table(self) -> str:
        """The summary as ``usp run`` prints it: one ``label  figure`` line per figure."""
        rows = [("ticks", f"{self.ticks}"), ("evaluated (after calibration)", f"{self.evaluated}"),
                ("RMSE", f"{self.rmse:.6g}"), ("MAE", f"{self.mae:.6g}"),
                ("MASE (vs last value)", f"{self.mase:.4f}"),
                (f"interval coverage (nominal {self.nominal:.0%})", f"{self.coverage:.2%}"),
                ("regime changes", f"{self.regime_changes}"),
                ("ticks in emergency mode", f"{self.emergency_ticks}"),
                ("rejected ticks", f"{self.rejected}"),
                ("ticks beyond the Nyquist limit", f"{self.sparse_ticks}"),
                ("ticks with the roughness branch frozen", f"{self.branch_frozen_ticks}"),
                ("throughput (after compiling)", f"{self.ticks_per_second:,.0f} ticks/s")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

    def sampling_advice(self, config: PredictorConfig) -> str | None:
        """A warning when the data are sampled more coarsely than the config's Nyquist limit: the
        roughness branch froze, or over a tenth of the ticks were sparse (a few long gaps, such
        as missing days, are only counted in the table)."""
        if not (self.branch_frozen_ticks or 10 * self.sparse_ticks > self.ticks):
            return None
        return (f"{self.sparse_ticks} of {self.ticks} ticks arrived further apart than besov_nyquist_interval_ns = "
                f"{config.besov_nyquist_interval_ns:_} ns (the weights hold on those ticks), and the roughness "
                f"reading and circuit breaker were frozen on {self.branch_frozen_ticks}. If the data are "
                f"sampled this coarsely by design, set [core] besov_nyquist_interval_ns to about twice their "
                f"spacing times wtmm_min_scale (and [numerical] signal_sampling_interval to the spacing; a file "
                f"without timestamps is spaced by it), as examples/co2_weekly.toml does.")


# --- the replay and its score (shared with ``usp run``) -------------------------------------------


def replay_predictor(config: PredictorConfig, *, kernels: Iterable[KernelSpec] | None = None,
                     plugin_manager: Any = None) -> UniversalPredictor:
    """A ``UniversalPredictor`` on a fresh ``ReplayClock``: "now" is the newest timestamp seen,
    so replayed history is never stale."""
    return UniversalPredictor(config, clock=ReplayClock(), kernels=kernels, plugin_manager=plugin_manager)


@attrs.frozen
class Recording:
    """What :func:`stream` saw: int64[T] stamps (UTC ns), float64[T] values, float64[T, Out]
    outputs, and the seconds the ticks after the first took."""

    timestamps_ns: np.ndarray
    values: np.ndarray
    outputs: np.ndarray
    seconds: float


#: The event bits a replay does not turn into Python warnings (``StalenessWarning``,
#: ``FrequencyWarning``): :func:`score` counts them from the outputs instead.
_COUNTED_NOT_WARNED = int(EventCode.STALE_DATA | EventCode.SPARSE_ARRIVAL | EventCode.TOPOLOGICAL_BRANCH_FROZEN)


def stream(predictor: UniversalPredictor, observations: Iterable[tuple[int, float]],
           on_tick: Callable[[int, float, np.ndarray], None] | None = None) -> Recording:
    """Step ``predictor`` through ``(timestamp_ns, value)`` pairs, in order; ``on_tick(stamp,
    value, output)`` after each. The clock starts after the first tick, which may compile.

    Each tick goes through ``predictor.step_raw`` and is reported as it reports it (rejections,
    regime changes... logged on ``usp.predictor``), except that staleness, sparse-arrival and
    frozen-branch events raise no ``StalenessWarning``/``FrequencyWarning``: they are recorded in
    the outputs' event bits and counted by :func:`score`. No warning filter is touched
    (``warnings.catch_warnings`` would change process-wide state under other threads), so
    warnings from anything else (another predictor, ``on_tick``) are shown as usual.

    The replay owns ``predictor`` while it runs: nothing else may step it (``backtest`` and
    ``usp run`` build a fresh one).

    Raises:
        ValueError: ``predictor`` sheds load (its signature depth would follow the replay's
            wall-clock latency).
    """
    if predictor.load_shedding is not None:
        raise ValueError("a replay streams through a predictor without load shedding (its depth would follow "
                         "the wall-clock latency of the replay)")
    values: list[float] = []
    stamps: list[int] = []
    outputs: list[np.ndarray] = []
    started = time.perf_counter()
    for stamp, value in observations:
        output, _ = predictor.step_raw(ProcessState(value, stamp), report_mask=~_COUNTED_NOT_WARNED)
        if not values:
            started = time.perf_counter()
        values.append(value)
        stamps.append(stamp)
        outputs.append(output)
        if on_tick is not None:
            on_tick(stamp, value, output)
    seconds = time.perf_counter() - started
    width = Out.length(len(predictor.kernel_names), 0, report_size(predictor.kernel_reports))
    return Recording(np.asarray(stamps, dtype=np.int64), np.asarray(values, dtype=np.float64),
                     np.vstack(outputs) if outputs else np.zeros((0, width)), seconds)


def score(recording: Recording, kernel_names: Sequence[str], nominal: float,
          kernel_reports: ReportLayout = None) -> BacktestResult:
    """The summary of a replay (the one place ``usp run``'s figures are computed), as
    ``BacktestResult`` defines each figure: the forecast made at tick t is scored against the
    value at t+1, for t out of calibration and ticks t and t+1 both accepted. ``nominal`` is the
    config's ``confidence_level``. Throughput counts the T − 1 ticks after the first.

    Raises:
        DomainError: no ticks.
    """
    values, outputs = recording.values, recording.outputs
    if values.size == 0:
        raise DomainError("no observations")
    rate = max(values.size - 1, 1) / max(recording.seconds, 1e-9)
    predictions, lower, upper = outputs[:-1, Out.PREDICTION], outputs[:-1, Out.LOWER], outputs[:-1, Out.UPPER]
    target, previous = values[1:], values[:-1]
    events = outputs[:, Out.EVENTS].astype(np.int64)
    accepted = (events & int(EventCode.rejected())) == 0
    use = (outputs[:-1, Out.CALIBRATING] == 0) & accepted[1:] & accepted[:-1]
    evaluated = int(use.sum())
    errors = target[use] - predictions[use]
    mae = naive = rmse = mase = coverage = math.nan
    if evaluated:
        mae = float(np.mean(np.abs(errors)))
        rmse = float(np.sqrt(np.mean(errors**2)))
        naive = float(np.mean(np.abs(target[use] - previous[use])))  # (a rejected tick's value may be ±inf)
        mase = mae / naive if naive > 0 else (math.inf if mae > 0 else math.nan)
        coverage = float(np.mean(((target >= lower) & (target <= upper))[use]))
    return BacktestResult(
        ticks=int(values.size), evaluated=evaluated, rmse=rmse, mae=mae, mase=mase, coverage=coverage,
        nominal=float(nominal),
        regime_changes=int(((events & int(EventCode.REGIME_CHANGED)) > 0).sum()),
        emergency_ticks=int((outputs[:, Out.EMERGENCY] > 0).sum()),
        rejected=int((~accepted).sum()),
        sparse_ticks=int(((events & int(EventCode.SPARSE_ARRIVAL)) > 0).sum()),
        branch_frozen_ticks=int((outputs[:, Out.BRANCH_FROZEN] > 0).sum()),
        timestamps_ns=recording.timestamps_ns, values=values, outputs=outputs, kernel_names=tuple(kernel_names),
        kernel_reports=kernel_reports, ticks_per_second=rate)


# --- inputs ------------------------------------------------------------------------------------


def _config(config: PredictorConfig | str | os.PathLike[str] | None) -> PredictorConfig:
    if config is None:
        return PredictorConfig()
    if isinstance(config, PredictorConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config))
    raise ConfigError(f"config must be a PredictorConfig, the path of a TOML file or None, got "
                      f"{type(config).__name__}")


def _pandas() -> Any:
    return sys.modules["pandas"]  # only called for pandas objects: pandas is loaded


def pandas_timestamps(column: Any, what: str) -> np.ndarray:
    """int64[T] UTC nanoseconds from a pandas Series or Index: tz-aware datetimes, integer
    nanoseconds, or objects (aware datetimes, integers) checked row by row.

    Raises:
        TimestampError: naive datetimes (localize them, e.g. ``tz_localize("UTC")``), a missing
            value (NaT, NA; the row is named), a time outside int64 nanoseconds, floats, or
            another dtype.
    """
    kind = getattr(column.dtype, "kind", "O")
    missing = np.flatnonzero(np.asarray(column.isna()))
    if missing.size:
        raise TimestampError(f"{what}: timestamp at row {missing[0]} is missing (NaT)")
    if kind == "M":
        index = _pandas().DatetimeIndex(column)
        if index.tz is None:
            raise TimestampError(f"{what} holds naive datetimes (dtype {column.dtype}); give them a timezone, "
                                 f"e.g. .tz_localize('UTC') (or .dt.tz_localize('UTC') on a column), or pass "
                                 f"timestamps= explicitly")
        try:
            return np.asarray(index.as_unit("ns").asi8, dtype=np.int64)
        except ValueError as exc:  # pandas' OutOfBoundsDatetime
            raise TimestampError(f"{what}: a time is outside int64 nanoseconds (about 1678 to 2262): {exc}") from None
    if kind in "iu":
        return batch_timestamps(column.to_numpy(dtype=np.int64 if kind == "i" else np.uint64))
    if kind == "O" and str(column.dtype) == "object":
        return batch_timestamps(list(column.to_numpy()))
    if kind == "f":
        return batch_timestamps(column.to_numpy())  # refused, naming the row and the reason
    raise TimestampError(f"{what} of dtype {column.dtype} is not timestamps (tz-aware datetimes or integer UTC "
                         f"nanoseconds)")


def _explicit_timestamps(timestamps: Any) -> np.ndarray:
    kind = pandas_kind(timestamps)
    if kind == "frame":
        raise TimestampError("timestamps= must be one-dimensional: a DatetimeIndex, a Series or a sequence, "
                             "not a DataFrame")
    if kind is not None:
        return pandas_timestamps(timestamps, "timestamps=")
    if isinstance(timestamps, (str, bytes)) or not (hasattr(timestamps, "__array__") or hasattr(timestamps, "__len__")):
        raise TimestampError(f"timestamps= must be a sequence of aware datetimes or integer UTC nanoseconds, or an "
                             f"integer array, got {type(timestamps).__name__}")
    if hasattr(timestamps, "__array__"):
        return batch_timestamps(timestamps)
    pd = sys.modules.get("pandas")
    if pd is not None:  # an aware pandas Timestamp to its exact nanoseconds (datetime arithmetic keeps µs)
        return batch_timestamps([stamp.as_unit("ns").value if isinstance(stamp, pd.Timestamp) and stamp.tz is not None
                                 else stamp for stamp in timestamps])
    return batch_timestamps(list(timestamps))


def _column(frame: Any, name: Any, role: str) -> Any:
    names = list(frame.columns)
    if name not in names:
        raise DomainError(f"{role}={name!r} is not a column of the DataFrame (columns: {names!r})")
    if names.count(name) > 1:
        raise DomainError(f"{role}={name!r} names {names.count(name)} columns of the DataFrame")
    return frame[name]


def _is_numeric(column: Any) -> bool:
    return getattr(column.dtype, "kind", "O") in "iuf"


def _frame_input(frame: Any, timestamps: Any, time_column: Any, value_column: Any
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and (unless ``timestamps=`` is given) timestamps of a DataFrame."""
    names = list(frame.columns)
    if timestamps is not None and time_column is not None:
        raise TimestampError("give the timestamps either as timestamps= or as time_column=, not both")
    if time_column is not None and time_column == value_column:
        raise DomainError(f"time_column and value_column are both {time_column!r}")
    if value_column is not None:
        value = _column(frame, value_column, "value_column")
    else:
        numeric = [n for n in names if n != time_column and _is_numeric(frame[n])]
        if len(numeric) != 1:
            described = ", ".join(f"{n!r} ({frame[n].dtype})" for n in names) or "none"
            reason = "no numeric column" if not numeric else f"{len(numeric)} numeric columns"
            raise DomainError(f"the DataFrame has {reason} to read values from (columns: {described}); pick one "
                              f"with value_column=")
        value_column, value = numeric[0], frame[numeric[0]]
    values = series_values(value, f"column {value_column!r}")
    if timestamps is not None:
        return values, None
    if time_column is not None:
        return values, pandas_timestamps(_column(frame, time_column, "time_column"), f"column {time_column!r}")
    dated = [n for n in names if n != value_column and getattr(frame[n].dtype, "kind", "") == "M"]
    has_index = isinstance(frame.index, _pandas().DatetimeIndex)
    if len(dated) > 1 or (dated and has_index):
        sources = [repr(n) for n in dated] + (["the DatetimeIndex"] if has_index else [])
        raise TimestampError(f"the DataFrame has several timestamp sources ({', '.join(sources)}); pick one with "
                             f"time_column= (or timestamps=frame.index)")
    if dated:
        return values, pandas_timestamps(frame[dated[0]], f"column {dated[0]!r}")
    if has_index:
        return values, pandas_timestamps(frame.index, "the DatetimeIndex")
    return values, None


def _spaced(count: int, sampling_interval_s: float) -> np.ndarray:
    """Tick i at ``i * round(sampling_interval_s * 1e9)`` ns, as ``usp run`` spaces a one-column file."""
    step_ns = round(sampling_interval_s * NS_PER_SECOND)
    if step_ns < 1:
        raise ConfigError(f"a series without timestamps is spaced by [numerical] signal_sampling_interval = "
                          f"{sampling_interval_s!r} s, below 1 ns")
    if (count - 1) * step_ns > TIMESTAMP_MAX_NS:
        raise ConfigError(f"{count} ticks spaced {step_ns:_} ns apart by [numerical] signal_sampling_interval run "
                          f"beyond int64 nanoseconds (the year 2262); give timestamps or a shorter interval")
    return np.arange(count, dtype=np.int64) * np.int64(step_ns)


def observations(series: Any, sampling_interval_s: float, *, timestamps: Any = None, time_column: Any = None,
                 value_column: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(timestamps_ns int64[T], values float64[T])`` of a backtest's input (rules in
    :func:`backtest`); ``sampling_interval_s`` spaces a series without timestamps.

    Raises:
        DomainError, TimestampError, ConfigError: as :func:`backtest`.
    """
    kind = pandas_kind(series)
    if kind != "frame" and (time_column is not None or value_column is not None):
        raise DomainError(f"time_column= and value_column= pick columns of a DataFrame, not of a "
                          f"{type(series).__name__}")
    stamps: np.ndarray | None = None
    if kind == "frame":
        values, stamps = _frame_input(series, timestamps, time_column, value_column)
    elif kind in ("series", "index"):
        values = series_values(series, "series")
        index = getattr(series, "index", None)
        if timestamps is None and isinstance(index, _pandas().DatetimeIndex):
            stamps = pandas_timestamps(index, "the series' DatetimeIndex")
    else:
        values = history_values(series, "series")
    if values.ndim != 1:
        raise DomainError(f"series must be one-dimensional (T values), got shape {values.shape}")
    if values.size == 0:
        raise DomainError("series holds no observations")
    if timestamps is not None:
        stamps = _explicit_timestamps(timestamps)
    if stamps is None:
        stamps = _spaced(values.size, sampling_interval_s)
    if stamps.shape != values.shape:
        raise DomainError(f"{values.size} values but {stamps.size} timestamps")
    return stamps, values


def backtest(series: Any, config: PredictorConfig | str | os.PathLike[str] | None = None, *,
             timestamps: Any = None, time_column: Any = None, value_column: Any = None,
             kernels: Iterable[KernelSpec] | None = None, plugin_manager: Any = None,
             progress: bool = False) -> BacktestResult:
    """Stream ``series`` tick by tick through a fresh ``UniversalPredictor`` on a ``ReplayClock``
    and score it, exactly as ``usp run`` does: the same figures, and the per-tick outputs.

    Args:
        series: the observations, in time order: a list or 1-D array of real numbers (NaN and
            ±inf are rejected ticks, as in ``usp run``), a pandas Series, or a pandas DataFrame
            (one value column and, optionally, one timestamp column).
        config: a ``PredictorConfig``, the path of a TOML config file, or None for the defaults.
        timestamps: int64[T] UTC nanoseconds, or T timezone-aware datetimes (a sequence, a
            tz-aware ``DatetimeIndex`` or Series). Overrides the series' own timestamps.
        time_column: the DataFrame column of timestamps (tz-aware datetimes or integer UTC ns).
            Default: the one datetime column, else a ``DatetimeIndex``, else none.
        value_column: the DataFrame column of values. Default: the one numeric column (other
            than ``time_column``).
        kernels, plugin_manager: as for ``UniversalPredictor`` (default: the config's kernels).
        progress: show a progress bar on stderr.

    Timestamps come from ``timestamps=``, else a DataFrame's timestamp column or the
    ``DatetimeIndex`` of a Series or DataFrame (it must be tz-aware), else tick i is at
    ``i * signal_sampling_interval`` seconds after the epoch (as a one-column file in ``usp run``).

    Raises:
        DomainError: no values, values that are not real numbers (bool, str, datetime...), not
            one-dimensional, a missing or ambiguous value column, or not as many timestamps as
            values.
        TimestampError: naive datetimes (a naive ``DatetimeIndex`` included), NaT, floats or
            values outside int64 nanoseconds, or ambiguous timestamp sources.
        ConfigError: a bad config (file or key), or a series without timestamps that its
            ``signal_sampling_interval`` cannot space within int64 nanoseconds.
    """
    config = _config(config)
    stamps, values = observations(series, config.signal_sampling_interval, timestamps=timestamps,
                                  time_column=time_column, value_column=value_column)
    predictor = replay_predictor(config, kernels=kernels, plugin_manager=plugin_manager)
    ticks: Iterable[tuple[int, float]] = zip(stamps.tolist(), values.tolist(), strict=True)
    if progress:
        from tqdm import tqdm

        ticks = tqdm(ticks, total=values.size, unit="tick", file=sys.stderr)
    return score(stream(predictor, ticks), predictor.kernel_names, config.confidence_level,
                 predictor.kernel_reports)


__all__ = ["BacktestResult", "Recording", "backtest", "observations", "pandas_timestamps", "replay_predictor",
           "score", "stream"]
