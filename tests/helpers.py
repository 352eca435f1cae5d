"""Shared simulation helpers for the tests (seeded numpy generators only)."""

from __future__ import annotations

import numpy as np

#: A persistent AR(2) with complex roots of modulus √0.6: smooth, oscillating, stationary.
AR2 = (1.5, -0.6)


def ar2(length: int, seed: int, phi: tuple[float, float] = AR2) -> tuple[np.ndarray, np.ndarray]:
    """(series, innovations) of x_t = φ1 x_{t−1} + φ2 x_{t−2} + e_t, e ~ N(0, 1)."""
    noise = np.random.default_rng(seed).standard_normal(length)
    x = np.zeros(length)
    for t in range(2, length):
        x[t] = phi[0] * x[t - 1] + phi[1] * x[t - 2] + noise[t]
    return x, noise


def random_walk(length: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).standard_normal(length))


def one_step_errors(series: np.ndarray, outputs: np.ndarray, start: int) -> np.ndarray:
    """Errors of the forecasts made at ticks start..T−2 for ticks start+1..T−1."""
    from usp.domain._core import Out

    return series[start + 1:] - outputs[start:-1, Out.PREDICTION]
