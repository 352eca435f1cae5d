"""Load shedding: the depth controller under injected timings, and no recompilation when switching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp.application._load_shedding import (
    LoadSheddingController,
    LoadSheddingPolicy,
    depth_variants,
)
from usp.domain import PredictorConfig, Window
from usp.plugins.kernel_d import KERNEL_D

US = 1_000
POLICY = LoadSheddingPolicy(budget_ns=1_000 * US, recover_after=50, cooldown=10, window=64)


def _feed(controller: LoadSheddingController, latencies) -> list[int]:
    return [controller.record(int(x)) for x in latencies]


def test_depth_drops_under_a_latency_spike_and_climbs_back():
    controller = LoadSheddingController(POLICY)
    assert controller.depth == 5
    calm = _feed(controller, [100 * US] * 100)
    assert set(calm) == {5}
    spike = _feed(controller, [2_000 * US] * 60)  # EWMA far above 0.5 × budget
    assert spike[-1] == 2 and 3 in spike  # one level at a time, cooldown between switches
    assert controller.figures().shed
    recovery = _feed(controller, [100 * US] * 400)
    assert recovery[-1] == 5
    assert recovery.index(3) < recovery.index(5)  # climbs level by level
    assert controller.figures().switches == 4


def test_jitter_alone_degrades():
    controller = LoadSheddingController(POLICY)
    depths = _feed(controller, [0, 900 * US] * 30)  # EWMA ≈ 450 µs < 500 µs, jitter 900 µs > 800 µs
    figures = controller.figures()
    assert figures.latency_ewma_ns < POLICY.latency_limit_ns
    assert figures.jitter_p95_ns > POLICY.jitter_limit_ns
    assert depths[-1] < 5


def test_hysteresis_band_does_not_flip_flop():
    controller = LoadSheddingController(POLICY, depth=3)
    depths = _feed(controller, [400 * US] * 500)  # above the recovery margin, below the limit
    assert set(depths) == {3}
    assert controller.figures().switches == 0


def test_figures_match_nearest_rank_percentiles_of_the_ring():
    rng = np.random.default_rng(0)
    samples = rng.integers(10 * US, 200 * US, size=300)
    controller = LoadSheddingController(POLICY)
    _feed(controller, samples)
    ring = np.sort(samples[-POLICY.window:])
    jitter = np.sort(np.abs(np.diff(samples))[-POLICY.window:])
    figures = controller.figures()
    n = POLICY.window
    assert figures.latency_p50_ns == ring[int(np.ceil(0.50 * n)) - 1]
    assert figures.latency_p99_ns == ring[int(np.ceil(0.99 * n)) - 1]
    assert figures.jitter_p95_ns == jitter[int(np.ceil(0.95 * n)) - 1]
    assert figures.jitter_p99_ns == jitter[int(np.ceil(0.99 * n)) - 1]
    assert figures.samples == 300 and figures.as_dict()["depth"] == controller.depth
    ewma = float(samples[0])
    for x in samples[1:]:
        ewma = POLICY.ewma_alpha * x + (1 - POLICY.ewma_alpha) * ewma
    assert figures.latency_ewma_ns == pytest.approx(ewma)


def test_timed_records_perf_counter_latency_and_policy_validation():
    controller = LoadSheddingController()
    with controller.timed():
        sum(range(1000))
    assert controller.figures().samples == 1 and controller.figures().latency_ewma_ns > 0
    with pytest.raises(ValueError, match="depths"):
        LoadSheddingPolicy(depths=(5, 3))
    with pytest.raises(ValueError, match="recover_margin"):
        LoadSheddingPolicy(recover_margin=1.5)
    with pytest.raises(ValueError, match="depth 4"):
        LoadSheddingController(depth=4)
    with pytest.raises(ValueError, match="non-negative"):
        controller.record(-1)


def test_switching_precompiled_depths_never_recompiles():
    traces: list[int] = []

    def step(state, values, config):
        traces.append(config.log_sig_depth)  # runs only when jax traces (i.e. compiles) a variant
        window = Window(values=values, count=jnp.int32(values.shape[0]), signal_frozen=jnp.asarray(False),
                        emergency=jnp.asarray(False))
        state = KERNEL_D.update(state, window, config)
        return state, KERNEL_D.predict(state, window, config).mean

    compiled = jax.jit(step, static_argnames="config")
    variants = depth_variants(PredictorConfig())
    series = jnp.asarray(np.cumsum(np.random.default_rng(1).normal(size=400)))
    size = PredictorConfig().window_size
    state = KERNEL_D.init(variants[5], None)
    for config in variants.values():  # warm-up: one compiled graph per depth
        compiled(state, series[:size], config)
    assert sorted(traces) == [2, 3, 5]
    controller = LoadSheddingController(POLICY)
    latencies = [100 * US] * 20 + [3_000 * US] * 40 + [100 * US] * 80
    used = []
    for t, latency in enumerate(latencies):
        depth = controller.depth
        used.append(depth)
        state, mean = compiled(state, series[t:t + size], variants[depth])
        assert np.isfinite(float(mean))
        controller.record(latency)
    assert set(used) == {2, 3, 5}
    assert sorted(traces) == [2, 3, 5]  # no new trace, hence no new compilation, after warm-up
