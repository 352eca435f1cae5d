"""Load shedding wired into UniversalPredictor: depth drops under a latency spike, climbs back,
and switching never compiles after the warm-up."""

from __future__ import annotations

import numpy as np
import pytest
from usp import PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.application._load_shedding import LoadSheddingController, LoadSheddingPolicy

CONFIG = PredictorConfig(enabled_kernels=("A", "D"), window_size=64, wtmm_buffer_size=64, kurtosis_window=32,
                         kernel_a_order=4, log_sig_depth=5)
T0 = 1_800_000_000_000_000_000


def test_depth_follows_latency_without_recompiling():
    # A budget the real step cannot meet (2 µs): the controller must shed depth.
    policy = LoadSheddingPolicy(budget_ns=2_000, degrade_after=2, cooldown=3, recover_after=5)
    controller = LoadSheddingController(policy, depth=5)
    predictor = UniversalPredictor(CONFIG, clock=ReplayClock(), load_shedding=controller)
    variants = predictor._variants
    assert sorted(variants) == [2, 3, 5]
    compiled = {depth: v._step_packed._cache_size() for depth, v in variants.items()}
    assert all(count >= 1 for count in compiled.values())  # all compiled at warm-up
    series = np.cumsum(np.random.default_rng(0).standard_normal(60))
    depths = []
    for i, value in enumerate(series[:30]):
        result = predictor.step(ProcessState(float(value), T0 + i * 1_000_000))
        depths.append(result.telemetry.load_shedding["depth"])
    assert depths[0] == 5 and depths[-1] == 2 and 3 in depths  # shed one level at a time
    # latency recovers: a generous budget, the depth climbs back to 5
    controller.policy = LoadSheddingPolicy(budget_ns=10**12, degrade_after=2, cooldown=3, recover_after=5)
    for i, value in enumerate(series[30:], start=30):
        result = predictor.step(ProcessState(float(value), T0 + i * 1_000_000))
    assert result.telemetry.load_shedding["depth"] == 5
    assert result.telemetry.load_shedding["latency_p99_ns"] > 0
    assert {depth: v._step_packed._cache_size() for depth, v in variants.items()} == compiled


def test_load_shedding_needs_kernel_d():
    with pytest.raises(ValueError, match="kernel 'D'"):
        UniversalPredictor(PredictorConfig(enabled_kernels=("A",)), load_shedding=True)
