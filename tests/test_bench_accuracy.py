"""The accuracy benchmark's walk-forward and metrics, on the weekly CO₂ file shipped in data/,
with USP and the naive forecast (neither needs the benchmark-only packages)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from usp import PredictorConfig, ProcessState, ReplayClock, UniversalPredictor

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "co2_weekly_mauna_loa.csv"

_spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "benchmarks" / "bench_accuracy.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_accuracy"] = bench
_spec.loader.exec_module(bench)


def co2_values() -> np.ndarray:
    rows = DATA.read_text().splitlines()[1:]
    return np.array([float(row.split(",")[1]) for row in rows])


CO2 = bench.Series("co2_weekly", "seasonal", "Mauna Loa CO₂, weekly (ppmv)", 52, "data/", "public domain",
                   co2_values)


def test_split_takes_the_tail_and_evaluates_at_most_half() -> None:
    values = np.arange(1000.0)
    data = bench.split(values, history=400, evaluation=300)
    assert data.values.size == 400 and data.values[0] == 600.0 and data.values[-1] == 999.0
    assert (data.train, data.evaluation) == (200, 200)  # capped at n // 2
    data = bench.split(values, history=1000, evaluation=300)
    assert (data.train, data.evaluation) == (700, 300)
    with pytest.raises(ValueError, match="too short"):
        bench.split(np.arange(5.0), history=100, evaluation=10)


def test_naive_walk_forward_is_the_last_value_with_quantile_band() -> None:
    data = bench.split(co2_values(), history=300, evaluation=60)
    run = bench.walk_forward(bench.Naive(refit_every=20), data)
    y, n0 = data.values, data.train
    np.testing.assert_array_equal(run.predictions, y[n0 - 1:-1])
    # the band of tick i comes from the differences known at the last refit (every 20 ticks)
    for i in (0, 19, 20, 45):
        known = y[:n0 + 20 * (i // 20)]
        low, high = np.quantile(np.diff(known), [0.05, 0.95])
        assert run.lower[i] == pytest.approx(y[n0 + i - 1] + low)
        assert run.upper[i] == pytest.approx(y[n0 + i - 1] + high)
    figures = bench.metrics(data, run)
    assert figures["mase"] == 1.0
    assert figures["mae"] == pytest.approx(np.mean(np.abs(np.diff(y[n0 - 1:]))))
    inside = (y[n0:] >= run.lower) & (y[n0:] <= run.upper)
    assert figures["coverage"] == pytest.approx(inside.mean())
    assert figures["ms_per_tick"] >= 0.0 and run.tick_seconds.shape == (60,)


def test_usp_walk_forward_matches_stepping_the_predictor_by_hand() -> None:
    data = bench.split(co2_values(), history=300, evaluation=40)
    config = bench.usp_config(CO2, data.train)
    assert config.confidence_level == 0.9
    assert config.besov_nyquist_interval_ns == 2 * round(config.signal_sampling_interval * 1e9)
    run = bench.walk_forward(bench.USP(config), data)

    y, n0 = data.values, data.train
    predictor = UniversalPredictor(config, clock=ReplayClock())
    predictor.fit_history(y[:n0 - 1])
    spacing = round(config.signal_sampling_interval * 1e9)
    expected = [predictor.step(ProcessState(float(y[t]), t * spacing)) for t in range(n0 - 1, y.size - 1)]
    np.testing.assert_array_equal(run.predictions, [r.reference_prediction for r in expected])
    np.testing.assert_array_equal(run.lower, [r.confidence_lower for r in expected])
    np.testing.assert_array_equal(run.upper, [r.confidence_upper for r in expected])

    figures = bench.metrics(data, run)
    errors = np.abs(y[n0:] - run.predictions)
    assert figures["mase"] == pytest.approx(errors.mean() / np.abs(np.diff(y[n0 - 1:])).mean())
    assert math.isfinite(figures["mase"]) and 0.0 <= figures["coverage"] <= 1.0


def test_run_series_reports_failures_and_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    short = bench.Series("short", "test", "the last 100 weekly CO₂ values", 1, "data/", "public domain",
                         lambda: co2_values()[-100:])
    monkeypatch.setitem(bench.REQUIRES, "autoarima", "a-package-that-is-not-installed")
    logged: list[str] = []
    entry = bench.run_series(short, ["naive", "usp", "autoarima"], history=100, evaluation=50, refit_every=20,
                             base=PredictorConfig(), overrides={"confidence_level": 1.5}, log=logged.append)
    assert (entry["train"], entry["evaluated"]) == (50, 50)
    assert entry["models"]["naive"]["mase"] == 1.0
    # a config USP refuses: the model fails on the series, reported with the reason
    assert entry["models"]["usp"]["error"].startswith("ConfigError:")
    assert "confidence_level" in entry["models"]["usp"]["error"]
    assert entry["models"]["autoarima"]["error"].startswith("unavailable: a-package-that-is-not-installed")
    assert len(logged) == 3

    summary = bench.summarise([entry], ["naive", "usp", "autoarima"])
    assert summary["naive"]["geomean_mase"] == 1.0 and summary["naive"]["series"] == 1
    assert summary["usp"] == {"series": 0, "failed": ["short"]}
    text = bench.tables([entry], summary, ["naive", "usp", "autoarima"])
    row = next(line for line in text.splitlines() if line.startswith("| short |"))
    assert row.endswith("| 1.000 | fail | n/a |")
    assert "- usp on short: ConfigError:" in text


def test_metrics_refuse_non_finite_forecasts() -> None:
    data = bench.split(np.linspace(0.0, 1.0, 40), history=40, evaluation=10)
    nan = np.full(10, np.nan)
    run = bench.WalkForward(nan, np.zeros(10), np.ones(10), np.zeros(10), 0.0)
    with pytest.raises(FloatingPointError, match="10 of 10"):
        bench.metrics(data, run)


def test_summary_geometric_mean_band_and_worst() -> None:
    entries = [{"name": name, "models": {"m": {"mase": mase, "coverage": cov, "ms_per_tick": 1.0}}}
               for name, mase, cov in (("a", 0.5, 0.9), ("b", 2.0, 0.95), ("c", 1.0, 0.88))]
    summary = bench.summarise(entries, ["m"])["m"]
    assert summary["geomean_mase"] == pytest.approx(1.0)
    assert summary["coverage_in_band"] == 2
    assert (summary["worst_mase"], summary["worst_series"]) == (2.0, "b")


def test_usp_config_rules_and_overrides() -> None:
    base = PredictorConfig()
    short = bench.usp_config(CO2, train_points=80, base=base)
    assert short.wtmm_buffer_size == 64
    assert bench.usp_config(CO2, train_points=500, base=base).wtmm_buffer_size == base.wtmm_buffer_size
    if hasattr(base, "seasonal_period"):  # the known period, also 1 (none), as the peers get it
        assert short.seasonal_period == 52
        flat = bench.Series("flat", "test", "no season", 1, "", "", co2_values)
        assert bench.usp_config(flat, 500, base).seasonal_period == 1
    key, value = bench.parse_override("kernel_a_order=12", base)
    assert (key, value) == ("kernel_a_order", 12)
    assert bench.parse_override("enabled_kernels=A", base) == ("enabled_kernels", ("A",))
    assert bench.usp_config(CO2, 500, base, {"kernel_a_order": 12}).kernel_a_order == 12
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_override("no_such_field=1", base)


def test_reuse_takes_only_figures_of_the_same_data_and_protocol() -> None:
    data = bench.split(co2_values(), history=300, evaluation=60)
    series = bench.Series("co2_tail", "seasonal", "tail", 52, "data/", "public domain", lambda: data.values)
    protocol = {"history": 300, "evaluation_cap": 60, "refit_every": 20, "level": 0.9}
    now = bench.run_series(series, ["naive"], 300, 60, 20, PredictorConfig(), {}, log=lambda _: None)
    moved = {**now, "name": "other", "sha256": "0" * 64}
    earlier = {"protocol": protocol, "series": [
        {**now, "models": {"naive": {"mase": 9.0}, "autoets": {"mase": 0.5, "coverage": 0.9, "ms_per_tick": 1.0}}},
        {**moved, "models": {"autoets": {"mase": 0.7}}}]}
    entries = [now, {**moved, "sha256": "1" * 64, "models": {}}]
    assert bench.reuse(entries, protocol, earlier, ["naive"]) == ["autoets"]
    assert now["models"]["naive"]["mase"] == 1.0  # a model run now is never overwritten
    assert now["models"]["autoets"] == {"mase": 0.5, "coverage": 0.9, "ms_per_tick": 1.0, "reused": True}
    assert entries[1]["models"] == {}  # other values under the same name: nothing taken
    with pytest.raises(SystemExit, match="another protocol"):
        bench.reuse(entries, {**protocol, "refit_every": 10}, earlier, ["naive"])
