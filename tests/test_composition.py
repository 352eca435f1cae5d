"""The composition root (``usp.composition``): the public constructors fill in the adapters,
kernels, device and secrets a config names, and the application classes take them explicitly."""

from __future__ import annotations

import os
import uuid

import attrs
import jax
import numpy as np
import pytest
import usp
from usp import ConfigError, FunctionalPredictor, PredictorConfig, ProcessState, UniversalPredictor, application
from usp.adapters.clocks import ReplayClock
from usp.adapters.stores import MemoryStore, check_key
from usp.application import SnapshotStores
from usp.plugins.manager import resolve_kernels

CONFIG = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         kernel_a_order=4, enabled_kernels=("A",))
T0 = 1_800_000_000_000_000_000


def _devices(state) -> set:
    return set().union(*(leaf.devices() for leaf in jax.tree_util.tree_leaves(state)))


def test_public_constructors_are_the_application_classes_with_their_dependencies_filled_in():
    functional = FunctionalPredictor(CONFIG)
    assert isinstance(functional, application.FunctionalPredictor) and isinstance(functional, usp.FunctionalPredictor)
    assert functional.kernel_names == ("A",) and functional.clock is not None
    predictor = UniversalPredictor(CONFIG, ReplayClock())
    assert isinstance(predictor, application.UniversalPredictor) and isinstance(predictor, usp.UniversalPredictor)
    assert isinstance(predictor.functional, application.FunctionalPredictor)
    with pytest.raises(TypeError):
        application.FunctionalPredictor(CONFIG)  # no default adapters or kernels inside the application


def test_the_application_uses_only_the_stores_it_is_given():
    store = MemoryStore()
    given = SnapshotStores(for_bare_keys=lambda on_event: store,
                           for_directory=lambda root, on_event: pytest.fail(f"no file store wanted ({root})"),
                           check_key=check_key)
    functional = application.FunctionalPredictor(CONFIG, clock=ReplayClock(), kernels=resolve_kernels(CONFIG))
    predictor = application.UniversalPredictor(functional, given)
    predictor.step(ProcessState(1.0, T0))
    predictor.save_snapshot("asset")
    assert store.load("asset") is not None
    restored = application.UniversalPredictor(functional, given)
    assert restored.load_snapshot("asset") is True
    np.testing.assert_array_equal(np.asarray(restored.state.window), np.asarray(predictor.state.window))


def test_the_state_lives_on_the_jax_platform_of_the_config():
    cpu = jax.devices("cpu")[0]
    functional = FunctionalPredictor(attrs.evolve(CONFIG, jax_platform="cpu"), clock=ReplayClock())
    assert functional.device == cpu
    state = functional.init_state()
    assert _devices(state) == {cpu}
    state, _ = functional.step(state, ProcessState(1.0, T0))
    assert _devices(state) == {cpu}
    assert _devices(functional.init_state(3)) == {cpu}


PLACEMENT = """
import jax, numpy as np
import usp, usp.composition as composition
from usp import FunctionalPredictor, PredictorConfig, ProcessState
from usp.adapters.clocks import ReplayClock
second = jax.devices("cpu")[1]
assert jax.devices()[0] != second  # the default device is cpu:0
composition.jax.devices = lambda platform=None: [second]  # the platform's first device is cpu:1
config = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         kernel_a_order=4, enabled_kernels=("A",))
functional = FunctionalPredictor(config, clock=ReplayClock())
state = functional.init_state()
state, _ = functional.step(state, ProcessState(1.0, 1_800_000_000_000_000_000))
state, _ = functional.fit_history(state, np.cumsum(np.ones(70)))
batch = functional.init_state(3)
devices = {d for tree in (state, batch) for leaf in jax.tree_util.tree_leaves(tree) for d in leaf.devices()}
print(sorted(str(d) for d in devices))
"""


def test_the_state_follows_the_platform_device_not_jax_default(tmp_path):
    """With two CPU devices, a platform whose first device is not JAX's default: the state, its
    steps and fit_history stay on that device (so the key is really placed there)."""
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", PLACEMENT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['cpu:1']"


def test_an_unavailable_jax_platform_is_a_config_error_naming_the_key():
    missing = []
    for platform in ("tpu", "gpu"):
        try:
            jax.devices(platform)
        except RuntimeError:
            missing.append(platform)
    if not missing:
        pytest.skip("this machine has every platform")
    config = attrs.evolve(CONFIG, jax_platform=missing[0])
    for build in (lambda: FunctionalPredictor(config), lambda: UniversalPredictor(config)):
        with pytest.raises(ConfigError, match=rf"jax_platform = '{missing[0]}'"):
            build()


def test_the_configured_store_loads_the_credentials_file_first_without_overriding_the_environment(tmp_path):
    fresh, preset = (f"USP_TEST_SECRET_{uuid.uuid4().hex}" for _ in range(2))
    vault = tmp_path / "secrets.env"
    vault.write_text(f"{fresh}=from-file\n{preset}=from-file\n")
    os.environ[preset] = "from-environment"
    try:
        predictor = UniversalPredictor(attrs.evolve(CONFIG, credentials_vault_path=str(vault),
                                                    storage_kind="memory"))
        assert fresh not in os.environ  # building a predictor reads no secrets
        predictor.save_snapshot("asset")  # a bare key: the configured store, built on first use
        assert os.environ[fresh] == "from-file" and os.environ[preset] == "from-environment"
    finally:
        os.environ.pop(fresh, None)
        os.environ.pop(preset, None)


def test_a_malformed_credentials_file_stops_the_configured_store_not_the_predictor(tmp_path, monkeypatch):
    vault = tmp_path / "broken.env"
    vault.write_text("NOT AN ASSIGNMENT\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ALSO BROKEN\n")  # the default credentials_vault_path
    predictor = UniversalPredictor(attrs.evolve(CONFIG, credentials_vault_path=str(vault), storage_kind="memory"))
    usp.backtest(np.cumsum(np.ones(80)), CONFIG)  # neither reads the default .env
    with pytest.raises(ConfigError, match=r"broken\.env, line 1"):
        predictor.save_snapshot("asset")
    absent = UniversalPredictor(attrs.evolve(CONFIG, credentials_vault_path=str(tmp_path / "absent.env"),
                                             storage_kind="memory"))
    absent.save_snapshot("asset")  # the file is optional


def test_the_integrity_key_must_name_the_digest_the_stores_seal_with():
    from types import SimpleNamespace

    from usp.composition import check_runtime

    check_runtime(CONFIG)
    with pytest.raises(ConfigError, match="snapshot_integrity_hash_algorithm"):
        check_runtime(SimpleNamespace(float_precision=64, snapshot_integrity_hash_algorithm="blake2b"))


def test_float_precision_is_checked_against_the_process_x64_mode():
    import jax
    from usp import ConfigError, FunctionalPredictor, PredictorConfig

    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ConfigError, match="float_precision"):
            FunctionalPredictor(PredictorConfig())
    finally:
        jax.config.update("jax_enable_x64", True)
    assert FunctionalPredictor(PredictorConfig()).config.float_precision == 64
