"""Embedding USP in a host: fit_history on lists, arrays and pandas; clocks; ``usp --version``."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from usp import (
    DomainError,
    FunctionalPredictor,
    PredictorConfig,
    ProcessState,
    StaleDataEvent,
    StalenessWarning,
    UniversalPredictor,
)
from usp.adapters.clocks import ManualClock, ReplayClock
from usp.cli import main

from .helpers import random_walk

CONFIG = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         kernel_a_order=4)
T = 150
ASSETS = 3


@pytest.fixture(scope="module")
def predictor() -> UniversalPredictor:
    return UniversalPredictor(CONFIG, clock=ReplayClock())


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(CONFIG, clock=ReplayClock())


def _same_state(a, b) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(leaves_a, leaves_b, strict=True))


def _fitted(predictor: UniversalPredictor, history) -> object:
    predictor.state = predictor.functional.init_state()
    predictor.fit_history(history)
    return predictor.state


def test_fit_history_gives_identical_states_for_lists_arrays_and_pandas(predictor):
    values = random_walk(T, seed=11) + 50.0
    stamps = pd.date_range("2026-01-02 09:30", periods=T, freq="s", tz="UTC")
    reference = _fitted(predictor, values)
    assert not _same_state(reference, predictor.functional.init_state())  # the history was learnt
    inputs = {
        "list": values.tolist(),
        "Series": pd.Series(values),
        "Series with a DatetimeIndex": pd.Series(values, index=stamps),
        "nullable Float64 Series": pd.Series(values, dtype="Float64"),
        "one-column DataFrame": pd.DataFrame({"price": values}),
        "DataFrame with a timestamp column": pd.DataFrame({"timestamp": stamps, "price": values}),
        "DataFrame with a DatetimeIndex": pd.DataFrame({"price": values}, index=stamps),
        "object Series of numbers": pd.Series(values.tolist(), dtype=object),
    }
    for name, history in inputs.items():
        assert _same_state(_fitted(predictor, history), reference), name
    integers = np.arange(T) % 7 + 100
    assert _same_state(_fitted(predictor, pd.Series(integers)), _fitted(predictor, integers.tolist()))
    assert not _same_state(_fitted(predictor, integers), reference)


def test_functional_fit_history_takes_n_by_t_arrays_and_one_column_per_asset(functional):
    histories = np.stack([random_walk(T, seed=20 + i) + 10.0 * i for i in range(ASSETS)])  # [N, T]
    cold = functional.init_state(ASSETS)
    reference, last = functional.fit_history(cold, histories)
    assert last.shape[0] == ASSETS
    stamps = pd.date_range("2026-01-02", periods=T, freq="min", tz="UTC")
    frame = pd.DataFrame({f"asset{i}": histories[i] for i in range(ASSETS)}, index=stamps)
    for name, history in {"nested lists": histories.tolist(), "DataFrame": frame,
                          "DataFrame with a timestamp column": frame.reset_index(names="timestamp")}.items():
        state, _ = functional.fit_history(cold, history)
        assert _same_state(state, reference), name
    # one asset of the batch is the single-asset fit of its column
    single, _ = functional.fit_history(functional.init_state(), frame["asset1"])
    batched_row = jax.tree_util.tree_map(lambda leaf: leaf[1], reference)
    np.testing.assert_array_equal(np.asarray(single.window), np.asarray(batched_row.window))


@pytest.mark.parametrize(("history", "message"), [
    (pd.Series([True, False] * 80), "dtype bool"),
    (pd.Series(["1.0"] * 160), "must hold real numbers, got dtype"),
    (pd.DataFrame({"price": np.ones(160), "note": ["x"] * 160}), "column 'note' must hold real numbers"),
    (pd.DataFrame({"when": pd.date_range("2026-01-01", periods=160, tz="UTC")}), "no value column"),
    (pd.Series([1.0, None, *np.ones(158)], dtype=object), "index 1 must be a real number, got NoneType"),
    (pd.Series(pd.Categorical(["a"] * 160)), "dtype category"),
])
def test_fit_history_refuses_non_numbers_with_a_domain_error(predictor, history, message):
    with pytest.raises(DomainError, match=message):
        predictor.fit_history(history)


def test_fit_history_refuses_missing_pandas_values_as_non_finite(predictor):
    history = pd.Series([*random_walk(T, seed=3)], dtype="Float64")
    history[10] = pd.NA
    with pytest.raises(ValueError, match="NaN or infinite"):
        predictor.fit_history(history)
    with pytest.raises(ValueError, match="one-dimensional"):  # two value columns are two assets
        predictor.fit_history(pd.DataFrame({"a": np.ones(T), "b": np.ones(T)}))


def test_replaying_history_needs_a_replay_clock():
    """The README's clocks: the system clock marks old ticks stale; a replay clock takes "now"
    from the data; a manual clock is set by hand."""
    old = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    with pytest.warns(StalenessWarning):
        stale = UniversalPredictor(CONFIG).step(ProcessState(1.0, old))
    assert any(isinstance(event, StaleDataEvent) for event in stale.telemetry.events)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StalenessWarning)
        fresh = UniversalPredictor(CONFIG, clock=ReplayClock()).step(ProcessState(1.0, old))
    assert not any(isinstance(event, StaleDataEvent) for event in fresh.telemetry.events)
    stamp = 1_800_000_000_000_000_000
    clock = ManualClock(stamp)
    manual = UniversalPredictor(CONFIG, clock=clock)
    assert not manual.step(ProcessState(1.0, stamp)).telemetry.events
    clock.set(stamp + 10 * CONFIG.staleness_ttl_ns)
    with pytest.warns(StalenessWarning):
        late = manual.step(ProcessState(1.0, stamp + 1))
    assert any(isinstance(event, StaleDataEvent) for event in late.telemetry.events)


def test_usp_version_prints_the_installed_version(capsys):
    expected = f"usp {metadata.version('usp')}\n"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == expected
    done = subprocess.run([str(Path(sys.executable).parent / "usp"), "--version"], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout == expected and done.stderr == ""


def test_the_embedding_names_are_exported_from_usp():
    import usp

    for name in ("backtest", "BacktestResult", "ReplayClock", "SystemClock", "ManualClock",
                 "UniversalPredictor", "FunctionalPredictor", "ColumnarBatch", "ProcessState"):
        assert name in usp.__all__ and getattr(usp, name) is not None, name
    assert callable(usp.backtest) and isinstance(usp.ReplayClock(), usp.ReplayClock)
