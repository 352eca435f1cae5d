"""Test settings: x64, a persistent JAX compilation cache, strict promotion, Hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache"))

import jax
import pytest
import usp  # noqa: F401  (applies x64 and the compilation cache)
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_executables():
    """Drop JAX's in-memory compiled executables after each test module. Every executable keeps
    a few memory mappings of its code alive, and one test process compiles thousands over the
    suite: left alone they reach the kernel's per-process limit (vm.max_map_count, 65530 by
    default), where XLA's next allocation fails with a segmentation fault. Later modules load
    what they need from the persistent compilation cache."""
    yield
    jax.clear_caches()
