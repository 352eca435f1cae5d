"""The config mutation protocol: refusals change no byte on disk; a good mutation keeps the user's
comments, leaves both backups and an audit entry; guardrails (step size, rate, stability) and the
rollback on degradation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import ConfigMutationError, OptimizationResult, load_config
from usp.application.config_mutation import (
    AUDIT_LOG,
    Guardrails,
    audit_entries,
    limit_change,
    mutate_config,
    rollback_if_degraded,
)
from usp.domain import ConfigError

CONFIG = """\
# Tuned by hand for the test feed.
[sensitivity]
cusum_k = 0.5        # slack, in robust sigmas
grace_period_steps = 20

[kernels]
enabled_kernels = ["A", "N"]   # cheap kernels
window_size = 256

[meta_optimization]
checkpoint_path = "ck"   # locked
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def _disk(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(("changes", "message"), [
    ({"checkpoint_path": "elsewhere"}, r"\[meta_optimization\] checkpoint_path is locked"),
    ({"float_precision": 32}, "locked"),
    ({"no_such_key": 1}, "unknown key 'no_such_key'"),
    ({"cusum_k": 11.0}, r"cusum_k = 11.0: out of range, allowed \[0.0, 10.0\]"),
    ({"cusum_k": "0.7"}, "expected float, got str"),
    ({"entropy_window_bounds_min": 600}, "exceeds entropy_window_bounds_max = 500"),
    ({"wtmm_buffer_size": 512}, "window_size = 256: must be at least wtmm_buffer_size = 512"),
])
def test_bad_mutations_are_refused_and_change_no_byte(config_file, changes, message):
    before = _disk(config_file.parent)
    with pytest.raises(ConfigMutationError, match=message) as caught:
        mutate_config(config_file, changes, guardrails=None)
    assert "nothing was changed" in str(caught.value) and isinstance(caught.value, ConfigError)
    assert _disk(config_file.parent) == before


def test_a_concurrent_mutation_is_refused(config_file):
    (config_file.parent / "config.toml.tmp").write_bytes(b"another writer")
    before = _disk(config_file.parent)
    with pytest.raises(ConfigMutationError, match=r"concurrent mutation: .*config\.toml\.tmp exists"):
        mutate_config(config_file, {"cusum_k": 0.6})
    assert _disk(config_file.parent) == before


def test_a_good_mutation_keeps_comments_and_leaves_backups_and_an_audit_entry(config_file):
    report = mutate_config(config_file, {"cusum_k": 0.625, "epsilon": 0.0015}, trigger="FastTuning_t", objective=0.9,
                           now=lambda: 1_800_000_000.5)
    text = config_file.read_text()
    assert "cusum_k = 0.625        # slack, in robust sigmas" in text
    assert "# Tuned by hand for the test feed." in text and 'checkpoint_path = "ck"   # locked' in text
    assert text.replace("cusum_k = 0.625", "cusum_k = 0.5").replace("epsilon = 0.0015\n", "") == CONFIG
    assert load_config(config_file).cusum_k == 0.625 and load_config(config_file).epsilon == 0.0015
    assert report.backup.read_text() == CONFIG and report.archive.read_text() == CONFIG
    assert report.archive.name == "config.toml.bak.20270115T080000.500000Z"
    assert not (config_file.parent / "config.toml.tmp").exists()
    (entry,) = audit_entries(config_file)
    assert entry == report.entry and entry["status"] == "MUTATION_SUCCESS" and entry["trigger"] == "FastTuning_t"
    assert entry["delta"] == {"cusum_k": {"old": 0.5, "new": 0.625}, "epsilon": {"old": 0.001, "new": 0.0015}}
    assert entry["protocol"] == "1" and entry["objective"] == 0.9 and entry["time"] == "2027-01-15T08:00:00.500000Z"
    log_line = (config_file.parent / AUDIT_LOG).read_text()
    assert json.loads(log_line) == entry and log_line.endswith("\n")
    # the same values again: nothing to do, nothing written
    before = _disk(config_file.parent)
    again = mutate_config(config_file, {"cusum_k": 0.625}, steps_since_last_mutation=5000)
    assert not again.changed and _disk(config_file.parent) == before


def test_a_missing_section_is_added_and_the_file_mode_kept(config_file):
    os.chmod(config_file, 0o640)
    mutate_config(config_file, {"jko_mirror_step": 0.3}, guardrails=None)
    assert "[orchestrator]\njko_mirror_step = 0.3\n" in config_file.read_text()
    assert os.stat(config_file).st_mode & 0o777 == 0o640


def test_the_step_guardrail_limits_each_key(config_file):
    report = mutate_config(config_file, {"cusum_k": 1.5, "grace_period_steps": 5, "window_size": 1024,
                                         "kernel_a_mode": "rkhs"})
    config = load_config(config_file)
    assert (config.cusum_k, config.grace_period_steps, config.window_size) == (0.75, 10, 512)
    assert config.kernel_a_mode == "rkhs"  # one level of (linear, rkhs)
    assert report.clamped == {"cusum_k": 1.5, "grace_period_steps": 5, "window_size": 1024}
    assert audit_entries(config_file)[-1]["delta"]["window_size"] == {"old": 256, "new": 512, "requested": 1024}


@given(old=st.floats(1e-3, 1e3), new=st.floats(1e-3, 1e3), fraction=st.floats(0.01, 1.0))
def test_limited_changes_stay_within_the_fraction(old, new, fraction):
    limited = limit_change("epsilon", old, new, fraction)
    assert abs(limited - old) <= fraction * old * (1 + 1e-12)
    assert (limited - old) * (new - old) >= 0 and abs(limited - old) <= abs(new - old)


def test_rate_and_stability_guardrails(config_file):
    hour = iter(float(1_800_000_000 + 60 * i) for i in range(100))
    rails = Guardrails(max_per_hour=3, stability_steps=1000)
    mutate_config(config_file, {"cusum_k": 0.55}, guardrails=rails, now=lambda: next(hour))
    with pytest.raises(ConfigMutationError, match="steps_since_last_mutation"):
        mutate_config(config_file, {"cusum_k": 0.6}, guardrails=rails, now=lambda: next(hour))
    with pytest.raises(ConfigMutationError, match="served 999 ticks"):
        mutate_config(config_file, {"cusum_k": 0.6}, guardrails=rails, steps_since_last_mutation=999,
                      now=lambda: next(hour))
    for value in (0.6, 0.65):
        mutate_config(config_file, {"cusum_k": value}, guardrails=rails, steps_since_last_mutation=1000,
                      now=lambda: next(hour))
    before = _disk(config_file.parent)
    with pytest.raises(ConfigMutationError, match="3 mutations in the last hour"):
        mutate_config(config_file, {"cusum_k": 0.7}, guardrails=rails, steps_since_last_mutation=5000,
                      now=lambda: next(hour))
    assert _disk(config_file.parent) == before
    mutate_config(config_file, {"cusum_k": 0.7}, guardrails=rails, steps_since_last_mutation=5000,
                  now=lambda: 1_800_000_000 + 3700.0)  # an hour after the first
    assert load_config(config_file).cusum_k == 0.7


def test_rollback_restores_the_backup_when_the_new_config_scores_worse(config_file):
    mutate_config(config_file, {"cusum_k": 0.7})
    mutated = config_file.read_bytes()

    def score(config, series, window):  # RMSE that grows with cusum_k
        assert window == 500 and series == ["newest"]
        return 1.0 + 2.0 * (config.cusum_k - 0.5)

    report = rollback_if_degraded(config_file, ["newest"], score, guardrails=Guardrails(rollback_worsening=0.5))
    assert (report.current_rmse, report.backup_rmse, report.rolled_back) == (pytest.approx(1.4), 1.0, False)
    assert config_file.read_bytes() == mutated
    report = rollback_if_degraded(config_file, ["newest"], score)
    assert report.rolled_back and config_file.read_bytes() == CONFIG.encode()
    entry = audit_entries(config_file)[-1]
    assert entry["status"] == "ROLLBACK" and entry["delta"] == {"cusum_k": {"old": 0.7, "new": 0.5}}
    assert not rollback_if_degraded(config_file, ["newest"], score).rolled_back  # nothing left to undo


def test_export_to_toml_applies_the_protocol(config_file):
    result = OptimizationResult("study", "fast", {"cusum_k": 0.6, "grace_period_steps": 25}, 0.81, 50, False, 0.0)
    report = result.export_to_toml(config_file)
    assert report.delta == {"cusum_k": (0.5, 0.6), "grace_period_steps": (20, 25)}
    assert audit_entries(config_file)[-1]["trigger"] == "FastTuning_study"
    locked = OptimizationResult("study", "deep", {"snapshot_path": "x"}, 0.81, 50, False, 0.0)
    with pytest.raises(ConfigMutationError, match="locked"):
        locked.export_to_toml(config_file)
