"""``usp.backtest``: the figures of ``usp run`` as a library call, on lists, arrays and pandas input."""

from __future__ import annotations

import ast
import datetime as dt
import logging
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import attrs
import numpy as np
import pandas as pd
import pytest
from usp import (
    BacktestResult,
    ConfigError,
    DomainError,
    FrequencyWarning,
    PredictorConfig,
    ProcessState,
    ReplayClock,
    StalenessWarning,
    TimestampError,
    UniversalPredictor,
    backtest,
    load_config,
)
from usp._backtest import replay_predictor, stream
from usp._cli_run import run as cli_run

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "co2_weekly_mauna_loa.csv"
CONFIG = ROOT / "examples" / "co2_weekly.toml"
WEEK_NS = 604_800 * 10**9
PREFIX = 400  # ticks of the CO₂ series for the tests that need no full replay


@pytest.fixture(scope="module")
def co2() -> pd.DataFrame:
    """The CO₂ file as pandas reads it: a tz-aware (UTC) ``timestamp`` column and ``value``."""
    frame = pd.read_csv(DATA, parse_dates=["timestamp"])
    assert str(frame["timestamp"].dt.tz) == "UTC"
    return frame


@pytest.fixture(scope="module")
def full(co2) -> BacktestResult:
    return backtest(co2, CONFIG)


@pytest.fixture(scope="module")
def prefix(co2) -> BacktestResult:
    return backtest(co2.iloc[:PREFIX], CONFIG)


def _printed_summary(stdout: str) -> dict[str, str]:
    """``label -> figure`` from the table ``usp run`` prints (two spaces of indent, two or more
    spaces between label and figure)."""
    rows = [re.fullmatch(r"  (\S.*?)\s{2,}(\S.*)", line) for line in stdout.splitlines()]
    return {match[1]: match[2] for match in rows if match}


def test_backtest_reproduces_every_figure_of_usp_run_on_the_co2_series(full):
    """``usp run`` prints the table of the ``BacktestResult`` that ``usp.backtest`` returns (both
    score through ``usp._backtest.score``); the figures themselves are recomputed independently
    from the ticks in ``test_backtest_metrics.py``."""
    done = subprocess.run([sys.executable, "-m", "usp.cli", "run", str(DATA), "--config", str(CONFIG), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, check=True, timeout=600)
    printed = _printed_summary(done.stdout)
    assert len(printed) == 12, done.stdout
    exact = {"ticks": full.ticks, "evaluated (after calibration)": full.evaluated,
             "regime changes": full.regime_changes, "ticks in emergency mode": full.emergency_ticks,
             "rejected ticks": full.rejected, "ticks beyond the Nyquist limit": full.sparse_ticks,
             "ticks with the roughness branch frozen": full.branch_frozen_ticks}
    for label, figure in exact.items():
        assert int(printed[label]) == figure, label
    # floats, to the printed precision: 6 significant digits, 4 decimals, a percentage to 2 decimals
    assert float(printed["RMSE"]) == pytest.approx(full.rmse, rel=1e-5, abs=0)
    assert float(printed["MAE"]) == pytest.approx(full.mae, rel=1e-5, abs=0)
    assert float(printed["MASE (vs last value)"]) == pytest.approx(full.mase, abs=5e-5)
    coverage_label = f"interval coverage (nominal {full.nominal:.0%})"
    assert float(printed[coverage_label].rstrip("%")) == pytest.approx(100 * full.coverage, abs=5e-3)
    assert printed["RMSE"] == f"{full.rmse:.6g}" and printed["MAE"] == f"{full.mae:.6g}"
    # the run is not trivial: a regime change, sparse weeks, most ticks scored, coverage near 95 %
    assert full.ticks == 2225 and full.evaluated > 2000 and full.sparse_ticks > 0
    assert 0.9 < full.coverage < 1.0 and 0 < full.mase < 1
    assert printed["throughput (after compiling)"].endswith("ticks/s") and full.ticks_per_second > 0


def test_a_datetime_index_and_explicit_timestamps_give_identical_results(co2, full):
    series = co2.set_index("timestamp")["value"]
    assert backtest(series, CONFIG) == full
    aware = [stamp.to_pydatetime() for stamp in co2["timestamp"]]
    assert isinstance(aware[0], dt.datetime) and aware[0].tzinfo is not None
    assert backtest(co2["value"].to_numpy(), load_config(CONFIG), timestamps=aware) == full
    nanoseconds = co2["timestamp"].dt.as_unit("ns").astype("int64").to_numpy()
    assert backtest(co2["value"].tolist(), CONFIG, timestamps=nanoseconds) == full
    np.testing.assert_array_equal(full.timestamps_ns, nanoseconds)
    np.testing.assert_array_equal(full.values, co2["value"].to_numpy())


def test_dataframes_a_timestamp_column_or_a_datetime_index_and_one_value_column(co2, prefix):
    head = co2.iloc[:PREFIX]
    assert backtest(head.set_index("timestamp"), CONFIG) == prefix
    # named columns, among other columns (a label, a second number) that the defaults would refuse
    wide = head.rename(columns={"timestamp": "when", "value": "ppm"}).assign(
        station="MLO", ppm_x2=lambda f: 2 * f["ppm"])
    assert backtest(wide, CONFIG, time_column="when", value_column="ppm") == prefix
    # integer nanoseconds in a named column
    stamps = head.assign(ns=head["timestamp"].dt.as_unit("ns").astype("int64")).drop(columns="timestamp")
    assert backtest(stamps, CONFIG, time_column="ns", value_column="value") == prefix
    # another timezone: the same instants
    paris = head.assign(timestamp=head["timestamp"].dt.tz_convert("Europe/Paris"))
    assert backtest(paris, CONFIG) == prefix
    # timestamps= overrides the frame's own
    assert backtest(head[["value"]], CONFIG, timestamps=pd.DatetimeIndex(head["timestamp"])) == prefix


def test_without_timestamps_ticks_are_spaced_as_usp_run_spaces_a_one_column_file(co2, tmp_path):
    values = co2["value"].to_numpy()[:PREFIX]
    result = backtest(values, CONFIG)
    np.testing.assert_array_equal(result.timestamps_ns, np.arange(PREFIX, dtype=np.int64) * WEEK_NS)
    path = tmp_path / "values.csv"
    path.write_text("".join(f"{v!r}\n" for v in values.tolist()))
    from_file = cli_run(path, load_config(CONFIG), None, None, progress=False)
    assert isinstance(from_file, BacktestResult) and from_file == result
    assert backtest(pd.Series(values), CONFIG) == result  # a RangeIndex is no timestamps
    assert backtest(values, CONFIG, timestamps=np.arange(PREFIX) * WEEK_NS) == result


def test_rejected_ticks_are_counted_as_usp_run_counts_them(co2, prefix):
    values = co2["value"].to_numpy()[:PREFIX].copy()
    values[300] = np.nan
    result = backtest(values, CONFIG, timestamps=prefix.timestamps_ns)
    assert result.rejected == 1 and not result.accepted[300] and result.accepted.sum() == PREFIX - 1
    assert result.evaluated < prefix.evaluated and result != prefix


def test_the_result_holds_the_per_tick_outputs(prefix):
    n = prefix.ticks
    for name in ("reference_prediction", "confidence_lower", "confidence_upper"):
        array = getattr(prefix, name)
        assert array.shape == (n,) and array.dtype == np.float64
    assert np.all(prefix.confidence_lower <= prefix.reference_prediction)
    assert np.all(prefix.reference_prediction <= prefix.confidence_upper)
    modes = prefix.operating_mode
    assert modes.shape == (n,) and set(np.unique(modes)) <= {0, 1, 2} and modes[0] == 1
    assert prefix.events.dtype == np.int64 and prefix.weights.shape == (n, len(prefix.kernel_names))
    np.testing.assert_allclose(prefix.weights.sum(axis=1), 1.0, rtol=1e-9)
    tick = prefix.result(250)
    assert tick.reference_prediction == prefix.reference_prediction[250] and tick.mode == "inference"
    with pytest.raises(ValueError, match="read-only"):
        prefix.values[0] = 0.0
    # equality ignores the throughput; the result holds arrays, so it is not hashable
    assert attrs.evolve(prefix, ticks_per_second=1.0) == prefix
    assert attrs.evolve(prefix, rmse=prefix.rmse * (1 + 1e-12)) != prefix
    changed = prefix.outputs.copy()
    changed[-1, 0] += 1e-9
    assert attrs.evolve(prefix, outputs=changed) != prefix
    with pytest.raises(TypeError):
        hash(prefix)
    frame = prefix.to_frame()
    assert len(frame) == n and str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp("1958-03-29", tz="UTC")
    assert list(frame["mode"][:2]) == ["calibration", "calibration"]


def test_an_empty_evaluation_is_nan_not_an_error():
    result = backtest([1.0, 2.0, 3.0], PredictorConfig(), timestamps=[0, 1_000_000, 2_000_000])
    assert result.ticks == 3 and result.evaluated == 0
    assert math.isnan(result.rmse) and math.isnan(result.coverage)
    assert result == backtest([1.0, 2.0, 3.0], PredictorConfig(), timestamps=[0, 1_000_000, 2_000_000])
    # pandas timestamps keep their nanoseconds, in an index or as a list of Timestamp objects
    index = pd.DatetimeIndex([f"2026-01-02T09:30:00.00000000{i}Z" for i in (1, 2, 3)])
    for stamps in (index, list(index), pd.Series(index)):
        timed = backtest([1.0, 2.0, 3.0], PredictorConfig(), timestamps=stamps)
        np.testing.assert_array_equal(timed.timestamps_ns - index[0].value, [0, 1, 2])


def _series(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index("timestamp")["value"].iloc[:5]


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda f: [1.0, True, 2.0], DomainError, "index 1 must be a real number, got bool"),
    (lambda f: ["1.0", "2.0"], DomainError, "got str"),
    (lambda f: np.zeros((3, 2)), DomainError, r"one-dimensional \(T values\), got shape \(3, 2\)"),
    (lambda f: [], DomainError, "no observations"),
    (lambda f: "1.0,2.0", DomainError, "got str"),
    (lambda f: pd.Series([True, False]), DomainError, "dtype bool"),
    (lambda f: pd.Series(["a", "b"]), DomainError, "must hold real numbers"),
    (lambda f: f[["timestamp"]].iloc[:5], DomainError, "no numeric column"),
    (lambda f: f.iloc[:5].assign(other=1.0), DomainError, "2 numeric columns .*value_column="),
    (lambda f: _series(f).tz_localize(None), TimestampError, "naive"),
    (lambda f: f.iloc[:5].assign(timestamp=f["timestamp"].dt.tz_localize(None)), TimestampError, "naive"),
    (lambda f: f.iloc[:5].assign(later=f["timestamp"]), TimestampError, "several timestamp sources"),
    (lambda f: f.iloc[:5].set_index("timestamp").assign(at=f["timestamp"].iloc[:5].to_numpy()), TimestampError,
     "several timestamp sources.*the DatetimeIndex"),
    (lambda f: f.iloc[:5].assign(timestamp=[f["timestamp"][0], pd.NaT, *f["timestamp"][2:5]]), TimestampError,
     "row 1 is missing"),
])
def test_bad_inputs_raise_typed_errors_naming_the_problem(co2, make, error, message):
    with pytest.raises(error, match=message):
        backtest(make(co2), CONFIG)


def test_bad_arguments_raise_typed_errors_naming_the_problem(co2, tmp_path):
    head = co2.iloc[:5]
    with pytest.raises(DomainError, match=r"value_column='ppm' is not a column .*'timestamp', 'value'"):
        backtest(head, CONFIG, value_column="ppm")
    with pytest.raises(DomainError, match="time_column='when' is not a column"):
        backtest(head, CONFIG, time_column="when")
    with pytest.raises(TimestampError, match="either as timestamps= or as time_column="):
        backtest(head, CONFIG, time_column="timestamp", timestamps=[0, 1, 2, 3, 4])
    with pytest.raises(DomainError, match="pick columns of a DataFrame, not of a list"):
        backtest([1.0, 2.0], CONFIG, value_column="value")
    with pytest.raises(DomainError, match="3 values but 2 timestamps"):
        backtest([1.0, 2.0, 3.0], CONFIG, timestamps=[0, 1])
    with pytest.raises(TimestampError, match=r"row 1: timestamp .* is naive"):
        backtest([1.0, 2.0], CONFIG, timestamps=[dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2020, 1, 2)])
    with pytest.raises(TimestampError, match=r"row 0 .* is a float"):
        backtest([1.0, 2.0], CONFIG, timestamps=np.array([0.0, 1e9]))
    with pytest.raises(TimestampError, match="naive datetime64"):
        backtest([1.0, 2.0], CONFIG, timestamps=np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]"))
    with pytest.raises(TimestampError, match="not a DataFrame"):
        backtest([1.0, 2.0], CONFIG, timestamps=head)
    with pytest.raises(TimestampError, match="outside int64 nanoseconds"):
        backtest([1.0], CONFIG, timestamps=pd.DatetimeIndex(["2300-01-01"], tz="UTC"))
    with pytest.raises(ConfigError, match="config must be a PredictorConfig"):
        backtest([1.0], {"window_size": 64})
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[core]\nsigma_bnd = 3.0\n")
    with pytest.raises(ConfigError, match="sigma_bnd"):
        backtest([1.0], bad_config)
    with pytest.raises(ConfigError, match="beyond int64 nanoseconds"):
        backtest([1.0, 2.0, 3.0], PredictorConfig(signal_sampling_interval=5e9))


def test_usp_imports_pandas_only_when_given_pandas_objects():
    code = ("import sys; import usp, usp.cli; from usp import backtest; "
            "from usp import PredictorConfig; "
            "r = backtest([1.0, 2.0, 3.0], PredictorConfig(), timestamps=[0, 1000, 2000]); "
            "assert r.ticks == 3; assert 'pandas' not in sys.modules, 'pandas imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=600)


def test_no_module_level_pandas_import_in_the_package():
    for path in (ROOT / "src").rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = {id(inner) for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in functions:
                continue
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] == "pandas" for name in names), f"{path}:{node.lineno}"


def test_a_replay_raises_no_sampling_warnings_and_leaves_the_warning_filters_alone(caplog):
    """Ticks 1 s apart (the default spacing) are all sparse and freeze the roughness branch: a
    replay counts them from the event bits and raises no ``FrequencyWarning`` (pytest turns
    warnings into errors here), without ``warnings.catch_warnings`` (process-wide, not
    thread-safe): the filters stay as they are during the replay, so a warning raised meanwhile
    (here by ``on_tick``) is still shown. Rejections are still logged."""
    values = [float(v) for v in np.sin(np.arange(200) / 5.0)]
    values[150] = math.nan
    predictor = replay_predictor(PredictorConfig())
    filters: list = []
    seen: list[int] = []

    def on_tick(stamp: int, value: float, output: np.ndarray) -> None:
        assert warnings.filters == filters
        if not seen:
            warnings.warn("from another part of the program", StalenessWarning, stacklevel=1)
        seen.append(stamp)

    caplog.set_level(logging.ERROR, logger="usp.predictor")
    with pytest.warns(StalenessWarning, match="another part") as caught:
        filters[:] = warnings.filters
        recording = stream(predictor, ((i * 10**9, v) for i, v in enumerate(values)), on_tick)
        assert warnings.filters == filters
    assert len(caught) == 1 and len(seen) == 200
    assert [r.getMessage() for r in caplog.records] == [
        "DomainError: tick at 150000000000 ns rejected (REJECTED_NON_FINITE); returning the last valid result"]
    assert predictor.state.count == 199  # the replay stepped the predictor (the NaN left it untouched)
    result = backtest(values, PredictorConfig())
    assert result.sparse_ticks == 198 and result.branch_frozen_ticks > 0
    np.testing.assert_array_equal(result.outputs, recording.outputs)
    # the same ticks through the predictor's own step warn, as a live feed should
    with pytest.raises(ValueError, match="without load shedding"):  # its depth would follow wall-clock latency
        stream(cast(UniversalPredictor, SimpleNamespace(load_shedding=object())), [])
    live = UniversalPredictor(PredictorConfig(), clock=ReplayClock())
    live.step_raw(ProcessState(0.0, 0))
    with pytest.warns(FrequencyWarning, match="besov_nyquist_interval_ns"):
        live.step_raw(ProcessState(1.0, 10**9))
