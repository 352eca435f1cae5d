"""Exact test signals with known multifractal spectra (numpy, explicit seeded generators).

* :func:`fbm` — fractional Brownian motion sampled exactly on a regular grid by circulant
  embedding of the fractional-Gaussian-noise covariance (Davies–Harte). The embedding is
  non-negative definite for every ``H ∈ (0, 1)``, so the samples have exactly the fBm law.
* :func:`fbm_cholesky` — the same law by a Cholesky factor of the fBm covariance (O(n³); a
  reference for small n).
* :func:`binomial_cascade` — the integral of a binomial multiplicative cascade (weights ``p`` and
  ``1 − p`` placed at random left/right at each split), whose scaling function is
  ``τ(q) = −log2(p^q + (1 − p)^q)``.
"""

from __future__ import annotations

import numpy as np


def fgn_autocovariance(h: float, lags: np.ndarray) -> np.ndarray:
    """γ(k) = ½(|k+1|^{2H} − 2|k|^{2H} + |k−1|^{2H}) of unit-variance fractional Gaussian noise."""
    k = np.abs(np.asarray(lags, dtype=np.float64))
    return 0.5 * (np.abs(k + 1) ** (2 * h) - 2 * k ** (2 * h) + np.abs(k - 1) ** (2 * h))


def fbm(n: int, h: float, rng: np.random.Generator) -> np.ndarray:
    """n samples B_H(1), …, B_H(n) of fBm with unit-variance increments (B_H(0) = 0 omitted)."""
    if not 0.0 < h < 1.0:
        raise ValueError(f"Hurst exponent must lie in (0, 1), got {h}")
    m = 2 * n
    row = fgn_autocovariance(h, np.concatenate([np.arange(n + 1), np.arange(n - 1, 0, -1)]))
    eigen = np.fft.fft(row).real
    if eigen.min() < -1e-9 * eigen.max():
        raise ArithmeticError("circulant embedding is not non-negative definite")
    weights = np.sqrt(np.clip(eigen, 0.0, None) / m)
    noise = rng.standard_normal(m) + 1j * rng.standard_normal(m)
    fgn = np.fft.fft(weights * noise).real[:n]
    return np.cumsum(fgn)


def fbm_covariance(n: int, h: float) -> np.ndarray:
    """Cov(B_H(s), B_H(t)) = ½(s^{2H} + t^{2H} − |t − s|^{2H}) for s, t = 1..n."""
    t = np.arange(1, n + 1, dtype=np.float64)
    return 0.5 * (t[:, None] ** (2 * h) + t[None, :] ** (2 * h) - np.abs(t[:, None] - t[None, :]) ** (2 * h))


def fbm_cholesky(n: int, h: float, rng: np.random.Generator) -> np.ndarray:
    """Same law as :func:`fbm` through the Cholesky factor of the covariance (small n only)."""
    return np.linalg.cholesky(fbm_covariance(n, h)) @ rng.standard_normal(n)


def binomial_cascade(levels: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative mass F(k/2^L) of a binomial cascade after ``levels`` dyadic splits.

    Each cell's mass is split into fractions ``p`` and ``1 − p`` whose order (left/right) is drawn
    by a fair coin; the masses of the 2^L cells are summed into the staircase F, whose wavelet
    maxima scale as the cell masses, so that Z(q, a) ∝ a^{τ(q)} with
    ``τ(q) = −log2(p^q + (1 − p)^q)``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"cascade weight must lie in (0, 1), got {p}")
    mass = np.ones(1)
    for _ in range(levels):
        left = np.where(rng.random(mass.size) < 0.5, p, 1.0 - p)
        mass = np.stack([mass * left, mass * (1.0 - left)], axis=1).reshape(-1)
    return np.cumsum(mass)


def cascade_tau(q: np.ndarray, p: float) -> np.ndarray:
    """The exact scaling function τ(q) = −log2(p^q + (1 − p)^q) of the binomial cascade."""
    q = np.asarray(q, dtype=np.float64)
    return -np.log2(p ** q + (1.0 - p) ** q)


def ornstein_uhlenbeck(n: int, relaxation: float, rng: np.random.Generator, block: int = 256) -> np.ndarray:
    """n unit-interval samples of a stationary unit-variance Ornstein–Uhlenbeck process with
    relaxation time ``relaxation`` (samples), exactly: x_t = φ x_{t−1} + √(1 − φ²) ξ_t, φ = e^{−1/θ}.

    Rough like Brownian motion (H = 1/2) on scales well below θ, stationary noise above it. The
    recursion runs in closed form inside blocks (φ^{−j} stays near 1 there) and carries the
    block ends forward, so it costs a few numpy passes instead of a Python loop per sample.
    """
    phi = np.exp(-1.0 / relaxation)
    blocks = -(-n // block)
    noise = rng.standard_normal((blocks, block)) * np.sqrt(1.0 - phi * phi)
    noise[0, 0] = rng.standard_normal()  # x_0 from the stationary law
    powers = phi ** np.arange(block)
    inner = np.cumsum(noise / powers, axis=1) * powers  # each block started from 0
    starts = np.empty(blocks)
    carry = 0.0
    for b in range(blocks):  # x entering block b, propagated one step into it
        starts[b] = carry
        carry = phi * (carry * powers[-1] + inner[b, -1])
    return (inner + starts[:, None] * powers).reshape(-1)[:n]
