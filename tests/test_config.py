"""Configuration: defaults, config.toml, typed validation errors, round trips, hashability."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp import ConfigError, FunctionalPredictor, PredictorConfig, load_config
from usp.cli import default_config_toml, main
from usp.domain._config import FIELDS, SECTIONS, config_from_sections, config_to_sections

ROOT = Path(__file__).resolve().parent.parent


def test_config_toml_is_the_documented_default():
    assert (ROOT / "config.toml").read_text() == default_config_toml()
    assert load_config(ROOT / "config.toml") == PredictorConfig()
    sections = tomllib.loads((ROOT / "config.toml").read_text())
    assert set(sections) == set(SECTIONS)
    text = (ROOT / "config.toml").read_text().splitlines()
    for name in FIELDS:  # every key is preceded by its comment
        index = next(i for i, line in enumerate(text) if line.startswith(f"{name} = "))
        assert text[index - 1].startswith("# ")


def test_every_key_is_documented_in_docs():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in FIELDS if f"`{name}`" not in doc]
    assert not missing


@pytest.mark.parametrize(("sections", "message"), [
    ({"core": {"sigma_bound": 0.5}}, r"\[core\] sigma_bound = 0.5: out of range, allowed \[1.0, 1000000.0\]"),
    ({"core": {"sigmabound": 20.0}}, r"unknown key \[core\] sigmabound"),
    ({"nope": {}}, r"unknown section \[nope\]"),
    ({"sensitivity": {"cusum_h": "5"}}, r"cusum_h = '5': expected float"),
    ({"sensitivity": {"grace_period_steps": 2.5}}, r"grace_period_steps = 2.5: expected int"),
    ({"orchestrator": {"sinkhorn_cost_type": "l1"}}, r"sinkhorn_cost_type = 'l1': allowed one of 'squared', 'huber'"),
    ({"kernels": {"seed": 3}}, r"key seed belongs to \[core\], not \[kernels\]"),
    ({"kernels": {"enabled_kernels": []}}, r"enabled_kernels"),
    ({"sensitivity": {"epsilon": float("inf")}}, r"epsilon = inf: must be finite"),
    ({"orchestrator": {"entropy_window_bounds_min": 600}}, r"entropy_window_bounds_min = 600 exceeds"),
    ({"orchestrator": {"robustness_force_kernel_d": 1}}, r"expected bool"),
    ({"numerical": {"wtmm_h_min": 1.0, "wtmm_h_max": 1.0}}, r"wtmm_h_min = 1.0 must be below wtmm_h_max = 1.0"),
    ({"core": {"besov_nyquist_interval_ns": 2**63}}, r"besov_nyquist_interval_ns = 9223372036854775808: does not fit"),
])
def test_bad_config_names_the_key_and_range(sections, message):
    with pytest.raises(ConfigError, match=message):
        config_from_sections(sections)


def test_load_config_reports_bad_toml_and_missing_files(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[core\nseed = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def _value(field: attrs.Attribute):
    meta = field.metadata
    if meta["choices"] is not None:
        return st.sampled_from(meta["choices"])
    kind = FIELDS[field.name].type
    if field.name == "enabled_kernels":
        return st.just(("A",))
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        return st.text(min_size=1, max_size=8)
    lo = meta["lo"] if meta["lo"] is not None else -1e6
    hi = meta["hi"] if meta["hi"] is not None else 1e9
    return st.integers(int(lo), int(min(hi, 10**9))) if kind == "int" else st.floats(lo, hi)


@given(st.fixed_dictionaries({}, optional={name: _value(f) for name, f in FIELDS.items()}))
def test_round_trip_sections_config_sections(overrides):
    try:
        config = attrs.evolve(PredictorConfig(), **overrides)
    except ConfigError:
        return  # a cross-field constraint rejected this combination: also a valid outcome
    assert config_from_sections(config_to_sections(config)) == config


def test_config_is_hashable_and_static_under_jit():
    config = PredictorConfig()
    assert hash(config) == hash(PredictorConfig())
    traced = jax.jit(lambda x, c: x * c.cusum_h, static_argnums=1)
    assert float(traced(jnp.float64(2.0), config)) == 2.0 * config.cusum_h
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.cusum_h = 1.0  # type: ignore[misc]


# --- `usp config check` runs the validation of building a predictor ------------------------------

#: Configs that only building a predictor used to reject, and the key each error must name.
PREDICTOR_REJECTS = [
    ('[kernels]\nenabled_kernels = ["A", "nope"]\n', r"enabled_kernels names \['nope'\]"),
    ("[numerical]\nwtmm_h_min = 2.5\nwtmm_h_max = 1.0\n", r"wtmm_h_min = 2.5 must be below wtmm_h_max"),
    ("[numerical]\nwtmm_buffer_size = 32\nwtmm_max_scale_fraction = 0.05\n[kernels]\nkernel_a_order = 4\n",
     r"wtmm_max_scale_fraction = 0.05 leave fewer than 3 scales"),
    ("[numerical]\nsignal_sampling_interval = 1e12\n",
     r"\[numerical\] signal_sampling_interval = 1000000000000.0 s: in nanoseconds it does not fit a 64-bit integer"),
    ("[core]\nstaleness_ttl_ns = 99_999_999_999_999_999_999\n", r"\[core\] staleness_ttl_ns = .*does not fit a 64-bit"),
]


@pytest.mark.parametrize(("toml", "message"), PREDICTOR_REJECTS)
def test_config_check_rejects_what_building_a_predictor_rejects(tmp_path, capsys, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        FunctionalPredictor(load_config(path))
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.search(message, captured.err)
    assert captured.err.startswith(f"usp: error: {path}: ") and captured.err.count("\n") == 1


def test_config_check_accepts_what_builds_and_names_the_kernels(tmp_path, capsys):
    for path in (ROOT / "config.toml", ROOT / "examples" / "co2_weekly.toml"):
        assert FunctionalPredictor(load_config(path)).kernel_names == ("A", "D", "N", "S")
        assert main(["config", "check", str(path)]) == 0
        assert capsys.readouterr().out == f"{path}: ok (kernels: A [builtin], D [builtin], N [builtin], S [builtin])\n"


def test_config_files_that_are_not_utf8_or_not_files_are_config_errors(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[core]\nschema_version = "1.0 é"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml is not UTF-8 text \(byte 0xE9"):
        load_config(latin)
    with pytest.raises(ConfigError, match=r"cannot read config file .*: Is a directory"):
        load_config(tmp_path)
    bom = tmp_path / "bom.toml"
    bom.write_text("\ufeff[core]\nseed = 3\n", encoding="utf-8")
    assert load_config(bom).seed == 3
