"""``usp tune`` end to end: bit-exact resume after SIGTERM, two processes on one study (journal
file, and a real redis-server), the study archive, the plot, the export, and one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from usp.adapters.optuna_tuner import open_storage
from usp.application.config_mutation import audit_entries
from usp.application.tuning import read_study_archive
from usp.cli import main

from .helpers import random_walk
from .services import redis_url
from .test_reload import write_tiny_config

__all__ = ["redis_url"]  # the session fixture used below


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_tiny_config(tmp_path)


def _write_data(path: Path, length: int) -> Path:
    series = random_walk(length, seed=11) * 0.2 + np.random.default_rng(12).standard_normal(length)
    path.write_text("value\n" + "\n".join(repr(float(v)) for v in series) + "\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _write_data(tmp_path / "data.csv", 900)


def _args(data: Path, config: Path, storage: str, trials: int, *extra: str) -> list[str]:
    return ["tune", str(data), "--config", str(config), "--trials", str(trials), "--seed", "42", "--storage", storage,
            "--folds", "3", "--quiet", *extra]


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "usp.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _trials(storage: str, study: str = "usp-fast") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)


def _complete(storage: str) -> list[tuple[dict, float]]:
    return [(t.params, t.value) for t in _trials(storage) if t.state == optuna.trial.TrialState.COMPLETE]


def test_sigterm_and_resume_reproduce_the_uninterrupted_study(tmp_path, config_file, capsys):
    data = _write_data(tmp_path / "long.csv", 4000)  # trials of a few hundred ms: time to send SIGTERM mid-study
    straight, interrupted = f"journal:{tmp_path / 'straight.journal'}", f"journal:{tmp_path / 'resumed.journal'}"
    assert main(_args(data, config_file, straight, 10)) == 0
    process = _spawn(_args(data, config_file, interrupted, 10), tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (tmp_path / "resumed.journal").exists() and len(_complete(interrupted)) >= 5:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: the running trial was abandoned" in stderr
    done = _complete(interrupted)
    assert 5 <= len(done) < 10
    states = [t.state for t in _trials(interrupted)]
    assert optuna.trial.TrialState.RUNNING not in states
    capsys.readouterr()
    assert main(_args(data, config_file, interrupted, 10)) == 0
    assert "stopped by            trials" in capsys.readouterr().out
    assert _complete(interrupted) == _complete(straight) and len(_complete(straight)) == 10
    best = [optuna.load_study(study_name="usp-fast", storage=open_storage(s)).best_trial for s in
            (straight, interrupted)]
    assert best[0].params == best[1].params and best[0].value == best[1].value


def _two_processes(tmp_path: Path, config: Path, storage: str, trials: int) -> None:
    """Both start at once; trials of a few hundred ms each keep both at work on the study."""
    data = _write_data(tmp_path / "long.csv", 4000)
    processes = [_spawn(_args(data, config, storage, trials), tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    ran = []
    for stdout, _ in outputs:
        (line,) = [x for x in stdout.splitlines() if "trials run by this process:" in x]
        ran.append([int(n) for n in line.split(":")[1].split()])
    every = _trials(storage)
    numbers = [t.number for t in every]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in every)
    assert len(numbers) >= trials and sorted(numbers) == list(range(len(numbers)))
    assert sorted(ran[0] + ran[1]) == numbers and not set(ran[0]) & set(ran[1])  # none lost, none twice
    assert ran[0] and ran[1]  # both processes worked on the study


def test_two_processes_share_a_journal_file_study(tmp_path, config_file):
    _two_processes(tmp_path, config_file, f"journal:{tmp_path / 'shared.journal'}", 12)


def test_two_processes_share_a_redis_study(tmp_path, config_file, redis_url):
    _two_processes(tmp_path, config_file, redis_url, 12)


def test_archive_plot_and_export(tmp_path, data, config_file, capsys):
    storage = f"journal:{tmp_path / 'study.journal'}"
    archive, plot = tmp_path / "study.json", tmp_path / "history.png"
    code = main(_args(data, config_file, storage, 4, "--keys", "cusum_k,epsilon", "--export-study", str(archive),
                      "--plot", str(plot), "--export", str(config_file)))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "best value" in out and "cusum_k" in out and "trials/s" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = read_study_archive(archive)
    assert len(study["trials"]) == 4 and (tmp_path / "study.json.sha256").is_file()
    (entry,) = audit_entries(config_file)
    assert entry["status"] == "MUTATION_SUCCESS" and set(entry["delta"]) <= {"cusum_k", "epsilon"}
    assert (tmp_path / "config.toml.bak").is_file() and "# the feed's config" in config_file.read_text()
    # the archive starts a study elsewhere, and the same command then goes on from it
    elsewhere = f"journal:{tmp_path / 'elsewhere.journal'}"
    code = main(_args(data, config_file.with_name("config.toml.bak"), elsewhere, 5, "--keys", "cusum_k,epsilon",
                      "--import-study", str(archive)))
    assert code == 0
    assert _complete(elsewhere)[:4] == _complete(storage) and len(_complete(elsewhere)) == 5


@pytest.mark.parametrize(("extra", "message"), [
    (["--keys", "snapshot_path"], "usp: error: --keys: snapshot_path: a locked key is never tuned"),
    (["--tier", "deep", "--trials", "600"], "above [meta_optimization] max_deep_tuning_iterations = 500"),
    (["--warmup", "5000"], "fewer than the 3 folds"),
    (["--plot", "history.bmp"], "--plot history.bmp: suffix '.bmp'"),
])
def test_bad_options_fail_in_one_line(tmp_path, data, config_file, capsys, extra, message):
    assert main(_args(data, config_file, f"journal:{tmp_path / 'j'}", 3, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("usp: error:") and message in err[-1]


def test_a_resumed_study_must_match(tmp_path, data, config_file, capsys):
    storage = f"journal:{tmp_path / 'j.journal'}"
    assert main(_args(data, config_file, storage, 2, "--keys", "cusum_k")) == 0
    capsys.readouterr()
    args = _args(data, config_file, storage, 3, "--keys", "cusum_k")
    args[args.index("--seed") + 1] = "7"
    assert main(args) == 2
    assert "seed: study 42, this run 7" in capsys.readouterr().err
