"""The command line never loses data and fails early, in one line: atomic outputs, outputs checked
before the run, I/O, encoding, backend and cache problems as one ``usp: error:`` line (exit 2)."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import usp._cli_run as cli_run
from usp.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: A small predictor (kernel A, 32-sample buffers) that compiles in seconds for subprocess runs.
TINY = '[kernels]\nenabled_kernels = ["A"]\nwindow_size = 32\nkernel_a_order = 2\n[numerical]\nwtmm_buffer_size = 32\n'


def _values(path: Path, n: int, seed: int = 0) -> Path:
    series = np.cumsum(np.random.default_rng(seed).standard_normal(n)) + 100.0
    path.write_text("value\n" + "".join(f"{float(v)!r}\n" for v in series))
    return path


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usp.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kwargs)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("usp: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def _no_temporaries(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def no_run(monkeypatch):
    """Fail the test if a predictor is built: the error must come before the run."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(cli_run, "UniversalPredictor", refuse)


def test_out_that_is_the_input_is_refused_in_any_spelling(tmp_path, capsys, no_run):
    data = _values(tmp_path / "v.csv", 50)
    before = data.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for out in (data, tmp_path / "sub" / ".." / "v.csv", tmp_path / "link.csv", tmp_path / "hard.csv"):
        assert main(["run", str(data), "--out", str(out), "--quiet"]) == 2
        assert f"--out {out} is the input file" in _one_error_line(capsys.readouterr().err)
    assert main(["run", str(data), "--out", str(tmp_path / "p.png"), "--plot", str(tmp_path / "p.png")]) == 2
    assert "are one file" in capsys.readouterr().err
    assert data.read_bytes() == before


@pytest.mark.parametrize(("plot", "message"), [
    ("report.bmp", "--plot {dir}/report.bmp: suffix '.bmp'; the suffix names the image format, one of .png, .pdf"),
    ("report", "--plot {dir}/report: no suffix"),
    ("v.csv/report.png", "{dir}/v.csv/report.png: Not a directory"),
    ("folder.png", "{dir}/folder.png: Is a directory"),
])
def test_a_bad_plot_fails_before_the_run(tmp_path, capsys, no_run, plot, message):
    data = _values(tmp_path / "v.csv", 50)
    (tmp_path / "folder.png").mkdir()
    assert main(["run", str(data), "--plot", str(tmp_path / plot), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _one_error_line(captured.err).startswith("usp: error: " + message.format(dir=tmp_path))
    _no_temporaries(tmp_path)


def test_outputs_on_a_directory_or_under_a_file_are_one_line(tmp_path, capsys, no_run):
    data = _values(tmp_path / "v.csv", 50)
    assert main(["run", str(data), "--out", str(tmp_path), "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"usp: error: {tmp_path}: Is a directory"
    assert main(["run", str(data), "--out", str(data / "out.csv"), "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"usp: error: {data / 'out.csv'}: Not a directory"


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or for root sysfs."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for candidate in (locked, Path("/sys")):
        try:
            (candidate / "usp-probe").touch()
        except OSError:
            return candidate
        (candidate / "usp-probe").unlink()
    pytest.skip("no directory refuses this process's writes")


def test_an_unwritable_directory_is_one_line_before_the_run(tmp_path, capsys, no_run):
    data = _values(tmp_path / "v.csv", 50)
    out = _unwritable_directory(tmp_path) / "p.csv"
    assert main(["run", str(data), "--out", str(out), "--quiet"]) == 2
    assert re.fullmatch(rf"usp: error: {out}: (Permission denied|Read-only file system)",
                        _one_error_line(capsys.readouterr().err))


def test_a_failed_run_leaves_existing_outputs_as_they_were(tmp_path, capsys):
    rows = [repr(100.0 + 0.1 * i) for i in range(300)]
    rows[250] = "12,5"  # a decimal comma: two fields in a one-column file
    data = tmp_path / "v.csv"
    data.write_text("\n".join(rows) + "\n")
    out, plot = tmp_path / "p.csv", tmp_path / "r.png"
    out.write_text("yesterday's predictions\n")
    plot.write_bytes(b"yesterday's plot")
    assert main(["run", str(data), "--out", str(out), "--plot", str(plot), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "line 251: 2 fields, but the file has 1 column" in _one_error_line(captured.err)
    assert out.read_text() == "yesterday's predictions\n" and plot.read_bytes() == b"yesterday's plot"
    _no_temporaries(tmp_path)


def test_a_one_column_header_is_noted_and_a_plot_format_follows_its_suffix(tmp_path, capsys):
    data = _values(tmp_path / "v.csv", 300)
    plot = tmp_path / "report.SVG"
    assert main(["run", str(data), "--plot", str(plot), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"usp: note: {data}, line 1: 'value' is not a number; read as the column header" in captured.err
    assert re.search(r"\n  ticks\s+300\n", captured.out)
    assert plot.read_bytes().startswith(b"<?xml")
    data.write_text("1O0.5\n101.0\n")
    assert main(["run", str(data), "--quiet"]) == 2
    assert "line 1: '1O0.5' is not a number" in _one_error_line(capsys.readouterr().err)


def test_encoding_errors_in_data_and_config_are_one_line(tmp_path, capsys):
    data = tmp_path / "v.csv"
    data.write_bytes("valeur\n101,5\n".replace(",", ".").encode() + "102.0 °\n".encode("cp1252"))
    assert main(["run", str(data), "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (f"usp: error: {data}, line 3: not UTF-8 text (byte 0xB0 "
                                                        "at column 7); save the file as UTF-8, the only encoding read")
    config = tmp_path / "c.toml"
    config.write_bytes("# réglages\n[core]\nseed = 1\n".encode("latin-1"))
    assert main(["run", str(_values(tmp_path / "w.csv", 50)), "--config", str(config), "--quiet"]) == 2
    assert f"config file {config} is not UTF-8 text" in _one_error_line(capsys.readouterr().err)


def test_debug_adds_the_traceback_and_unexpected_errors_keep_theirs(tmp_path, capsys, monkeypatch):
    data = tmp_path / "v.csv"
    data.write_text("1O0.5\n")
    assert main(["--debug", "run", str(data), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.endswith("is not a number (a one-column "
                                                                               "file's header must not start like "
                                                                               "a number)\n")
    assert main(["run", str(data), "--quiet", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_run, "replay", bug)
    with pytest.raises(ZeroDivisionError):
        main(["run", str(_values(tmp_path / "w.csv", 50)), "--quiet"])


# --- in a separate process: concurrency, a full disk, the backend, the cache --------------------


def test_two_runs_writing_one_out_leave_one_complete_file(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    short, long = _values(tmp_path / "short.csv", 200, 1), _values(tmp_path / "long.csv", 700, 2)
    out = tmp_path / "p.csv"
    runs = [subprocess.Popen([sys.executable, "-m", "usp.cli", "run", str(data), "--config", "tiny.toml", "--out",
                              "p.csv", "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for data in (short, long)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    with out.open() as handle:
        written = [float(row["value"]) for row in csv.DictReader(handle)]
    expected = {len(values): values for values in
                ([float(v) for v in path.read_text().split()[1:]] for path in (short, long))}
    assert written == expected[len(written)]  # all of one run's rows, none of the other's
    _no_temporaries(tmp_path)


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_old_output(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    data = _values(tmp_path / "v.csv", 1500)
    out = tmp_path / "p.csv"
    out.write_text("yesterday's predictions\n")

    # files the command writes stop growing at 64 kB (EFBIG, as ENOSPC on a full disk would)
    small_disk = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (65_536, 65_536)); "
                  "sys.argv[0] = 'usp'; runpy.run_module('usp.cli', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", small_disk, "run", str(data), "--config", "tiny.toml", "--out",
                           "p.csv", "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == "usp: error: p.csv: File too large"
    assert out.read_text() == "yesterday's predictions\n"
    _no_temporaries(tmp_path)


@pytest.mark.skipif(any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                               "jax_rocm60_plugin", "jax_rocm7_plugin")),
                    reason="a GPU backend is installed")
def test_a_backend_that_does_not_start_is_one_line(tmp_path):
    data = _values(tmp_path / "v.csv", 50)
    done = _cli("run", str(data), "--quiet", env={"JAX_PLATFORMS": "gpu"})
    assert done.returncode == 2 and done.stdout == ""
    line = _one_error_line(done.stderr)
    assert line.startswith("usp: error: JAX cannot start a backend for JAX_PLATFORMS='gpu': ")
    assert line.endswith("(unset JAX_PLATFORMS, or set it to 'cpu')")


def test_an_unusable_cache_directory_is_a_warning_and_the_run_goes_on(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    data = _values(tmp_path / "v.csv", 60)
    not_a_directory = tmp_path / "v.csv"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run([sys.executable, "-m", "usp.cli", "run", str(data), "--config", "tiny.toml", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**env, "HOME": str(not_a_directory)})
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert re.search(r"\n  ticks\s+60\n", done.stdout)
    cache_lines = [line for line in done.stderr.splitlines() if "compilation cache" in line]
    assert cache_lines == [f"usp: warning: the compilation cache is off: {not_a_directory}/.cache/usp/jax: Not a "
                           "directory (set JAX_COMPILATION_CACHE_DIR to a writable directory to keep compiled graphs "
                           "between runs)"]
    checked = _cli("config", "check", str(ROOT / "config.toml"), env={"JAX_COMPILATION_CACHE_DIR": str(data)})
    assert checked.returncode == 0
    assert checked.stderr == (f"usp: warning: the compilation cache is off: JAX_COMPILATION_CACHE_DIR={data}: File "
                              "exists (set it to a writable directory, or unset it)\n")
    imported = subprocess.run([sys.executable, "-c", "import usp"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(data)})
    assert imported.returncode == 0  # another program importing USP: the library's own warning, logged
    assert imported.stderr == f"JAX compilation cache off: JAX_COMPILATION_CACHE_DIR={data}: File exists\n"
    script = Path(sys.executable).parent / "usp"  # the console script is the command line too
    if script.is_file():
        scripted = subprocess.run([str(script), "config", "check", str(ROOT / "config.toml")], capture_output=True,
                                  text=True, timeout=300, env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(data)})
        assert scripted.returncode == 0 and scripted.stderr == checked.stderr
