"""``usp run``: stream a CSV file through a predictor, score it, and write its outputs atomically.

Outputs are checked before any work (``check_outputs``) and written through temporary files
renamed on success (``adapters.output_files``), so a failed run leaves existing files untouched.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np

from .adapters.clocks import ReplayClock
from .adapters.csv_reader import HeaderRow, read_observations
from .adapters.output_files import PendingOutput
from .adapters.report_plot import draw_report, plot_format
from .application import UniversalPredictor, result_from_output
from .application.types import ProcessState
from .domain import ConfigError, DomainError, PredictorConfig
from .domain._core import Out
from .domain._events import EventCode


@attrs.frozen
class RunSummary:
    ticks: int
    evaluated: int
    rmse: float
    mae: float
    mase: float
    coverage: float
    nominal: float
    regime_changes: int
    emergency_ticks: int
    rejected: int
    ticks_per_second: float
    #: ticks further apart than besov_nyquist_interval_ns (weights held), and ticks with the
    #: roughness branch frozen because the sampling is too coarse for the finest wavelet scale
    sparse_ticks: int = 0
    branch_frozen_ticks: int = 0

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

    def table(self) -> str:
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


def summarise(values: np.ndarray, outputs: np.ndarray, nominal: float, seconds: float,
              timed_ticks: int | None = None) -> RunSummary:
    """Score the forecast made at tick t against the value at t+1, after calibration.

    Throughput is ``timed_ticks`` (default: all ticks) over ``seconds``.
    """
    rate = (len(values) if timed_ticks is None else max(timed_ticks, 1)) / max(seconds, 1e-9)
    predictions, lower, upper = outputs[:-1, Out.PREDICTION], outputs[:-1, Out.LOWER], outputs[:-1, Out.UPPER]
    target, previous = values[1:], values[:-1]
    events = outputs[:, Out.EVENTS].astype(np.int64)
    accepted = (events & int(EventCode.rejected())) == 0
    sampling = {"sparse_ticks": int(((events & int(EventCode.SPARSE_ARRIVAL)) > 0).sum()),
                "branch_frozen_ticks": int((outputs[:, Out.BRANCH_FROZEN] > 0).sum())}
    use = (outputs[:-1, Out.CALIBRATING] == 0) & accepted[1:] & accepted[:-1]
    errors = (target - predictions)[use]
    naive = np.abs(target - previous)[use]
    evaluated = int(use.sum())
    if evaluated == 0:
        nan = math.nan
        return RunSummary(len(values), 0, nan, nan, nan, nan, nominal, 0, 0, int((~accepted).sum()), rate,
                          **sampling)
    inside = ((target >= lower) & (target <= upper))[use]
    mae = float(np.mean(np.abs(errors)))
    return RunSummary(
        ticks=len(values), evaluated=evaluated, rmse=float(np.sqrt(np.mean(errors**2))), mae=mae,
        mase=mae / float(np.mean(naive)) if np.mean(naive) > 0 else math.inf,
        coverage=float(np.mean(inside)), nominal=nominal,
        regime_changes=int(outputs[:, Out.REGIME_CHANGE].sum()),
        emergency_ticks=int(outputs[:, Out.EMERGENCY].sum()), rejected=int((~accepted).sum()),
        ticks_per_second=rate, **sampling)


def check_outputs(data: Path, out: Path | None, plot: Path | None) -> str | None:
    """Refuse outputs that would destroy the input or each other, and a ``--plot`` without a known
    format (before any work is done). Returns the plot's image format.

    Raises:
        ConfigError: ``--out`` or ``--plot`` is the input file (also through a link or another
            spelling of its path), both are one file, or ``--plot`` names no known format.
    """
    for option, path in (("--out", out), ("--plot", plot)):
        if path is not None and _same_file(path, data):
            raise ConfigError(f"{option} {path} is the input file {data}; write it elsewhere")
    if out is not None and plot is not None and (_same_file(out, plot) or out.resolve() == plot.resolve()):
        raise ConfigError(f"--out {out} and --plot {plot} are one file")
    return None if plot is None else plot_format(plot)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


PREDICTION_COLUMNS = ("timestamp_ns", "value", "prediction_next", "lower", "upper", "mode")


@attrs.frozen
class Replay:
    """What a run streamed: stamps int64[T] (UTC ns), values float64[T], outputs float64[T, Out]
    (the core's output vectors), the kernel names, and the seconds after the first tick."""

    stamps: np.ndarray
    values: np.ndarray
    outputs: np.ndarray
    kernel_names: tuple[str, ...]
    seconds: float


def replay(data: Path, config: PredictorConfig, rows=None, progress: bool = True) -> Replay:
    """Stream ``data`` through a predictor on a replay clock; write one row per tick to the
    ``csv.writer`` ``rows`` (header first) when given."""
    import warnings

    from tqdm import tqdm

    from .domain import FrequencyWarning, StalenessWarning

    predictor = UniversalPredictor(config, clock=ReplayClock())
    names = predictor.kernel_names
    if rows is not None:
        rows.writerow([*PREDICTION_COLUMNS, *[f"weight_{n}" for n in names], "regime_change", "emergency",
                       "holder_exponent", "degraded", "events"])
    values, stamps, outputs = [], [], []
    observations = read_observations(data, config.signal_sampling_interval, on_header=_note_header(data))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (StalenessWarning, FrequencyWarning))
        for stamp, value in tqdm(observations, total=_count_rows(data), unit="tick", disable=not progress,
                                 file=sys.stderr):
            output, _ = predictor.step_raw(ProcessState(value, stamp))
            if not values:  # throughput counts from the first tick on
                started = time.perf_counter()
            values.append(value)
            stamps.append(stamp)
            outputs.append(output)
            if rows is not None:
                rows.writerow(_prediction_row(output, names, stamp, value))
    seconds = time.perf_counter() - started
    if not values:
        raise DomainError(f"{data}: no observations")
    return Replay(np.asarray(stamps, dtype=np.int64), np.asarray(values), np.vstack(outputs), names, seconds)


def _prediction_row(output: np.ndarray, names: tuple[str, ...], stamp: int, value: float) -> list:
    result = result_from_output(output, names, stamp)
    telemetry = result.telemetry
    return [stamp, repr(value), repr(result.reference_prediction), repr(result.confidence_lower),
            repr(result.confidence_upper), result.mode, *[f"{w:.6g}" for w in telemetry.weights],
            int(telemetry.regime_change_detected), int(telemetry.emergency_mode),
            f"{telemetry.holder_exponent:.4f}", int(telemetry.degraded_inference_mode),
            "|".join(e.name for e in telemetry.events)]


def _note_header(data: Path):
    """A one-column file's first row read as a header is said (it might have been a value)."""
    from tqdm import tqdm

    def note(header: HeaderRow) -> None:
        if len(header.cells) == 1:
            tqdm.write(f"usp: note: {data}, line {header.line}: {header.cells[0]!r} is not a number; read as "
                       "the column header", file=sys.stderr)

    return note


def _count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run(data: Path, config: PredictorConfig, out: Path | None, plot: Path | None, progress: bool = True,
        show: Callable[[RunSummary], None] | None = None) -> RunSummary:
    """Stream ``data`` through a predictor; write the predictions to ``out`` and the report to ``plot``.

    Both outputs are checked and their directories prepared before the predictor is built, and
    both are written atomically (a temporary file renamed on success): an existing file is
    replaced only by a complete one. ``show`` gets the summary once the predictions are
    written, before the plot is drawn.
    """
    image_format = check_outputs(data, out, plot)
    with contextlib.ExitStack() as outputs:
        pending_out = outputs.enter_context(PendingOutput(out)) if out is not None else None
        pending_plot = outputs.enter_context(PendingOutput(plot)) if plot is not None else None
        if pending_out is None:
            result = replay(data, config, progress=progress)
        else:
            with pending_out.open("w") as handle:
                result = replay(data, config, csv.writer(handle), progress)
            pending_out.commit()
        summary = summarise(result.values, result.outputs, config.confidence_level, result.seconds,
                            timed_ticks=len(result.values) - 1)
        if show is not None:
            show(summary)
        if pending_plot is not None:
            with pending_plot.open("wb") as handle:
                draw_report(handle, image_format, result.stamps, result.values, result.outputs,
                            result.kernel_names)
            pending_plot.commit()
    return summary


__all__ = ["Replay", "RunSummary", "check_outputs", "replay", "run", "summarise"]
