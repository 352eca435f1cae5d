"""``usp run --out/--plot`` on every kind of target: a device or pipe is streamed to and stays what
it was; a file is replaced atomically (whatever its name's length and its mode) or, read-only,
refused before the run; the input and the config file are never outputs."""

from __future__ import annotations

import csv
import io
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import usp._cli_run as cli_run
from usp.cli import main

from .test_cli_hardening import TINY, _no_temporaries, _one_error_line, _values, no_run

__all__ = ["no_run"]  # a fixture used below

TICKS = 60


@pytest.fixture
def tiny(tmp_path) -> Path:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    return config


def _reader(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """A thread reading ``fifo`` to its end (opening it blocks until a writer opens it)."""
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


def _predictions(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_fifo_outputs_are_streamed_to_their_reader_and_stay_fifos(tmp_path, tiny, capsys):
    data = _values(tmp_path / "v.csv", TICKS)
    out, plot = tmp_path / "out.fifo", tmp_path / "plot.png"
    os.mkfifo(out)
    os.mkfifo(plot)
    (out_reader, out_bytes), (plot_reader, plot_bytes) = _reader(out), _reader(plot)
    assert main(["run", str(data), "--config", str(tiny), "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    out_reader.join(60)
    plot_reader.join(60)
    assert stat.S_ISFIFO(os.stat(out).st_mode) and stat.S_ISFIFO(os.stat(plot).st_mode)  # not replaced by files
    assert len(_predictions(out_bytes[0].decode())) == TICKS
    assert plot_bytes[0].startswith(b"\x89PNG")
    assert f"predictions written to {out}" in capsys.readouterr().out
    _no_temporaries(tmp_path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usp.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_dev_stdout_null_and_full_are_written_as_devices(tmp_path, tiny):
    data = _values(tmp_path / "v.csv", TICKS)
    # a FIFO first: an implementation that replaces special files must fail here, before /dev is touched
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    reader, received = _reader(fifo)
    done = _cli("run", str(data), "--config", str(tiny), "--out", str(fifo), "--quiet", cwd=tmp_path)
    reader.join(60)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and len(_predictions(received[0].decode())) == TICKS

    done = _cli("run", str(data), "--config", str(tiny), "--out", "/dev/stdout", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table, summary = done.stdout.split("\n\nUSP run on ", 1)  # the predictions, then the summary
    assert len(_predictions(table + "\n")) == TICKS and "predictions written to /dev/stdout" in summary

    done = _cli("run", str(data), "--config", str(tiny), "--out", "/dev/null", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)

    done = _cli("run", str(data), "--config", str(tiny), "--out", "/dev/full", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == "usp: error: /dev/full: No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_an_output_that_is_the_config_file_is_refused_in_any_spelling(tmp_path, capsys, no_run):
    data = _values(tmp_path / "v.csv", 50)
    config = tmp_path / "settings.png"  # a name that would also pass as a --plot
    config.write_text("[core]\nseed = 7\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.toml").symlink_to(config)
    os.link(config, tmp_path / "hard.toml")
    for option in ("--out", "--plot"):
        for target in (config, tmp_path / "sub" / ".." / "settings.png", tmp_path / "link.toml",
                       tmp_path / "hard.toml"):
            if option == "--plot" and target.suffix != ".png":
                continue
            assert main(["run", str(data), "--config", str(config), option, str(target), "--quiet"]) == 2
            assert f"{option} {target} is the config file {config}; write it elsewhere" in _one_error_line(
                capsys.readouterr().err)
    assert config.read_text() == "[core]\nseed = 7\n"


def test_a_long_output_name_is_written(tmp_path, tiny, capsys):
    data = _values(tmp_path / "v.csv", TICKS)
    out, plot = tmp_path / ("p" * 246 + ".csv"), tmp_path / ("r" * 246 + ".svg")  # 250 characters: legal names
    assert main(["run", str(data), "--config", str(tiny), "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    assert len(_predictions(out.read_text())) == TICKS and plot.read_bytes().startswith(b"<?xml")
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_a_read_only_output_fails_before_the_run(tmp_path, capsys, no_run, option):
    data = _values(tmp_path / "v.csv", 50)
    target = tmp_path / "kept.png"
    target.write_bytes(b"yesterday's output")
    target.chmod(0o444)
    assert main(["run", str(data), option, str(target), "--quiet"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (f"usp: error: {target}: Permission denied (the file is "
                                                        "read-only; it is not replaced)")
    assert target.read_bytes() == b"yesterday's output" and stat.S_IMODE(target.stat().st_mode) == 0o444
    _no_temporaries(tmp_path)


def test_outputs_are_open_before_the_run_writable_while_written_and_keep_their_mode(tmp_path, tiny, capsys,
                                                                                    monkeypatch):
    data = _values(tmp_path / "v.csv", TICKS)
    out, plot = tmp_path / "p.csv", tmp_path / "r.svg"
    out.write_text("yesterday's predictions\n")
    plot.write_text("yesterday's plot")
    out.chmod(0o200)  # writable, not readable: the mode the replaced file must keep
    plot.chmod(0o640)
    seen: list[tuple[str, int]] = []
    replay = cli_run.replay

    def watched(*args, **kwargs):  # the run starts: both temporary files must exist already
        seen.extend((p.name, stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        return replay(*args, **kwargs)

    monkeypatch.setattr(cli_run, "replay", watched)
    assert main(["run", str(data), "--config", str(tiny), "--out", str(out), "--plot", str(plot), "--quiet"]) == 0
    assert len(seen) == 2, seen
    assert all(mode & 0o600 == 0o600 for _, mode in seen), seen  # read-write for the writer while written
    assert all(len(name) == len(".usp-0123456789abcdef.tmp") for name, _ in seen), seen
    assert stat.S_IMODE(out.stat().st_mode) == 0o200 and stat.S_IMODE(plot.stat().st_mode) == 0o640
    out.chmod(0o600)
    assert len(_predictions(out.read_text())) == TICKS and plot.read_text().startswith("<?xml")
    _no_temporaries(tmp_path)


def test_a_socket_is_refused_before_the_run(tmp_path, capsys, no_run):
    data = _values(tmp_path / "v.csv", 50)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "s.csv"))
        assert main(["run", str(data), "--out", str(tmp_path / "s.csv"), "--quiet"]) == 2
        assert _one_error_line(capsys.readouterr().err).startswith(f"usp: error: {tmp_path / 's.csv'} is a socket")
        assert stat.S_ISSOCK(os.stat(tmp_path / "s.csv").st_mode)
    finally:
        server.close()
