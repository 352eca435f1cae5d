"""``usp tune``: a resumable TPE campaign over walk-forward validation (docs/tuning.md).

    usp tune DATA.csv [DATA.csv ...] [--config config.toml] [--tier fast|deep] [--trials N]
             [--seed S] [--storage URL] [--study NAME] [--export config.toml] [--plot history.png]

``--trials`` is the study's total, so the same command run again resumes (or, on a shared
``--storage``, joins) the study. SIGTERM/SIGINT abandon the running trial (it does not count) and
exit 128 + the signal number after the checkpoint (a second signal: at once, exit 130); SIGUSR1
writes the ``--export-study`` checkpoint after the running trial.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from ._cli_args import positive_int as _positive_int
from .adapters.csv_reader import read_observations
from .adapters.output_files import PendingOutput
from .adapters.report_plot import plot_format
from .application.config_file import load_config
from .application.config_mutation import Guardrails, audit_entries, rollback_if_degraded
from .application.tuning import (
    METRICS,
    TIERS,
    EarlyStopping,
    best_trial,
    default_storage,
    default_trials,
    default_warmup,
    search_space,
    study_metadata,
)
from .composition import BayesianMetaOptimizer, rollback_score, walk_forward
from .domain import ConfigError, DomainError, PredictorConfig
from .ports.tuner import TrialRecord


def add_tune_parser(commands: Any, debug: argparse.ArgumentParser) -> None:
    """The ``tune`` subcommand's options."""
    tune = commands.add_parser(
        "tune", parents=[debug], help="tune the config by TPE over walk-forward validation (resumable)",
        description="Search the fast (sensitivity) or deep (structural) tier of the config for the lowest "
                    "walk-forward error on the data; the study is kept in --storage, so running the same command "
                    "again resumes it. See docs/tuning.md.",
        epilog="Exit status: 0 done; 2 bad data, config or options (one line); 128+N interrupted by signal N "
               "(the running trial does not count; run the same command to resume).")
    tune.add_argument("data", type=Path, nargs="+", help="UTF-8 CSV files ('timestamp,value' or one value column)")
    tune.add_argument("--config", type=Path, help="the base config.toml (defaults if omitted)")
    tune.add_argument("--tier", choices=TIERS, default="fast", help="fast: sensitivity keys; deep: structural keys")
    tune.add_argument("--keys", help="comma-separated keys of the tier to search (default: all of them)")
    tune.add_argument("--trials", type=_positive_int, metavar="N",
                      help="trials the study ends with (default 50 fast, max_deep_tuning_iterations deep)")
    tune.add_argument("--seed", type=int, default=0, help="study seed (default 0)")
    tune.add_argument("--storage", metavar="URL", help="journal:PATH (default: usp-tune.journal in the directory of "
                      "[meta_optimization] checkpoint_path), redis://HOST:PORT/DB, or an RDB URL (sqlite:///tune.db)")
    tune.add_argument("--study", metavar="NAME", help="study name (default: usp-TIER)")
    tune.add_argument("--metric", choices=METRICS, default="mase", help="objective (default: mase)")
    tune.add_argument("--folds", type=_positive_int, default=5, help="walk-forward folds per series (default 5)")
    tune.add_argument("--warmup", type=int, metavar="TICKS",
                      help="ticks never scored at the start of each series (default: the calibration length)")
    tune.add_argument("--patience", type=_positive_int, default=50,
                      help="stop after this many trials without improvement (default 50)")
    tune.add_argument("--min-delta", type=float, default=1e-4, help="an improvement must exceed this (default 1e-4)")
    tune.add_argument("--budget", type=float, metavar="SECONDS", help="start no trial after this wall-clock time")
    tune.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="proposals (default: tpe)")
    tune.add_argument("--export", type=Path, metavar="CONFIG",
                      help="write the best values into this config file by the mutation protocol")
    tune.add_argument("--no-guardrails", action="store_true",
                      help="--export without the guardrails (rate, stability, step size, rollback)")
    tune.add_argument("--export-study", type=Path, metavar="JSON",
                      help="archive the study here (with a .sha256 sidecar) every 10 trials, on a new best, "
                           "on SIGUSR1, and at the end")
    tune.add_argument("--import-study", type=Path, metavar="JSON",
                      help="start the (empty) study from an archive, verified against its sidecar")
    tune.add_argument("--plot", type=Path, help="optimisation-history image (suffix names the format)")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")


def read_series(paths: list[Path], config: PredictorConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(values, timestamps_ns)`` of each CSV file."""
    values, stamps = [], []
    for path in paths:
        if not path.is_file():
            raise DomainError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
        rows = list(read_observations(path, config.signal_sampling_interval))
        if not rows:
            raise DomainError(f"{path}: no observations")
        stamps.append(np.array([r[0] for r in rows], dtype=np.int64))
        values.append(np.array([r[1] for r in rows], dtype=np.float64))
    return values, stamps


@contextlib.contextmanager
def _signals(optimizer: BayesianMetaOptimizer, caught: list[int]) -> Iterator[None]:
    """SIGTERM/SIGINT stop the campaign after the running trial (abandoned), a second one at once
    (KeyboardInterrupt; the trial is abandoned all the same); SIGUSR1 checkpoints."""
    def stop(signum: int, _: Any) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        optimizer.request_stop(f"interrupted by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: optimizer.request_checkpoint())
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def tune(args: argparse.Namespace) -> int:
    """Run ``usp tune``; returns the exit status."""
    import optuna
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_config(args.config) if args.config else PredictorConfig()
    image_format = None if args.plot is None else plot_format(args.plot)
    try:
        space = search_space(args.tier, None if args.keys is None else [k.strip() for k in args.keys.split(",")])
    except ValueError as exc:
        raise ConfigError(f"--keys: {exc}") from None
    trials = args.trials or default_trials(args.tier, base)
    if args.tier == "deep" and trials > base.max_deep_tuning_iterations:
        raise ConfigError(f"--trials {trials}: above [meta_optimization] max_deep_tuning_iterations = "
                          f"{base.max_deep_tuning_iterations}")
    series, stamps = read_series(args.data, base)
    warmup = default_warmup(base, space) if args.warmup is None else args.warmup
    study = args.study or f"usp-{args.tier}"
    storage = args.storage or default_storage(base)
    metadata = study_metadata(seed=args.seed, tier=args.tier, metric=args.metric, folds=args.folds, warmup=warmup,
                              space=space, series=series, base=base)
    stopping: list[Any] = []
    try:
        objective = walk_forward(series, base, metric=args.metric, folds=args.folds, warmup=warmup,
                                 interrupted=lambda: bool(stopping and stopping[0].stop_requested))
    except ValueError as exc:
        raise DomainError(str(exc)) from None
    progress = tqdm(total=trials, unit="trial", disable=args.quiet, file=sys.stderr)

    def on_trial(record: TrialRecord) -> None:
        progress.update(1)
        best = best_trial(optimizer.trials())
        if best is not None and best.value is not None:
            progress.set_postfix_str(f"best {best.value:.6g}")

    optimizer = BayesianMetaOptimizer(space, objective, study, trials, args.tier, storage=storage, seed=args.seed,
                                      sampler=args.sampler, metadata=metadata,
                                      early_stopping=EarlyStopping(args.patience, args.min_delta),
                                      budget_s=args.budget, checkpoint=args.export_study, on_trial=on_trial)
    stopping.append(optimizer)
    if args.import_study is not None:
        restored = optimizer.load_study(args.import_study)
        print(f"usp tune: {restored} trials restored from {args.import_study}", file=sys.stderr)
    progress.update(min(sum(t.counted for t in optimizer.trials()), trials))
    caught: list[int] = []
    started = time.perf_counter()
    with _signals(optimizer, caught):
        optimizer.optimize()
    progress.close()
    elapsed = time.perf_counter() - started
    history = optimizer.trials()
    print(summary(optimizer, base, history, elapsed, storage))
    if caught:
        print(f"usp tune: {signal.Signals(caught[0]).name}: the running trial was abandoned; run the same command to "
              "resume", file=sys.stderr)
        return 128 + caught[0]
    if args.plot is not None and image_format is not None:
        with PendingOutput(args.plot) as pending:
            with pending.open("wb") as handle:
                draw_history(cast(BinaryIO, handle), image_format, history)
            pending.commit()
        print(f"  optimisation history written to {args.plot}")
    if args.export is not None:
        export(args.export, optimizer, series, stamps, guardrails=None if args.no_guardrails else Guardrails())
    return 0


def summary(optimizer: BayesianMetaOptimizer, base: PredictorConfig, history: list[TrialRecord], elapsed: float,
            storage: str) -> str:
    """The summary table: the study, the best value, the best parameters against the base config's."""
    counted = [t for t in history if t.counted]
    best = best_trial(history)
    ran = len(optimizer.ran)
    lines = [f"\nusp tune: study {optimizer.study_name!r} ({optimizer.tier} tier) in {storage}",
             f"  trials                {len(counted)} counted ({sum(t.state == 'failed' for t in counted)} failed), "
             f"{ran} run by this process in {elapsed:.1f} s ({ran / max(elapsed, 1e-9):.3g} trials/s)",
             f"  stopped by            {optimizer.ended}"]
    if best is None or best.value is None:
        return "\n".join([*lines, "  best                  none (no trial is complete)"])
    lines.append(f"  best value            {best.value:.6g} (trial {best.number})")
    width = max(len(k) for k in best.params)
    lines.append(f"  {'key':<{width}}  {'best':>14}  {'base config':>14}")
    for key, value in best.params.items():
        lines.append(f"  {key:<{width}}  {_shown(value):>14}  {_shown(getattr(base, key)):>14}")
    lines.append(f"  trials run by this process: {' '.join(str(n) for n in optimizer.ran) or 'none'}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def export(path: Path, optimizer: BayesianMetaOptimizer, series: list[np.ndarray], stamps: list[np.ndarray],
           guardrails: Guardrails | None) -> None:
    """Write the best values into ``path`` (mutation protocol), then check the rollback guardrail."""
    data_end = int(max(s[-1] for s in stamps))
    previous = [e for e in audit_entries(path) if e.get("config") == path.resolve().name]
    steps = None
    if previous and previous[-1].get("data_end_ns") is not None:
        steps = int(sum(np.count_nonzero(s > int(previous[-1]["data_end_ns"])) for s in stamps))
    report = optimizer.result().export_to_toml(path, guardrails=guardrails, steps_since_last_mutation=steps,
                                               data_end_ns=data_end)
    if not report.changed:
        print(f"  {path}: already holds the best values; not changed")
        return
    for key, (old, new) in report.delta.items():
        asked = f" (asked {report.clamped[key]!r}; limited by the step guardrail)" if key in report.clamped else ""
        print(f"  {path}: {key} {old!r} -> {new!r}{asked}")
    print(f"  backups {report.backup} and {report.archive}; audit entry in {path.parent / 'mutations.log'}")
    if guardrails is not None:
        check = rollback_if_degraded(path, series, rollback_score(), guardrails=guardrails)
        verdict = "rolled back to the backup" if check.rolled_back else "kept"
        print(f"  rollback check: RMSE {check.current_rmse:.6g} new vs {check.backup_rmse:.6g} old over the newest "
              f"{guardrails.rollback_window_steps} forecasts: {verdict}")


def draw_history(target: BinaryIO, image_format: str, history: list[TrialRecord]) -> None:
    """The optimisation history: each complete trial's value, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in history if t.state == "complete" and t.value is not None]
    numbers = [t.number for t in complete]
    values = [float(t.value) for t in complete if t.value is not None]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        axes.plot(numbers, values, "o", markersize=4, color="tab:blue", label="trial")
        if values:
            axes.step(numbers, np.minimum.accumulate(values), where="post", color="tab:red", label="best so far")
        axes.set_xlabel("trial")
        axes.set_ylabel("objective (lower is better)")
        axes.set_title("usp tune: optimisation history")
        axes.legend(loc="upper right")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(target, format=image_format)
    finally:
        plt.close(figure)


__all__ = ["add_tune_parser", "draw_history", "export", "read_series", "summary", "tune"]
