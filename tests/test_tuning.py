"""Tuning: the search space read from the config schema, the walk-forward objective (no look-ahead),
the campaign loop over the Optuna adapter (budget, early stopping, failed and abandoned trials,
bit-exact resume), the study archive, and fast trials that compile nothing."""

from __future__ import annotations

import itertools
import json
import math
import re

import attrs
import numpy as np
import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import PredictorConfig, SearchSpace
from usp.adapters.optuna_tuner import OptunaTuner, proposal_seed
from usp.application.compiled_core import compiled_core
from usp.application.reloadable import STATE_KEEPING_KEYS
from usp.application.tuning import (
    BayesianMetaOptimizer,
    EarlyStopping,
    OptimizationResult,
    TrialInterrupted,
    WalkForward,
    best_trial,
    fold_bounds,
    fold_score,
    read_study_archive,
    search_space,
    write_study_archive,
)
from usp.composition import tuning_predictor, walk_forward
from usp.domain import ConfigError, IntegrityError
from usp.domain._config import FIELDS
from usp.domain._core import Out
from usp.ports.tuner import POWER_OF_TWO, TrialRecord, TuningError

from .helpers import random_walk
from .test_compile_cache import traced_functions

#: The small predictor every tuning test streams through (one compile, shared).
TINY = PredictorConfig(window_size=32, wtmm_buffer_size=32, wtmm_refresh_steps=8, kurtosis_window=16, kernel_a_order=4,
                       enabled_kernels=("A", "N"))


# -- the search space -------------------------------------------------------------------------------
def test_search_ranges_sit_inside_the_validation_ranges_and_never_on_locked_keys():
    tuned = {name: f.metadata["search"] for name, f in FIELDS.items() if f.metadata["search"] is not None}
    for name, search in tuned.items():
        meta = FIELDS[name].metadata
        assert not meta["locked"], name
        values = search.choices if search.kind == "choice" else (search.lo, search.hi)
        for value in values:
            if meta["choices"] is not None:
                assert value in meta["choices"], name
            else:
                assert meta["lo"] is None or value >= meta["lo"], name
                assert meta["hi"] is None or value <= meta["hi"], name


def test_the_tiers_name_model_md_ranges_and_at_least_fourteen_structural_keys():
    fast, deep = search_space("fast"), search_space("deep")
    assert set(fast) == set(STATE_KEEPING_KEYS)
    assert fast["cusum_k"] == SearchSpace("cusum_k", "float", (0.3, 1.5))
    assert fast["grace_period_steps"] == SearchSpace("grace_period_steps", "int", (5, 50))
    assert fast["epsilon"] == SearchSpace("epsilon", "log_uniform", (1e-4, 1e-1))
    assert fast["learning_rate"] == SearchSpace("learning_rate", "log_uniform", (1e-4, 1e-1))
    assert deep["volatility_alpha"].range == (0.05, 0.5)
    assert deep["log_sig_depth"] == SearchSpace("log_sig_depth", "categorical", (3, 4, 5))
    assert deep["window_size"].constraint == POWER_OF_TWO
    assert deep["window_size"].choices() == (64, 128, 256, 512, 1024)
    assert len(deep) >= 14 and not set(fast) & set(deep)


def test_docs_list_every_tuned_key_with_its_range():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "tuning.md").read_text()
    for tier in ("fast", "deep"):
        for name, space in search_space(tier).items():
            assert f"`{name}`" in doc, name
            cell = doc.split(f"`{name}` |", 1)[1].split("|", 1)[0]
            if space.param_type == "categorical":
                assert [c.strip() for c in cell.split(",")] == [str(c) for c in space.range], name
            else:
                found = re.search(r"\[([^,\]]+), ([^\]]+)\]", cell)
                assert found and tuple(float(v) for v in found.groups()) == tuple(map(float, space.range)), name


@pytest.mark.parametrize(("keys", "message"), [(["snapshot_path"], "locked"), (["no_such_key"], "not a config key"),
                                                (["window_size"], "no search range in the fast tier")])
def test_search_space_refuses_locked_unknown_and_out_of_tier_keys(keys, message):
    with pytest.raises(ValueError, match=message):
        search_space("fast", keys)


def test_the_optimizer_refuses_a_locked_search_space():
    space = {"checkpoint_path": SearchSpace("checkpoint_path", "categorical", ("a", "b"))}
    with pytest.raises(ValueError, match="Cannot optimize locked parameters"):
        BayesianMetaOptimizer(space, lambda p: 0.0, "s", 3, tuner=_memory_tuner())
    flagged = {"cusum_k": SearchSpace("cusum_k", "float", (0.3, 1.5), locked=True)}
    with pytest.raises(ValueError, match="Cannot optimize locked parameters"):
        BayesianMetaOptimizer(flagged, lambda p: 0.0, "s", 3, tuner=_memory_tuner())


@pytest.mark.parametrize("bad", [dict(param_type="uniform", range=(0, 1)), dict(param_type="float", range=(1, 0)),
                                 dict(param_type="log_uniform", range=(0.0, 1.0)),
                                 dict(param_type="float", range=(0, 1), constraint=POWER_OF_TWO)])
def test_search_space_definitions_are_checked(bad):
    with pytest.raises(ValueError):
        SearchSpace("x", **bad)


# -- the walk-forward objective ---------------------------------------------------------------------
@given(st.integers(3, 500), st.integers(0, 60), st.integers(1, 8))
def test_folds_are_contiguous_and_cover_the_scored_origins(length, warmup, folds):
    if length - 1 - warmup < folds:
        with pytest.raises(ValueError):
            fold_bounds(length, warmup, folds)
        return
    bounds = fold_bounds(length, warmup, folds)
    assert bounds[0][0] == warmup and bounds[-1][1] == length - 1 and len(bounds) == folds
    assert all(a < b for a, b in bounds) and all(b == a2 for (_, b), (a2, _) in itertools.pairwise(bounds))


def _outputs(predictions, lower, upper, calibrating=0.0, events=0.0):
    outputs = np.zeros((len(predictions), Out.SIZE))
    outputs[:, Out.PREDICTION], outputs[:, Out.LOWER], outputs[:, Out.UPPER] = predictions, lower, upper
    outputs[:, Out.CALIBRATING], outputs[:, Out.EVENTS] = calibrating, events
    return outputs


def test_fold_scores_follow_their_definitions():
    values = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    predictions = np.array([1.5, 3.0, 3.0, 4.0, 0.0])  # forecasts of values[1:]
    outputs = _outputs(predictions, predictions - 1.0, predictions + 1.0)
    errors = values[1:] - predictions[:-1]            # 0.5, 1, 0, 1
    naive = np.abs(np.diff(values))                   # 1, 2, 1, 2
    assert fold_score(values, outputs, 0, 4, "mae", 0.9) == pytest.approx(np.mean(np.abs(errors)))
    assert fold_score(values, outputs, 0, 4, "rmse", 0.9) == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert fold_score(values, outputs, 0, 4, "mase", 0.9) == pytest.approx(np.mean(np.abs(errors)) / naive.mean())
    assert fold_score(values, outputs, 0, 4, "mape", 0.9) == pytest.approx(100 * np.mean(np.abs(errors) / values[1:]))
    # interval [ŷ−1, ŷ+1]: width 2, no miss (|e| ≤ 1) → 2
    assert fold_score(values, outputs, 0, 4, "interval", 0.9) == pytest.approx(2.0)
    wide_miss = _outputs(predictions, predictions - 0.25, predictions + 0.25)
    misses = np.maximum(np.abs(errors) - 0.25, 0.0)
    assert fold_score(values, wide_miss, 0, 4, "interval", 0.9) == pytest.approx(np.mean(0.5 + 20.0 * misses))
    # calibrating origins and rejected ticks are not scored
    calibrating = _outputs(predictions, predictions, predictions, calibrating=np.array([1, 1, 0, 0, 0]))
    assert fold_score(values, calibrating, 0, 4, "mae", 0.9) == pytest.approx(np.mean(np.abs(errors[2:])))
    rejected = _outputs(predictions, predictions, predictions, events=np.array([0, 0, 0, 0, 0]))
    rejected[3, Out.EVENTS] = float(next(iter(_rejection_bits())))
    assert fold_score(values, rejected, 0, 4, "mae", 0.9) == pytest.approx(np.mean(np.abs(errors[:2])))
    assert math.isnan(fold_score(values, calibrating, 0, 2, "mae", 0.9))


def _rejection_bits():
    from usp.domain._events import EventCode

    rejected = int(EventCode.rejected())
    yield rejected & -rejected  # its lowest bit


def test_the_default_metric_is_mase_and_unknown_metrics_are_refused():
    series = [random_walk(80, seed=1)]
    assert walk_forward(series, TINY, folds=2).metric == "mase"
    with pytest.raises(ValueError, match="metric"):
        walk_forward(series, TINY, metric="mse")
    with pytest.raises(ValueError, match="fewer than the 3 folds"):
        walk_forward([random_walk(34, seed=1)], TINY, folds=3)


@given(seed=st.integers(0, 2**16), fold=st.integers(0, 1), change=st.lists(
    st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan"))), min_size=1, max_size=40),
    offset=st.integers(0, 100))
def test_walk_forward_never_sees_the_future(seed, fold, change, offset):
    """Values after a fold's last target change nothing in that fold's score."""
    series = random_walk(150, seed=seed)
    objective = walk_forward([series], TINY, folds=3)
    _, stop = fold_bounds(series.size, objective.warmup, 3)[fold]
    before = objective.fold_scores(TINY)[0, fold]
    altered = series.copy()
    first = min(stop + 1 + offset, series.size - 1)
    altered[first:first + len(change)] = change[:series.size - first]
    assert first > stop  # the fold's last target is values[stop]
    after = attrs.evolve(objective, series=[altered]).fold_scores(TINY)[0, fold]
    assert before == after or (math.isnan(before) and math.isnan(after))


def test_the_objective_scores_a_candidate_and_refuses_invalid_ones():
    objective = walk_forward([random_walk(200, seed=4), random_walk(150, seed=5)], TINY, folds=2)
    value = objective({"cusum_k": 0.9})
    assert math.isfinite(value) and value > 0
    assert value == pytest.approx(np.nanmean(objective.fold_scores(attrs.evolve(TINY, cusum_k=0.9))))
    with pytest.raises(ConfigError, match="entropy_window_bounds_min"):
        objective({"entropy_window_bounds_min": 600})


def test_a_fast_trial_after_the_first_compiles_nothing():
    objective = walk_forward([random_walk(120, seed=6)], TINY, folds=2)
    objective({"cusum_k": 0.4})
    with traced_functions() as traced:
        values = [objective(p) for p in ({"cusum_k": 1.2, "epsilon": 0.02, "grace_period_steps": 7},
                                        {"learning_rate": 0.001, "cusum_h": 4.0,
                                         "entropy_window_relaxation_factor": 150.0})]
    assert traced == [], "a sensitivity change re-traced the core"
    assert all(math.isfinite(v) for v in values)


def test_a_structural_trial_compiles_and_scores_and_releases_its_graphs():
    objective = walk_forward([random_walk(150, seed=7)], TINY, folds=2)
    assert math.isfinite(objective({"kurtosis_window": 24}))
    structural = objective.build(objective.config({"kurtosis_window": 24}))
    scan = compiled_core(structural.config, structural.kernels, structural.batch_chunk).scan
    assert scan._cache_size() == 0  # its executables were dropped (memory maps freed)


# -- the campaign loop ------------------------------------------------------------------------------
def _memory_tuner(seed: int = 0, sampler: str = "tpe") -> OptunaTuner:
    return OptunaTuner(optuna.storages.InMemoryStorage(), "s", seed=seed, sampler=sampler)


SPACE = {"cusum_k": SearchSpace("cusum_k", "float", (0.3, 1.5)),
         "grace_period_steps": SearchSpace("grace_period_steps", "int", (5, 50))}


def _bowl(params) -> float:
    return (params["cusum_k"] - 0.8) ** 2 + ((params["grace_period_steps"] - 20) / 40) ** 2


def test_the_campaign_stops_at_the_study_total_and_returns_the_best():
    optimizer = BayesianMetaOptimizer(SPACE, _bowl, "s", 12, tuner=_memory_tuner())
    best = optimizer.optimize()
    history = optimizer.trials()
    assert optimizer.ended == "trials" and len(history) == 12 and all(t.state == "complete" for t in history)
    assert best == min(history, key=lambda t: t.value).params
    result = optimizer.result()
    assert result.best_params == best and result.total_iterations == 12 and not result.early_stopped
    assert optimizer.optimize() == best and len(optimizer.trials()) == 12  # nothing left to run


def test_early_stopping_the_budget_and_failed_trials():
    flat = BayesianMetaOptimizer(SPACE, lambda p: 1.0, "s", 40, tuner=_memory_tuner(),
                                 early_stopping=EarlyStopping(patience=5, min_delta=1e-4))
    flat.optimize()
    assert flat.ended == "early stopping" and flat.result().early_stopped and len(flat.trials()) == 6
    clock = iter(range(100))
    timed = BayesianMetaOptimizer(SPACE, _bowl, "s", 40, tuner=_memory_tuner(), budget_s=3.0,
                                  clock=lambda: float(next(clock)))
    timed.optimize()
    assert timed.ended == "budget" and len(timed.trials()) == 2

    def picky(params):
        if params["grace_period_steps"] > 30:
            raise ConfigError("infeasible")
        return math.nan if params["grace_period_steps"] < 10 else _bowl(params)

    failing = BayesianMetaOptimizer(SPACE, picky, "s", 15, tuner=_memory_tuner(3))
    failing.optimize()
    history = failing.trials()
    failed = [t for t in history if t.state == "failed"]
    assert len(history) == 15 and failed and all(t.counted for t in history)
    assert {t.note.split(":")[0] for t in failed} <= {"infeasible", "objective nan"}
    assert best_trial(history).state == "complete"


def test_an_interrupted_trial_is_abandoned_and_not_counted():
    calls = []

    def objective(params):
        calls.append(params)
        if len(calls) == 3:
            raise TrialInterrupted("interrupted by SIGTERM")
        return _bowl(params)

    optimizer = BayesianMetaOptimizer(SPACE, objective, "s", 5, tuner=_memory_tuner())
    optimizer.optimize()
    states = [t.state for t in optimizer.trials()]
    assert states == ["complete", "complete", "abandoned", "complete", "complete", "complete"]
    # a stop request while a trial runs abandons it too
    stopping = BayesianMetaOptimizer(SPACE, lambda p: stopping.request_stop("SIGTERM") or 1.0, "s", 5,
                                     tuner=_memory_tuner())
    stopping.optimize()
    assert stopping.ended == "interrupted" and [t.state for t in stopping.trials()] == ["abandoned"]


def test_resuming_after_an_interruption_reproduces_the_uninterrupted_history(tmp_path):
    """The seeding rule (adapter doc): 14 straight vs 4, an abandoned trial, then the rest."""
    straight = BayesianMetaOptimizer(SPACE, _bowl, "s", 14, tuner=OptunaTuner(
        f"journal:{tmp_path / 'a.journal'}", "s", seed=42))
    straight.optimize()
    storage = f"journal:{tmp_path / 'b.journal'}"
    calls = []

    def interrupted(params):
        calls.append(1)
        if len(calls) == 5:
            first.request_stop("SIGTERM")
            raise TrialInterrupted("SIGTERM")
        return _bowl(params)

    first = BayesianMetaOptimizer(SPACE, interrupted, "s", 14, tuner=OptunaTuner(storage, "s", seed=42))
    first.optimize()
    assert first.ended == "interrupted" and [t.state for t in first.trials()].count("complete") == 4
    resumed = BayesianMetaOptimizer(SPACE, _bowl, "s", 14, tuner=OptunaTuner(storage, "s", seed=42))
    resumed.optimize()
    expected = [(t.params, t.value) for t in straight.trials()]
    got = [(t.params, t.value) for t in resumed.trials() if t.state == "complete"]
    assert got == expected and len(got) == 14
    assert [t.state for t in resumed.trials()].count("abandoned") == 1
    assert proposal_seed(42, 4, 0) != proposal_seed(42, 4, 1) != proposal_seed(43, 4, 1)


def test_a_study_started_differently_is_refused(tmp_path):
    storage = f"journal:{tmp_path / 's.journal'}"
    OptunaTuner(storage, "s", seed=1, metadata={"seed": 1, "data_sha256": "aa"})
    OptunaTuner(storage, "s", seed=1, metadata={"seed": 1, "data_sha256": "aa"})
    with pytest.raises(TuningError, match="data_sha256: study 'aa', this run 'bb'"):
        OptunaTuner(storage, "s", seed=1, metadata={"seed": 1, "data_sha256": "bb"})
    with pytest.raises(TuningError, match="journal:PATH"):
        OptunaTuner("tune.db", "s", seed=1)


# -- the study archive ------------------------------------------------------------------------------
def test_the_archive_is_verified_before_it_is_read_back(tmp_path):
    optimizer = BayesianMetaOptimizer(SPACE, _bowl, "s", 6, tuner=_memory_tuner(7))
    optimizer.optimize()
    path = tmp_path / "study.json"
    sidecar = optimizer.save_study(path)
    digest, name = sidecar.read_text().split()
    assert name == "study.json" and len(digest) == 64
    archive = read_study_archive(path)
    assert [t["value"] for t in archive["trials"]] == [t.value for t in optimizer.trials()]
    restored = BayesianMetaOptimizer(SPACE, _bowl, "s", 10, tuner=_memory_tuner(7))
    assert restored.load_study(path) == 6
    assert [(t.params, t.value) for t in restored.trials()] == [(t.params, t.value) for t in optimizer.trials()]
    go_on = BayesianMetaOptimizer(SPACE, _bowl, "s", 10, tuner=optimizer.tuner)
    go_on.optimize(), restored.optimize()
    assert [t.params for t in restored.trials()] == [t.params for t in go_on.trials()]  # same proposals after
    with pytest.raises(TuningError, match="already holds trials"):
        restored.load_study(path)
    tampered = json.loads(path.read_text())
    tampered["trials"][0]["value"] = 0.0
    path.write_text(json.dumps(tampered))
    with pytest.raises(IntegrityError, match="SHA-256"):
        read_study_archive(path)
    sidecar.unlink()
    with pytest.raises(IntegrityError, match="no SHA-256 sidecar"):
        read_study_archive(path)
    write_study_archive(tmp_path / "other.json", {"format": "something else"})
    with pytest.raises(IntegrityError, match="not a usp-study-archive"):
        read_study_archive(tmp_path / "other.json")


def test_results_check_their_tier_and_the_objective_builds_real_predictors():
    with pytest.raises(ValueError, match="Invalid tier"):
        OptimizationResult("s", "medium", {}, 0.0, 0, False, 0.0)
    predictor = tuning_predictor(TINY)
    assert predictor.config == TINY and predictor.kernel_names == ("A", "N")
    assert isinstance(walk_forward([random_walk(80, 1)], TINY, folds=2), WalkForward)
    history = [TrialRecord(0, "complete", {}, 1.0), TrialRecord(1, "abandoned", {}, None),
               TrialRecord(2, "complete", {}, 0.99995), TrialRecord(3, "failed", {}, None)]
    assert EarlyStopping().stale_trials(history) == 2
