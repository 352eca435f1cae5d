"""The ``usp`` command line.

    usp run DATA.csv [--config config.toml] [--out predictions.csv] [--plot report.png]
    usp kernels list
    usp config defaults          # the documented default config.toml on stdout
    usp config check FILE        # validate a config file
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np

from . import _jax_setup
from .adapters.clocks import ReplayClock
from .application import UniversalPredictor, result_from_output
from .application.config_file import load_config
from .application.types import ProcessState
from .domain import ConfigError, DomainError, PredictorConfig, TimestampError, USPError
from .domain._config import FIELDS, SECTIONS
from .domain._core import Out
from .domain._events import EventCode

DEFAULT_CACHE = Path.home() / ".cache" / "usp" / "jax"


# --- reading observations ----------------------------------------------------------------


def _parse_timestamp(text: str, line: int) -> int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DomainError(f"line {line}: cannot parse timestamp {text!r} (ISO 8601 with a timezone, "
                          "or integer UTC nanoseconds)") from exc
    if stamp.tzinfo is None:
        raise TimestampError(f"line {line}: timestamp {text!r} has no timezone (write e.g. "
                             f"{text}Z or {text}+00:00)")
    delta = stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def read_observations(path: Path, sampling_interval_s: float) -> Iterator[tuple[int, float]]:
    """Yield (timestamp_ns, value) from ``timestamp,value`` or single-value-column CSV.

    A header row is recognised when its value field is not a number. Without a timestamp
    column, ticks are spaced by ``signal_sampling_interval`` seconds from the epoch.
    """
    step_ns = round(sampling_interval_s * 1e9)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        index = 0
        for line, row in enumerate(rows, 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) > 2:
                raise DomainError(f"line {line}: expected 'timestamp,value' or one value column, got "
                                  f"{len(row)} fields")
            raw_value = row[-1].strip()
            try:
                value = float(raw_value)
            except ValueError:
                if line == 1:
                    continue  # header
                raise DomainError(f"line {line}: value {raw_value!r} is not a number") from None
            stamp = _parse_timestamp(row[0], line) if len(row) == 2 else index * step_ns
            index += 1
            yield stamp, value


def _count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


# --- the run ------------------------------------------------------------------------------


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


def run(data: Path, config: PredictorConfig, out: Path | None, plot: Path | None,
        progress: bool = True) -> RunSummary:
    """Stream ``data`` through a predictor on a replay clock; write predictions and the plot."""
    import warnings

    from tqdm import tqdm

    from .domain import FrequencyWarning, StalenessWarning

    predictor = UniversalPredictor(config, clock=ReplayClock())
    names = predictor.kernel_names
    total = _count_rows(data)
    values, stamps, outputs = [], [], []
    writer = handle = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        writer.writerow(["timestamp_ns", "value", "prediction_next", "lower", "upper", "mode",
                         *[f"weight_{n}" for n in names], "regime_change", "emergency", "holder_exponent",
                         "degraded", "events"])
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (StalenessWarning, FrequencyWarning))
            for stamp, value in tqdm(read_observations(data, config.signal_sampling_interval), total=total,
                                     unit="tick", disable=not progress, file=sys.stderr):
                output, _ = predictor.step_raw(ProcessState(value, stamp))
                if not values:  # throughput counts from the first tick on
                    started = time.perf_counter()
                values.append(value)
                stamps.append(stamp)
                outputs.append(output)
                if writer is not None:
                    result = result_from_output(output, names, stamp)
                    telemetry = result.telemetry
                    writer.writerow([stamp, repr(value), repr(result.reference_prediction),
                                     repr(result.confidence_lower), repr(result.confidence_upper), result.mode,
                                     *[f"{w:.6g}" for w in telemetry.weights],
                                     int(telemetry.regime_change_detected), int(telemetry.emergency_mode),
                                     f"{telemetry.holder_exponent:.4f}", int(telemetry.degraded_inference_mode),
                                     "|".join(e.name for e in telemetry.events)])
    finally:
        if handle is not None:
            handle.close()
    seconds = time.perf_counter() - started
    if not values:
        raise DomainError(f"{data}: no observations")
    values_array, outputs_array = np.asarray(values), np.vstack(outputs)
    summary = summarise(values_array, outputs_array, config.confidence_level, seconds,
                        timed_ticks=len(values) - 1)
    if plot is not None:
        draw_report(plot, np.asarray(stamps), values_array, outputs_array, names)
    return summary


def draw_report(path: Path, stamps: np.ndarray, values: np.ndarray, outputs: np.ndarray,
                names: tuple[str, ...]) -> None:
    """Three panels: series with the one-step forecast and interval, weights, alarms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = stamps.astype("datetime64[ns]")
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 1.4, 1]})
    shown = outputs[:-1, Out.CALIBRATING] == 0
    top.plot(times, values, color="black", lw=0.8, label="observed")
    top.plot(times[1:][shown], outputs[:-1, Out.PREDICTION][shown], color="tab:blue", lw=0.8,
             label="one-step forecast")
    top.fill_between(times[1:], outputs[:-1, Out.LOWER], outputs[:-1, Out.UPPER], where=shown,
                     color="tab:blue", alpha=0.25, label="prediction interval")
    top.legend(loc="upper left")
    top.set_title("USP one-step-ahead forecast")
    weights = outputs[:, Out.SIZE:Out.SIZE + len(names)]
    middle.stackplot(times, weights.T, labels=[f"kernel {n}" for n in names], alpha=0.8)
    middle.set_ylim(0, 1)
    middle.set_ylabel("weights")
    middle.legend(loc="upper left", fontsize="small")
    bottom.fill_between(times, 0, outputs[:, Out.EMERGENCY], step="post", color="tab:red", alpha=0.3,
                        linewidth=0, label="emergency")
    bottom.fill_between(times, 0, outputs[:, Out.DEGRADED], step="post", color="tab:orange", alpha=0.3,
                        linewidth=0, label="degraded")
    bottom.set_ylim(0, 1)
    for when in times[outputs[:, Out.REGIME_CHANGE] > 0]:
        bottom.axvline(when, color="tab:purple", lw=0.8)
    bottom.plot([], [], color="tab:purple", label="regime change")
    bottom.set_yticks([])
    bottom.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- commands -------------------------------------------------------------------------------


def default_config_toml() -> str:
    """The default configuration as documented TOML (what config.toml holds)."""
    config = PredictorConfig()
    lines = ["# USP configuration. Every key is optional; the values below are the defaults.",
             "# Unknown keys, wrong types and out-of-range values are errors that name the key.",
             "# Keys marked [locked] are never changed by the tuner."]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for name, field in FIELDS.items():
            meta = field.metadata
            if meta["section"] != section:
                continue
            value = getattr(config, name)
            allowed = ("one of " + ", ".join(repr(c) for c in meta["choices"]) if meta["choices"] else
                       f"range [{meta['lo']}, {meta['hi'] if meta['hi'] is not None else 'inf'}]"
                       if meta["lo"] is not None else "")
            notes = "; ".join(part for part in (meta["unit"] and f"unit {meta['unit']}", allowed,
                                                "[locked]" if meta["locked"] else "") if part)
            lines.append(f"# {meta['doc']}" + (f" ({notes})" if notes else ""))
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def config_reference_markdown() -> str:
    """The table of every key (docs/configuration.md is this plus its introduction)."""
    config = PredictorConfig()
    lines: list[str] = []
    for section in SECTIONS:
        lines += ["", f"### `[{section}]`", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for name, field in FIELDS.items():
            meta = field.metadata
            if meta["section"] != section:
                continue
            allowed = (", ".join(repr(c) for c in meta["choices"]) if meta["choices"] else
                       f"[{meta['lo']}, {meta['hi'] if meta['hi'] is not None else '∞'}]"
                       if meta["lo"] is not None else "any")
            unit = f" ({meta['unit']})" if meta["unit"] else ""
            lock = " **Locked.**" if meta["locked"] else ""
            lines.append(f"| `{name}` | `{_toml_value(getattr(config, name))}` | {allowed} | "
                         f"{meta['doc']}{unit}{lock} |")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    return repr(value)


def _kernels_list() -> int:
    from .plugins.manager import available_kernels, build_plugin_manager

    kernels = available_kernels(build_plugin_manager())
    width = max(len(n) for n in kernels)
    for name, spec in sorted(kernels.items()):
        print(f"{name:<{width}}  [{spec.source}]  {spec.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="usp", description="Universal Stochastic Predictor")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="stream a CSV through the predictor")
    run_parser.add_argument("data", type=Path, help="CSV: 'timestamp,value' or one value column")
    run_parser.add_argument("--config", type=Path, help="config.toml (defaults if omitted)")
    run_parser.add_argument("--out", type=Path, help="per-tick predictions CSV to write")
    run_parser.add_argument("--plot", type=Path, help="PNG report to draw")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    kernels = commands.add_parser("kernels", help="installed kernels")
    kernels.add_argument("action", choices=["list"])
    config = commands.add_parser("config", help="configuration helpers")
    config_actions = config.add_subparsers(dest="action", required=True)
    config_actions.add_parser("defaults", help="print the documented default config.toml")
    config_actions.add_parser("reference", help="print the Markdown reference of every key")
    check = config_actions.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "kernels":
            return _kernels_list()
        if args.command == "config":
            if args.action == "defaults":
                sys.stdout.write(default_config_toml())
            elif args.action == "reference":
                sys.stdout.write(config_reference_markdown())
            else:
                load_config(args.file)
                print(f"{args.file}: ok")
            return 0
        _jax_setup.enable_compilation_cache(str(DEFAULT_CACHE))
        cfg = load_config(args.config) if args.config else PredictorConfig()
        if not args.data.is_file():
            raise DomainError(f"{args.data}: no such file")
        summary = run(args.data, cfg, args.out, args.plot, progress=not args.quiet)
    except (USPError, ConfigError) as exc:
        print(f"usp: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nUSP run on {args.data} (kernels: {', '.join(cfg.enabled_kernels)})")
    print(summary.table())
    advice = summary.sampling_advice(cfg)
    if advice is not None:
        print(f"usp: warning: {advice}", file=sys.stderr)
    for label, path in (("predictions", args.out), ("report", args.plot)):
        if path is not None:
            print(f"  {label} written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
