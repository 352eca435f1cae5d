"""``usp run``: stream a CSV file through a predictor, score it, and write its outputs atomically.

The replay and the score are ``usp.backtest``'s (``stream`` and ``score``): the summary is a
``BacktestResult``, the figures ``usp.backtest`` returns for the same series and config.

Outputs are checked and opened before any work (``check_outputs``, ``adapters.output_files``):
files are written through temporary files renamed on success, so a failed run leaves existing
files untouched; devices and pipes (``/dev/stdout``, a FIFO) are written directly.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from ._backtest import BacktestResult, score, stream
from .adapters.clocks import ReplayClock
from .adapters.csv_reader import HeaderRow, read_observations
from .adapters.output_files import PendingOutput, is_stream
from .adapters.report_plot import draw_report, plot_format
from .application import result_from_output
from .composition import UniversalPredictor
from .domain import ConfigError, DomainError, PredictorConfig
from .domain._core import ReportLayout


def check_outputs(data: Path, out: Path | None, plot: Path | None, config: Path | None = None) -> str | None:
    """Refuse outputs that would destroy the input, the config file or each other, and a ``--plot``
    without a known format (before any work is done). Returns the plot's image format.

    An output written as a stream (a character device such as ``/dev/null`` or ``/dev/stdout``, a
    pipe) replaces no file, so it is never refused as one of them.

    Raises:
        ConfigError: ``--out`` or ``--plot`` is the input file or the config file (also through a
            link or another spelling of its path), both are one file, or ``--plot`` names no known
            format.
    """
    for option, path in (("--out", out), ("--plot", plot)):
        if path is None or is_stream(path):
            continue
        for role, source in (("input file", data), ("config file", config)):
            if source is not None and _same_file(path, source):
                raise ConfigError(f"{option} {path} is the {role} {source}; write it elsewhere")
    if (out is not None and plot is not None and not (is_stream(out) and is_stream(plot))
            and (_same_file(out, plot) or out.resolve() == plot.resolve())):
        raise ConfigError(f"--out {out} and --plot {plot} are one file")
    return None if plot is None else plot_format(plot)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


PREDICTION_COLUMNS = ("timestamp_ns", "value", "prediction_next", "lower", "upper", "mode")


def replay(data: Path, config: PredictorConfig, rows=None, progress: bool = True) -> BacktestResult:
    """Stream ``data`` through a predictor on a replay clock and score it (``usp.backtest``'s
    replay and score); write one row per tick to the ``csv.writer`` ``rows`` (header first) when
    given.

    Raises:
        DomainError: the file holds no observations (and as ``read_observations``).
    """
    from tqdm import tqdm

    predictor = UniversalPredictor(config, clock=ReplayClock())  # as usp._backtest.replay_predictor builds it
    names = predictor.kernel_names
    on_tick = None
    if rows is not None:
        rows.writerow([*PREDICTION_COLUMNS, *[f"weight_{n}" for n in names], "regime_change", "emergency",
                       "holder_exponent", "degraded", "events"])

        def on_tick(stamp: int, value: float, output: np.ndarray) -> None:
            rows.writerow(_prediction_row(output, names, stamp, value, predictor.kernel_reports))

    observations = read_observations(data, config.signal_sampling_interval, on_header=_note_header(data))
    recording = stream(predictor, tqdm(observations, total=_count_rows(data), unit="tick", disable=not progress,
                                       file=sys.stderr), on_tick)
    if recording.values.size == 0:
        raise DomainError(f"{data}: no observations")
    return score(recording, names, config.confidence_level, predictor.kernel_reports)


def _prediction_row(output: np.ndarray, names: tuple[str, ...], stamp: int, value: float,
                    reports: ReportLayout) -> list:
    result = result_from_output(output, names, stamp, reports=reports)
    telemetry = result.telemetry
    assert telemetry is not None  # (result_from_output always decodes it)
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
        show: Callable[[BacktestResult], None] | None = None, config_path: Path | None = None) -> BacktestResult:
    """Stream ``data`` through a predictor; write the predictions to ``out`` and the report to ``plot``.

    Both outputs are checked (``check_outputs``, with ``config_path`` the file ``config`` came
    from), and created and opened, before the predictor is built: a file is written to a
    temporary file renamed over it on success, so an existing file is replaced only by a complete
    one; a device or pipe is written directly. ``show`` gets the summary once the predictions are
    written, before the plot is drawn.
    """
    image_format = check_outputs(data, out, plot, config_path)
    with contextlib.ExitStack() as outputs:
        pending_out = outputs.enter_context(PendingOutput(out)) if out is not None else None
        pending_plot = outputs.enter_context(PendingOutput(plot)) if plot is not None else None
        if pending_out is None:
            result = replay(data, config, progress=progress)
        else:
            with pending_out.open("w") as handle:
                result = replay(data, config, csv.writer(handle), progress)
            pending_out.commit()
        if show is not None:
            show(result)
        if pending_plot is not None and image_format is not None:  # (check_outputs names a plot's format)
            with pending_plot.open("wb") as handle:
                draw_report(cast(BinaryIO, handle), image_format, result.timestamps_ns, result.values, result.outputs,
                            result.kernel_names)
            pending_plot.commit()
    return result


__all__ = ["PREDICTION_COLUMNS", "check_outputs", "replay", "run"]
