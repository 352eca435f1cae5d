"""Tuning (spec §21, model.md §8): the search space read from the config schema, the walk-forward
objective, and ``BayesianMetaOptimizer``, the resumable loop over a :class:`~usp.ports.tuner.Tuner`
with early stopping, a trial budget and a wall-clock budget; its :class:`OptimizationResult`
exports through the config mutation protocol (``usp.application.config_mutation``).

**Resumable bit-exactly.** A study's history is its storage: every trial is recorded there as it
ends. The tuner seeds each proposal from the study seed and the history it is made from (see
``usp.adapters.optuna_tuner``), and a trial interrupted by a signal is *abandoned*: it never counts
and never informs a proposal. A run interrupted and resumed therefore proposes and scores exactly
the trials an uninterrupted run would have.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import jax
import numpy as np

from ..domain import ConfigError, IntegrityError, PredictorConfig
from ..domain._config import FIELDS, SearchRange, config_to_sections
from ..domain._core import Out
from ..domain._events import EventCode
from ..ports.tuner import POWER_OF_TWO, SearchSpace, TrialRecord, Tuner, TuningError
from .compiled_core import compiled_core
from .config_mutation import write_atomic
from .functional import FunctionalPredictor
from .reloadable import keeps_state

TIERS = ("fast", "deep")
#: Objective metrics (lower is better); ``mase`` is the default (docs/tuning.md: why not MAPE).
METRICS = ("mase", "mape", "rmse", "mae", "interval")
_PARAM_TYPE = {"float": "float", "log": "log_uniform", "int": "int", "pow2": "int", "choice": "categorical"}


class TrialInterrupted(Exception):
    """Raised inside an objective to abandon the running trial (a signal arrived)."""


# -- the search space ----------------------------------------------------------------------------
def _space(name: str, search: SearchRange) -> SearchSpace:
    numeric = search.kind != "choice"
    return SearchSpace(name, _PARAM_TYPE[search.kind],
                       (search.lo, search.hi) if numeric else tuple(search.choices or ()),
                       locked=bool(FIELDS[name].metadata["locked"]),
                       constraint=POWER_OF_TWO if search.kind == "pow2" else None)


def search_space(tier: str, keys: Sequence[str] | None = None) -> dict[str, SearchSpace]:
    """The search space of a tier, from the ranges next to each key in the config schema
    (``SearchRange`` metadata), sorted by key; ``keys`` narrows it to some of them.

    Raises:
        ValueError: an unknown tier; a key that is unknown, locked, or has no range in ``tier``.
    """
    if tier not in TIERS:
        raise ValueError(f"tier {tier!r}: must be one of {', '.join(TIERS)}")
    ranged = {name: field.metadata.get("search") for name, field in FIELDS.items()}
    chosen = sorted(name for name, search in ranged.items() if search is not None and search.tier == tier)
    if keys is not None:
        for key in keys:
            if key not in FIELDS:
                raise ValueError(f"{key}: not a config key")
            if FIELDS[key].metadata["locked"]:
                raise ValueError(f"{key}: a locked key is never tuned")
            if key not in chosen:
                raise ValueError(f"{key}: no search range in the {tier} tier (keys: {', '.join(chosen)})")
        chosen = sorted(set(keys))
    return {name: _space(name, ranged[name]) for name in chosen}  # type: ignore[arg-type]


def check_search_space(space: Mapping[str, SearchSpace]) -> dict[str, SearchSpace]:
    """``space`` if no entry is locked (by its flag or by the config schema) or unknown.

    Raises:
        ValueError: naming the locked or unknown keys.
    """
    locked = sorted(name for name, spec in space.items()
                    if spec.locked or (name in FIELDS and FIELDS[name].metadata["locked"]))
    if locked:
        raise ValueError(f"Cannot optimize locked parameters: {locked}. Remove them from the search space.")
    unknown = sorted(name for name in space if name not in FIELDS)
    if unknown:
        raise ValueError(f"not config keys: {unknown}")
    return dict(space)


# -- the walk-forward objective ----------------------------------------------------------------
def fold_bounds(length: int, warmup: int, folds: int) -> list[tuple[int, int]]:
    """``[(a, b), ...]``: the forecast origins t ∈ [a, b) of each fold, contiguous and in time order,
    splitting [warmup, length − 1) evenly (the pair (t, t+1) is scored in the fold of its origin).

    Raises:
        ValueError: fewer origins than folds.
    """
    origins = length - 1 - warmup
    if folds < 1 or origins < folds:
        raise ValueError(f"a series of {length} values leaves {max(origins, 0)} forecast origins after the "
                         f"{warmup} warm-up ticks: fewer than the {folds} folds")
    edges = [warmup + (origins * i) // folds for i in range(folds + 1)]
    return list(itertools.pairwise(edges))


def fold_score(values: np.ndarray, outputs: np.ndarray, start: int, stop: int, metric: str,
               nominal: float) -> float:
    """The ``metric`` of the one-step forecasts made at origins t ∈ [start, stop) (float64[T] values,
    float64[T, Out] outputs): the pairs (t, t+1) with tick t out of calibration and both ticks
    accepted, as ``usp.backtest`` scores them. Only values[: stop + 1] and outputs[: stop + 1] are
    read. NaN when no pair is scored.

    Metrics: ``mase`` (MAE over the last value's MAE on the same pairs), ``mape`` (percent; inf when a
    target is 0), ``rmse``, ``mae`` (signal units), ``interval`` (the interval score of the
    ``nominal`` interval: width plus 2/(1 − nominal) times the miss, signal units).
    """
    rows = slice(start, stop)
    target, previous = values[start + 1:stop + 1], values[rows]
    events = outputs[start:stop + 1, Out.EVENTS].astype(np.int64)
    accepted = (events & int(EventCode.rejected())) == 0
    use = (outputs[rows, Out.CALIBRATING] == 0) & accepted[:-1] & accepted[1:]
    if not use.any():
        return math.nan
    errors = (target - outputs[rows, Out.PREDICTION])[use]
    if metric == "mase":
        naive = float(np.mean(np.abs(target - previous)[use]))
        mae = float(np.mean(np.abs(errors)))
        return mae / naive if naive > 0 else (math.inf if mae > 0 else math.nan)
    if metric == "mape":
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(100.0 * np.mean(np.abs(errors) / np.abs(target[use])))
    if metric == "rmse":
        return float(np.sqrt(np.mean(errors**2)))
    if metric == "mae":
        return float(np.mean(np.abs(errors)))
    if metric == "interval":
        lower, upper, y = outputs[rows, Out.LOWER][use], outputs[rows, Out.UPPER][use], target[use]
        miss = np.maximum(lower - y, 0.0) + np.maximum(y - upper, 0.0)
        return float(np.mean(upper - lower + 2.0 / (1.0 - nominal) * miss))
    raise ValueError(f"metric {metric!r}: must be one of {', '.join(METRICS)}")


@attrs.frozen(eq=False)
class WalkForward:
    """The objective: walk-forward validation of the real predictor over one or many series.

    Each series (float64[T]) streams through the compiled core of the candidate config from a
    cold state, one tick at a time (``lax.scan``, untimed ticks as in ``fit_history``): the
    forecast made at tick t sees only ticks ≤ t (rolling origin, no look-ahead). The origins after
    ``warmup`` are split into ``folds`` contiguous folds (:func:`fold_bounds`); the objective is
    the mean of every fold's :func:`fold_score` over all series (folds with no scored pair are
    left out). The warm-up is the same for every candidate, so all are scored on the same pairs.

    Attributes:
        series: the series, in time order.
        base: the config the candidates' values are set in (its other keys stay as they are).
        build: a config's ``FunctionalPredictor`` (kernels resolved; ``usp.composition`` gives one).
        metric: one of :data:`METRICS`.
        folds: folds per series.
        warmup: origins before this index are never scored (at least the calibration length).
        interrupted: polled between series; True raises :class:`TrialInterrupted`.
    """

    series: tuple[np.ndarray, ...] = attrs.field(converter=lambda s: tuple(np.asarray(x, np.float64) for x in s))
    base: PredictorConfig
    build: Callable[[PredictorConfig], FunctionalPredictor]
    metric: str = "mase"
    folds: int = 5
    warmup: int = 0
    interrupted: Callable[[], bool] = lambda: False

    def __attrs_post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: must be one of {', '.join(METRICS)}")
        if not self.series:
            raise ValueError("walk-forward validation needs at least one series")
        for values in self.series:
            if values.ndim != 1:
                raise ValueError(f"a series is one-dimensional, got shape {values.shape}")
            fold_bounds(values.size, self.warmup, self.folds)

    def config(self, params: Mapping[str, Any]) -> PredictorConfig:
        """The candidate config: ``base`` with ``params`` set (ConfigError if invalid)."""
        return attrs.evolve(self.base, **params)

    def outputs(self, config: PredictorConfig, values: np.ndarray) -> np.ndarray:
        """float64[T, Out] of one series streamed through ``config``'s core from a cold state."""
        predictor = self.build(config)
        core = compiled_core(predictor.config, predictor.kernels, predictor.batch_chunk)
        _, outputs = core.scan(predictor.init_state(), values)
        return np.asarray(outputs)

    def fold_scores(self, config: PredictorConfig) -> np.ndarray:
        """float64[n_series, folds]: each fold's score (NaN for a fold with no scored pair)."""
        scores = np.full((len(self.series), self.folds), np.nan)
        for i, values in enumerate(self.series):
            if self.interrupted():
                raise TrialInterrupted("interrupted")
            outputs = self.outputs(config, values)
            for j, (start, stop) in enumerate(fold_bounds(values.size, self.warmup, self.folds)):
                scores[i, j] = fold_score(values, outputs, start, stop, self.metric, config.confidence_level)
        return scores

    def __call__(self, params: Mapping[str, Any]) -> float:
        """The objective value of a candidate (NaN when no fold scored anything).

        A structural candidate's compiled graphs are released after it is scored: no later trial
        uses them, and every executable JAX keeps holds memory mappings of its code, which a
        deep campaign would otherwise pile up to the kernel's per-process limit (later trials
        load what they need from the persistent compilation cache)."""
        config = self.config(params)
        try:
            scores = self.fold_scores(config)
        finally:
            if not keeps_state(self.base, config):
                jax.clear_caches()
        scored = scores[~np.isnan(scores)]
        return float(np.mean(scored)) if scored.size else math.nan


def default_warmup(base: PredictorConfig, space: Mapping[str, SearchSpace]) -> int:
    """The calibration length of every candidate: ``wtmm_buffer_size``, or its largest searched value."""
    spec = space.get("wtmm_buffer_size")
    return int(max(base.wtmm_buffer_size, spec.range[-1] if spec is not None else 0))


def recent_rmse(build: Callable[[PredictorConfig], FunctionalPredictor]
                ) -> Callable[[PredictorConfig, Sequence[np.ndarray], int], float]:
    """``score(config, series, window)``: the mean over ``series`` of the walk-forward RMSE of the
    last ``window`` one-step forecasts (the rollback guardrail's measure)."""
    def score(config: PredictorConfig, series: Sequence[np.ndarray], window: int) -> float:
        values = [np.asarray(s, np.float64) for s in series]
        return float(np.mean([WalkForward([v], config, build, metric="rmse", folds=1,
                                          warmup=max(v.size - 1 - window, 0))({}) for v in values]))
    return score


#: File name of the default study journal, in the directory of ``[meta_optimization] checkpoint_path``.
JOURNAL_NAME = "usp-tune.journal"


def default_storage(config: PredictorConfig) -> str:
    """``journal:<checkpoint_path>/usp-tune.journal``: the storage of a study when none is named."""
    return f"journal:{Path(config.checkpoint_path) / JOURNAL_NAME}"


def default_trials(tier: str, config: PredictorConfig) -> int:
    """The trial budget of a tier: 50 fast (model.md §8), ``max_deep_tuning_iterations`` deep."""
    return 50 if tier == "fast" else config.max_deep_tuning_iterations


def study_metadata(*, seed: int, tier: str, metric: str, folds: int, warmup: int, space: Mapping[str, SearchSpace],
                   series: Sequence[np.ndarray], base: PredictorConfig) -> dict[str, Any]:
    """The identity of a campaign, stored with its study: a resumed run must match it (the data
    and base config by SHA-256)."""
    data = hashlib.sha256()
    for values in series:
        array = np.ascontiguousarray(values, dtype=np.float64)
        data.update(len(array).to_bytes(8, "little") + array.tobytes())
    sections = json.dumps(config_to_sections(base), sort_keys=True, default=str).encode()
    return {"seed": int(seed), "tier": tier, "metric": metric, "folds": int(folds), "warmup": int(warmup),
            "space": space_to_json(space), "data_sha256": data.hexdigest(),
            "config_sha256": hashlib.sha256(sections).hexdigest(),
            "protocol": base.mutation_protocol_version}


# -- stopping rules --------------------------------------------------------------------------------
@attrs.frozen
class EarlyStopping:
    """Stop after ``patience`` counted trials in a row without a complete trial improving the best
    value by more than ``min_delta`` (model.md §8: 50 trials, 1e-4)."""

    patience: int = 50
    min_delta: float = 1e-4

    def stale_trials(self, history: Sequence[TrialRecord]) -> int:
        """Counted trials (in trial order) since the last improvement."""
        best, since = math.inf, 0
        for trial in history:
            if not trial.counted:
                continue
            if trial.state == "complete" and trial.value is not None and trial.value < best - self.min_delta:
                best, since = trial.value, 0
            else:
                since += 1
        return since

    def stalled(self, history: Sequence[TrialRecord]) -> bool:
        return self.stale_trials(history) >= self.patience


def best_trial(history: Sequence[TrialRecord]) -> TrialRecord | None:
    """The complete trial of lowest value (the lowest number among equals)."""
    complete = [t for t in history if t.state == "complete" and t.value is not None]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def convergence_delta(history: Sequence[TrialRecord], window: int) -> float:
    """How much the best value improved over the last ``window`` counted trials (≥ 0)."""
    counted = [t for t in history if t.counted]
    before, now = best_trial(counted[:-window] if window < len(counted) else []), best_trial(counted)
    if now is None or now.value is None:
        return 0.0
    return 0.0 if before is None or before.value is None else max(before.value - now.value, 0.0)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class OptimizationResult:
    """The outcome of a campaign (spec §21.2).

    Attributes:
        study_name, tier: the study and its tier ("fast" or "deep").
        best_params: the best trial's values, by key.
        best_objective: its objective value.
        total_iterations: counted trials in the study.
        early_stopped: the campaign ended by early stopping.
        convergence_delta: improvement of the best value over the last ``patience`` trials.
        timestamp_utc: when the result was made (ISO 8601, UTC).
    """

    study_name: str
    tier: str = attrs.field()
    best_params: Mapping[str, Any]
    best_objective: float
    total_iterations: int
    early_stopped: bool
    convergence_delta: float
    timestamp_utc: str = attrs.field(factory=utc_now)

    @tier.validator
    def _tier(self, _: Any, value: str) -> None:
        if value not in TIERS:
            raise ValueError(f"Invalid tier: {value}. Must be 'fast' or 'deep'")

    def export_to_toml(self, path: str | os.PathLike[str] = "config.toml", **options: Any) -> Any:
        """Write :attr:`best_params` into the config file by the mutation protocol
        (``usp.application.config_mutation.mutate_config``: validation, locked keys refused,
        backups, atomic replacement, audit entry, guardrails); ``options`` are its keyword
        arguments. Returns its ``MutationReport``."""
        from .config_mutation import mutate_config

        return mutate_config(path, self.best_params, trigger=f"{self.tier.capitalize()}Tuning_{self.study_name}",
                             objective=self.best_objective, **options)


# -- the campaign ----------------------------------------------------------------------------------
class BayesianMetaOptimizer:
    """A resumable campaign (spec §21.1): proposals from ``tuner`` (TPE with a seed, in the Optuna
    adapter), each scored by ``objective_fn``, until the study holds ``max_iterations`` counted
    trials, early stopping, the wall-clock budget or a stop request.

    Several processes may run one study (a shared storage): each stops when the study, not the
    process, reaches ``max_iterations``; together they may run up to one trial each beyond it.

    Args:
        search_space: key → :class:`SearchSpace` (locked keys are refused: ValueError).
        objective_fn: params → value to minimise (e.g. :class:`WalkForward`). A ``ConfigError``
            (an infeasible combination) or a non-finite value fails the trial (it counts, and is
            never the best); :class:`TrialInterrupted` abandons it.
        study_name: the study in the tuner's storage.
        max_iterations: counted trials the study ends with (50 fast, 500 deep).
        tier: "fast" or "deep".
        tuner: the study (``usp.ports.tuner.Tuner``).
        early_stopping: the patience rule (None: none).
        budget_s: wall-clock seconds after which no new trial starts (None: none).
        checkpoint: an archive path written every ``checkpoint_interval`` counted trials, on each new
            best, on :meth:`request_checkpoint` and when the campaign ends (None: none).
        on_trial: called with each trial this process ends (complete or failed).
    """

    def __init__(self, search_space: Mapping[str, SearchSpace], objective_fn: Callable[[dict[str, Any]], float],
                 study_name: str, max_iterations: int, tier: str = "fast", *, tuner: Tuner,
                 early_stopping: EarlyStopping | None = EarlyStopping(), budget_s: float | None = None,
                 checkpoint: str | os.PathLike[str] | None = None, checkpoint_interval: int = 10,
                 on_trial: Callable[[TrialRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if tier not in TIERS:
            raise ValueError(f"Invalid tier: {tier}. Must be 'fast' or 'deep'")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.search_space = check_search_space(search_space)
        self.objective_fn = objective_fn
        self.study_name = study_name
        self.max_iterations = max_iterations
        self.tier = tier
        self.tuner = tuner
        self.early_stopping = early_stopping
        self.budget_s = budget_s
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_interval = checkpoint_interval
        self.on_trial = on_trial
        self._clock = clock
        self._stop_reason: str | None = None
        self._checkpoint_requested = False
        self.ended = ""          #: why the last optimize() returned: trials, early stopping, budget, interrupted
        self.early_stopped = False
        self.ran: list[int] = []  #: numbers of the trials this process ended (complete or failed)

    # -- control (safe to call from a signal handler) ------------------------------------------
    def request_stop(self, reason: str = "interrupted") -> None:
        """End after the running trial, abandoning it (it does not count)."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def request_checkpoint(self) -> None:
        """Write the checkpoint archive after the running trial."""
        self._checkpoint_requested = True

    # -- the loop ---------------------------------------------------------------------------------
    def optimize(self, checkpoint_interval: int | None = None, early_stopping_patience: int | None = None
                 ) -> dict[str, Any]:
        """Run trials until a stopping rule holds; returns the best params ({} if none is complete)."""
        if checkpoint_interval is not None:
            self.checkpoint_interval = checkpoint_interval
        if early_stopping_patience is not None:
            self.early_stopping = EarlyStopping(early_stopping_patience,
                                                self.early_stopping.min_delta if self.early_stopping else 1e-4)
        started = self._clock()
        best = best_trial(self.tuner.trials())
        while True:
            history = self.tuner.trials()
            self.ended = self._stop_rule(history, started)
            if self.ended:
                break
            number, params = self.tuner.ask(self.search_space)
            try:
                value = float(self.objective_fn(params))
            except ConfigError as exc:
                self._end(number, None, f"infeasible: {exc}")
                continue
            except TrialInterrupted as exc:
                self.tuner.abandon(number, str(exc) or "interrupted")
                continue
            except BaseException as exc:
                self.tuner.abandon(number, f"{type(exc).__name__}: {exc}")
                raise
            if self._stop_reason is not None:  # a signal arrived while it ran: it does not count
                self.tuner.abandon(number, self._stop_reason)
                continue
            record = self._end(number, value, "" if math.isfinite(value) else f"objective {value}")
            if record.state == "complete" and (best is None or (best.value is not None and record.value is not None
                                                                and record.value < best.value)):
                best = record
                self._checkpoint_requested = True
            if self.checkpoint_interval > 0 and len([t for t in self.tuner.trials() if t.counted]) \
                    % self.checkpoint_interval == 0:
                self._checkpoint_requested = True
            self._save_checkpoint()
        self._checkpoint_requested = True
        self._save_checkpoint()
        self.early_stopped = self.ended == "early stopping"
        found = best_trial(self.tuner.trials())
        return {} if found is None else dict(found.params)

    def _stop_rule(self, history: Sequence[TrialRecord], started: float) -> str:
        if self._stop_reason is not None:
            return "interrupted"
        if sum(t.counted for t in history) >= self.max_iterations:
            return "trials"
        if self.early_stopping is not None and self.early_stopping.stalled(history):
            return "early stopping"
        if self.budget_s is not None and self._clock() - started >= self.budget_s:
            return "budget"
        return ""

    def _end(self, number: int, value: float | None, problem: str) -> TrialRecord:
        if value is not None and not problem:
            self.tuner.complete(number, value)
            record = TrialRecord(number, "complete", {}, value)
        else:
            self.tuner.fail(number, problem)
            record = TrialRecord(number, "failed", {}, None, problem)
        self.ran.append(number)
        found = [t for t in self.tuner.trials() if t.number == number]
        record = found[0] if found else record
        if self.on_trial is not None:
            self.on_trial(record)
        return record

    def _save_checkpoint(self) -> None:
        if self._checkpoint_requested and self.checkpoint is not None:
            self.save_study(self.checkpoint)
        self._checkpoint_requested = False

    # -- results -----------------------------------------------------------------------------------
    def trials(self) -> list[TrialRecord]:
        return self.tuner.trials()

    def result(self) -> OptimizationResult:
        """The study's best so far as an :class:`OptimizationResult`.

        Raises:
            TuningError: no trial is complete.
        """
        history = self.tuner.trials()
        best = best_trial(history)
        if best is None or best.value is None:
            raise TuningError(f"study {self.study_name!r} has no complete trial")
        window = self.early_stopping.patience if self.early_stopping is not None else len(history)
        return OptimizationResult(study_name=self.study_name, tier=self.tier, best_params=dict(best.params),
                                  best_objective=best.value, total_iterations=sum(t.counted for t in history),
                                  early_stopped=self.early_stopped,
                                  convergence_delta=convergence_delta(history, window))

    def save_study(self, path: str | os.PathLike[str]) -> Path:
        """Write the study (every trial, the search space) as a JSON archive with a SHA-256 sidecar
        (:func:`write_study_archive`); returns the sidecar's path."""
        archive = {"format": ARCHIVE_FORMAT, "version": 1, "study_name": self.study_name, "tier": self.tier,
                   "space": space_to_json(self.search_space), "saved_utc": utc_now(),
                   "trials": [trial_to_json(t) for t in self.tuner.trials()]}
        return write_study_archive(path, archive)

    def load_study(self, path: str | os.PathLike[str]) -> int:
        """Restore an archive's counted trials into this (empty) study, the digest verified first;
        returns how many. The next :meth:`optimize` goes on from there.

        Raises:
            IntegrityError: the archive fails its SHA-256 check.
            TuningError: another study's archive, another search space, or a study that is not empty.
        """
        archive = read_study_archive(path)
        if archive["study_name"] != self.study_name:
            raise TuningError(f"{path}: the archive is study {archive['study_name']!r}, not {self.study_name!r}")
        if space_from_json(archive["space"]) != self.search_space:
            raise TuningError(f"{path}: the archive's search space differs from this study's")
        records = [trial_from_json(entry) for entry in archive["trials"]]
        counted = [t for t in records if t.counted]
        self.tuner.restore(counted, self.search_space)
        return len(counted)


# -- the study archive (spec §21.1's checkpoint, never pickle) --------------------------------------
ARCHIVE_FORMAT = "usp-study-archive"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_study_archive(path: str | os.PathLike[str], archive: Mapping[str, Any]) -> Path:
    """Write ``archive`` as JSON (temp file, fsync, atomic rename) and its SHA-256 sidecar
    ``<path>.sha256`` (``"<hex>  <name>"``); returns the sidecar's path."""
    path = Path(path)
    data = json.dumps(archive, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    sidecar = _sidecar(path)
    write_atomic(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    return sidecar


def read_study_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The archive at ``path``, its SHA-256 checked against the sidecar *before* it is parsed.

    Raises:
        IntegrityError: no sidecar, or the digest differs; not an archive.
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        expected = _sidecar(path).read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        raise IntegrityError(f"{path}: no SHA-256 sidecar {_sidecar(path).name}; the archive is not trusted") from None
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(f"{path}: SHA-256 {actual} differs from the sidecar's {expected}: the archive is "
                             "corrupt or was changed")
    archive = json.loads(data)
    if not isinstance(archive, dict) or archive.get("format") != ARCHIVE_FORMAT:
        raise IntegrityError(f"{path}: not a {ARCHIVE_FORMAT}")
    return archive


def trial_to_json(trial: TrialRecord) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state, "params": dict(trial.params), "value": trial.value,
            "note": trial.note}


def trial_from_json(entry: Mapping[str, Any]) -> TrialRecord:
    return TrialRecord(int(entry["number"]), str(entry["state"]), dict(entry["params"]),
                       None if entry["value"] is None else float(entry["value"]), str(entry.get("note", "")))


def space_to_json(space: Mapping[str, SearchSpace]) -> dict[str, Any]:
    return {name: {"param_type": s.param_type, "range": list(s.range), "constraint": s.constraint}
            for name, s in space.items()}


def space_from_json(entries: Mapping[str, Any]) -> dict[str, SearchSpace]:
    return {name: SearchSpace(name, e["param_type"], tuple(e["range"]), constraint=e["constraint"])
            for name, e in entries.items()}


__all__ = ["JOURNAL_NAME", "METRICS", "TIERS", "BayesianMetaOptimizer", "EarlyStopping", "OptimizationResult",
           "TrialInterrupted", "WalkForward", "best_trial", "check_search_space", "convergence_delta",
           "default_storage", "default_trials", "default_warmup", "fold_bounds", "fold_score", "read_study_archive",
           "recent_rmse", "search_space", "space_from_json", "space_to_json", "study_metadata", "trial_from_json",
           "trial_to_json", "write_study_archive"]
