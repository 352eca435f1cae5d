"""The `usp` command line: the main job end to end, input errors, config helpers."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from usp.adapters.csv_reader import read_observations
from usp.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    return np.cumsum(np.random.default_rng(0).standard_normal(400)) + 100.0


def test_run_writes_predictions_plot_and_summary(tmp_path, series, capsys):
    data = _write(tmp_path / "prices.csv", ["timestamp,value"] + [
        f"2026-01-02T09:30:{i // 1000:02d}.{i % 1000:03d}+00:00,{float(v)!r}" for i, v in enumerate(series)])
    out, plot = tmp_path / "out" / "predictions.csv", tmp_path / "out" / "report.png"
    assert main(["run", str(data), "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for label in ("RMSE", "MAE", "MASE", "interval coverage", "regime changes", "ticks/s"):
        assert label in printed
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(series)
    assert {"prediction_next", "lower", "upper", "weight_A", "regime_change", "emergency",
            "holder_exponent"} <= set(rows[0])
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = rows[-1]
    assert float(last["lower"]) <= float(last["prediction_next"]) <= float(last["upper"])


def test_single_value_column_is_accepted(tmp_path, series, capsys):
    data = _write(tmp_path / "values.csv", [repr(float(v)) for v in series[:200]])
    observations = list(read_observations(data, 0.5))
    assert len(observations) == 200
    assert observations[1][0] - observations[0][0] == 500_000_000
    assert main(["run", str(data), "--quiet"]) == 0
    # spaced 1 s by default, beyond the default 100 ms Nyquist limit: said, with the remedy
    assert "199 of 200 ticks arrived further apart" in capsys.readouterr().err
    config = _write(tmp_path / "spaced.toml", ["[core]", "besov_nyquist_interval_ns = 2_000_000_000"])
    assert main(["run", str(data), "--config", str(config), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "further apart" not in captured.err
    assert re.search(r"ticks beyond the Nyquist limit\s+0\n", captured.out)
    # a few long gaps (missing days) are counted, not lectured about
    stamps = 1_800_000_000_000_000_000 + 1_000_000 * np.arange(200) + 10**9 * (np.arange(200) >= 100)
    gapped = _write(tmp_path / "gapped.csv", [f"{t},{float(v)!r}" for t, v in zip(stamps, series[:200], strict=True)])
    assert main(["run", str(gapped), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"ticks beyond the Nyquist limit\s+1\n", captured.out) and "further apart" not in captured.err


def test_naive_timestamps_and_bad_values_exit_with_a_clear_error(tmp_path, capsys):
    naive = _write(tmp_path / "naive.csv", ["timestamp,value", "2026-01-02T09:30:00,1.0"])
    assert main(["run", str(naive), "--quiet"]) == 2
    assert "has no timezone" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.csv", ["timestamp,value", "2026-01-02T09:30:00Z,1.0",
                                        "2026-01-02T09:30:01Z,abc"])
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "line 3" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.csv"), "--quiet"]) == 2
    assert capsys.readouterr().err == f"usp: error: {tmp_path / 'absent.csv'}: no such file\n"


def test_bad_config_file_exits_with_the_key_named(tmp_path, series, capsys):
    data = _write(tmp_path / "v.csv", [repr(float(v)) for v in series[:50]])
    config = _write(tmp_path / "c.toml", ["[core]", "sigma_bnd = 3.0"])
    assert main(["run", str(data), "--config", str(config), "--quiet"]) == 2
    assert "sigma_bnd" in capsys.readouterr().err
    assert main(["config", "check", str(ROOT / "config.toml")]) == 0


def test_nan_rows_are_rejected_not_fatal(tmp_path, series, capsys):
    values = [repr(float(v)) for v in series[:300]]
    values[250] = "nan"
    data = _write(tmp_path / "nan.csv", values)
    assert main(["run", str(data), "--quiet"]) == 0
    assert re.search(r"rejected ticks\s+1\n", capsys.readouterr().out)


def test_console_script_is_installed():
    done = subprocess.run([str(Path(sys.executable).parent / "usp"), "config", "defaults"], capture_output=True,
                          text=True, check=True)
    assert done.stdout == (ROOT / "config.toml").read_text()
