"""The compile cache keys on the config's non-I/O keys: predictors whose configs differ only in
``[io]`` / ``[security]`` / ``[meta_optimization]`` keys share one compiled core and compile nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs
import jax
import numpy as np
from usp import PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.domain._config import core_config

from .helpers import random_walk

BASE = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32, kernel_a_order=4,
                       enabled_kernels=("A",))
T0 = 1_800_000_000_000_000_000
#: JAX reports these for every function it traces or lowers, whether or not XLA's compiler (or
#: the persistent cache) then runs: a cache miss of a jitted function always records them.
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")


@contextlib.contextmanager
def traced_functions() -> Iterator[list[str]]:
    """The trace/lowering events JAX records inside the block."""
    events: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event in TRACE_EVENTS:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _use(config: PredictorConfig) -> UniversalPredictor:
    """Build a predictor (which warms up), fit a history and step one tick."""
    predictor = UniversalPredictor(config, ReplayClock())
    predictor.fit_history(random_walk(70, seed=3))
    predictor.step(ProcessState(1.0, T0))
    return predictor


def test_configs_differing_only_in_io_keys_compile_nothing_new(tmp_path):
    io_only = attrs.evolve(BASE, snapshot_path=str(tmp_path / "elsewhere"), storage_kind="memory",
                           schema_version="1.1", credentials_vault_path=str(tmp_path / "absent.env"),
                           checkpoint_path=str(tmp_path / "ck"))
    assert io_only != BASE and core_config(io_only) == core_config(BASE) == BASE
    first = _use(BASE)
    with traced_functions() as traced:
        second = _use(io_only)
    assert traced == []
    assert second.functional._step is first.functional._step and second.functional._scan is first.functional._scan
    assert second.config == io_only  # the predictor keeps its full config (snapshots record it)
    receipt = second.save_snapshot("asset")  # and its I/O keys still act: storage_kind = "memory"
    assert receipt.key == "asset" and not (tmp_path / "elsewhere").exists()


def test_a_core_key_does_compile_anew():
    """The counter sees compilations: a structural (not traced) core key is part of the compiled graph's key."""
    first = _use(BASE)
    with traced_functions() as traced:
        second = _use(attrs.evolve(BASE, volatility_alpha=BASE.volatility_alpha * 1.5))
    assert traced and second.functional._step is not first.functional._step
    np.testing.assert_array_equal(np.asarray(second.state.window), np.asarray(first.state.window))
