"""Timing shared by the kernel benchmarks: the best-of-``repeats`` mean time of a JAX call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def best_us(function: Callable[..., Any], *args: Any, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` mean wall time of ``calls`` calls, in µs per call. The first call (which
    may compile) is not timed; every timed batch of calls is blocked on before the clock stops."""
    jax.block_until_ready(function(*args))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            out = function(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6
