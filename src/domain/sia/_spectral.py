"""Spectral diagnostics of the buffer: Koopman modes and Paley–Wiener.

* :func:`koopman_spectrum` — DMD on a delay (Hankel) embedding of the centred buffer: the
  one-step linear operator fitted on the delay vectors, its eigenvalues (Koopman eigenvalues of
  the observables spanned by the delays), their frequencies and growth rates, and each mode's
  share of the energy of the first snapshot. The ``koopman_top_k`` strongest modes are kept;
  those whose share is below ``koopman_min_power`` are flagged off (``kept``).
* :func:`paley_wiener` — ``∫ |log f(λ)| / (1 + λ²) dλ`` over the Nyquist band, f the spectral
  density of the increments scaled to unit variance (a Daniell-smoothed periodogram, so that no
  isolated zero of the raw periodogram diverges), with the flag ``regular`` when it is below
  ``paley_wiener_integral_max``. A finite integral is the Paley–Wiener (Szegő) condition for a
  non-deterministic, linearly unpredictable component; a frozen or purely periodic signal fails it.

Both are pure JAX, fixed shapes, jit- and vmap-safe. ``jnp.linalg.eig`` (DMD) runs on CPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._config import PredictorConfig
from .._pytree import pytree

# Squared singular values below this fraction of the largest are treated as zero (rank deficiency).
_RANK_RTOL = 1e-14
# Half-width (in frequency bins) of the Daniell smoothing of the periodogram.
_DANIELL = 2
# Spectral densities below this fraction of their mean count as zero (log f → −∞).
_DENSITY_FLOOR = 1e-300


@pytree
class KoopmanSpectrum:
    """The strongest DMD modes, by decreasing energy share.

    Attributes:
        eigenvalues: complex128[k], one-step eigenvalues λ (|λ| < 1: decaying).
        frequency: float64[k], |arg λ| / (2π Δt) ≥ 0, cycles per unit of time (the two modes of a
            conjugate pair, one real oscillation, report the same frequency).
        growth: float64[k], log|λ| / Δt, per unit of time.
        power: float64[k], the mode's share of the first snapshot's energy (shares sum to ≈ 1).
        kept: bool[k], power ≥ ``koopman_min_power``.
    """

    eigenvalues: jax.Array
    frequency: jax.Array
    growth: jax.Array
    power: jax.Array
    kept: jax.Array


@pytree
class PaleyWiener:
    """Attributes: ``integral`` (float64, +inf when the density vanishes on a band) and
    ``regular`` (bool, integral ≤ ``paley_wiener_integral_max``)."""

    integral: jax.Array
    regular: jax.Array


def delay_dimension(n: int, config: PredictorConfig) -> int:
    """Embedding dimension: two delays per reported mode (a real oscillation is a conjugate pair)
    plus two, at most a quarter of the buffer."""
    return max(2, min(2 * config.koopman_top_k + 2, n // 4))


@functools.partial(jax.jit, static_argnames=("config",))
def koopman_spectrum(signal: jax.Array, config: PredictorConfig) -> KoopmanSpectrum:
    """Top ``koopman_top_k`` modes of DMD on the delay embedding of the buffer."""
    x = jnp.asarray(signal, dtype=jnp.float64)
    n = x.shape[-1]
    d = delay_dimension(n, config)
    x = x - jnp.mean(x)
    hankel = jnp.stack([x[i:n - d + i + 1] for i in range(d)])  # d × (n − d + 1)
    before, after = hankel[:, :-1], hankel[:, 1:]
    # DMD through the d × d Gram matrix instead of an SVD of the d × (n − d) snapshots (the same
    # subspace: before = U S Vᵀ, before·beforeᵀ = U S² Uᵀ), several times cheaper.
    s2, u = jnp.linalg.eigh(before @ before.T)
    usable = s2 > _RANK_RTOL * jnp.max(s2)
    s2_inv = jnp.where(usable, 1.0 / jnp.where(usable, s2, 1.0), 0.0)
    reduced = u.T @ (after @ before.T) @ u * s2_inv[None, :]  # Ã = Uᵀ · after · V S⁻¹
    eigenvalues, vectors = jnp.linalg.eig(reduced)
    # Projected modes U·wᵢ (unit norm): the first snapshot's coordinates in the eigenbasis.
    amplitudes = jnp.linalg.solve(vectors, (u.T @ before[:, 0]).astype(vectors.dtype))
    energy = jnp.where(jnp.abs(eigenvalues) > 0, jnp.abs(amplitudes) ** 2, 0.0)
    share = energy / jnp.maximum(jnp.sum(energy), 1e-300)
    k = min(config.koopman_top_k, d)
    power, order = jax.lax.top_k(share, k)
    chosen = eigenvalues[order]
    dt = config.signal_sampling_interval
    magnitude = jnp.abs(chosen)
    growth = jnp.where(magnitude > 0, jnp.log(jnp.where(magnitude > 0, magnitude, 1.0)) / dt, -jnp.inf)
    return KoopmanSpectrum(eigenvalues=chosen, frequency=jnp.abs(jnp.angle(chosen)) / (2 * np.pi * dt),
                           growth=growth, power=power, kept=power >= config.koopman_min_power)


@functools.partial(jax.jit, static_argnames=("config",))
def paley_wiener(signal: jax.Array, config: PredictorConfig) -> PaleyWiener:
    """The Paley–Wiener integral of the increments' spectral density and its regularity flag."""
    x = jnp.diff(jnp.asarray(signal, dtype=jnp.float64))
    m = x.shape[-1]
    dt = config.signal_sampling_interval
    x = x - jnp.mean(x)
    spread = jnp.std(x)
    x = x / jnp.where(spread > 0, spread, 1.0)  # unit-free: the integral ignores the signal's units
    periodogram = jnp.abs(jnp.fft.rfft(x)) ** 2 * dt / (2 * np.pi * m)
    bins = periodogram.shape[-1]
    kernel = np.ones(2 * _DANIELL + 1) / (2 * _DANIELL + 1)
    # Reflect at both ends: the density is even in λ and periodic in the band.
    padded = jnp.concatenate([periodogram[1:_DANIELL + 1][::-1], periodogram,
                              periodogram[bins - _DANIELL - 1:bins - 1][::-1]])
    density = jnp.convolve(padded, jnp.asarray(kernel), mode="valid")
    scale = jnp.mean(density)
    floor = _DENSITY_FLOOR * jnp.where(scale > 0, scale, 1.0)
    log_density = jnp.where(density > floor, jnp.log(jnp.where(density > floor, density, 1.0)), -jnp.inf)
    frequency = 2 * np.pi * np.arange(bins) / (m * dt)  # angular, 0 … π/Δt
    weights = np.full(bins, 2 * np.pi / (m * dt))
    weights[0] *= 0.5
    if m % 2 == 0:
        weights[-1] *= 0.5
    integral = 2.0 * jnp.sum(jnp.asarray(weights / (1 + frequency ** 2)) * jnp.abs(log_density))
    return PaleyWiener(integral=integral, regular=integral <= config.paley_wiener_integral_max)
