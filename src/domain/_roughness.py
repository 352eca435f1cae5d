"""Roughness of the path (model.md §2 step 5, §3): the SIA reading, its amortised refresh, the
sampling-density guard and the circuit breaker.

* :func:`analyse_buffer` runs the identification engine on the last ``wtmm_buffer_size``
  samples: the WTMM Hölder exponent and spectrum width, the Koopman modes and the Paley–Wiener
  integral (``usp.domain.sia``), packed as :class:`Sia`. It costs about 100 µs, so the core
  runs it every ``wtmm_refresh_steps`` accepted ticks and holds the reading in between.
* :func:`smooth_holder` is the EMA that drives the breaker. It starts from the Brownian value
  H = 1/2 rather than from the first, noisy reading (sd ≈ 0.1 on 128 samples): the breaker then
  needs evidence accumulated over several buffers before it calls a path rough.
* :func:`density_step` is the sampling-density guard: the WTMM reads scales in samples, so when
  the typical gap between ticks is too coarse for its finest scale the reading aliases and the
  topological branch (this reading and the breaker) is frozen until density returns.
* :func:`breaker_step` is the circuit breaker with hysteresis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._config import PredictorConfig
from .sia import koopman_spectrum, paley_wiener, wtmm
from .sia._spectral import delay_dimension
from .sia._wtmm import make_plan

#: Hölder exponent of a Brownian path: the prior the smoothed estimate starts from.
BROWNIAN_HOLDER = 0.5
#: The breaker reads a reading clipped to this range, the Hölder exponents of continuous paths: a
#: buffer holding a trend, a step or a period can read far outside it (−1 to 7 measured), and one
#: such reading must not move the smoothed exponent by more than a plausible one.
BREAKER_HOLDER_RANGE = (0.0, 1.0)
#: The branch freezes when more than this share of recent gaps is too coarse…
COARSE_SHARE_FREEZE = 0.25
#: … and is released when the share falls below this.
COARSE_SHARE_RELEASE = 0.125


class Sia:
    """Layout of a reading of the identification engine: one float64 vector ``[4 + 3k]`` (one
    leaf, so that it costs one buffer to dispatch), k = :func:`koopman_modes`.

    * ``HOLDER``: WTMM Hölder exponent of the buffer (the h maximising D(h));
    * ``WIDTH``: width of the singularity spectrum (0 for a monofractal);
    * ``PALEY_WIENER``: ∫ |log f(λ)| / (1 + λ²) dλ of the increments (capped at 1e300);
    * ``VALID``: 1 when at least three scales of the WTMM scaling range hold maxima lines (a
      constant or nearly constant buffer does not), else 0; the core adopts valid readings only;
    * then the k strongest Koopman (DMD) modes: frequencies (cycles per unit of
      ``signal_sampling_interval``), growth rates (log|λ| per unit), energy shares (0 when
      below ``koopman_min_power``).
    """

    HOLDER, WIDTH, PALEY_WIENER, VALID = 0, 1, 2, 3
    KOOPMAN = 4

    @staticmethod
    def length(n_modes: int) -> int:
        return Sia.KOOPMAN + 3 * n_modes


def koopman_modes(config: PredictorConfig) -> int:
    """Number of Koopman modes in a reading (``koopman_top_k``, at most the delay dimension)."""
    return min(config.koopman_top_k, delay_dimension(config.wtmm_buffer_size, config))


def validate_sia(config: PredictorConfig) -> None:
    """Raise ``ConfigError`` now (not at the first refresh) if the buffer cannot hold the WTMM scales."""
    make_plan(config.wtmm_buffer_size, config)


def initial_reading(config: PredictorConfig) -> jax.Array:
    """The reading before the buffer first fills: a Brownian path, no modes, PW integral 0."""
    return (jnp.zeros(Sia.length(koopman_modes(config))).at[Sia.HOLDER].set(BROWNIAN_HOLDER)
            .at[Sia.VALID].set(1.0))


def analyse_buffer(buffer: jax.Array, config: PredictorConfig) -> jax.Array:
    """Run the identification engine on float64[wtmm_buffer_size] (oldest first): a reading
    laid out as :class:`Sia`."""
    result = wtmm(buffer, config)
    modes = koopman_spectrum(buffer, config)
    integral = paley_wiener(buffer, config).integral
    return jnp.concatenate([
        jnp.stack([result.holder, result.width, jnp.minimum(integral, 1e300), result.valid.astype(jnp.float64)]),
        modes.frequency, jnp.maximum(modes.growth, -1e300), jnp.where(modes.kept, modes.power, 0.0)])


def refresh_weight(smoothing: float, refresh_steps: int) -> float:
    """EMA weight per refresh equivalent to the per-tick weight ``smoothing``: 1 − (1 − α)^R."""
    return 1.0 - (1.0 - smoothing) ** refresh_steps


def smooth_holder(smoothed: jax.Array, reading: jax.Array, weight: float) -> jax.Array:
    """One EMA update of the smoothed Hölder exponent (started at ``BROWNIAN_HOLDER``) by a
    reading clipped to ``BREAKER_HOLDER_RANGE``."""
    return smoothed + weight * (jnp.clip(reading, *BREAKER_HOLDER_RANGE) - smoothed)


def density_step(coarse_share: jax.Array, frozen: jax.Array, gap_ns: jax.Array, measured: jax.Array,
                 config: PredictorConfig) -> tuple[jax.Array, jax.Array]:
    """Sampling-density guard: ``(coarse_share, frozen)`` after one tick.

    A gap is coarse when the finest wavelet scale spans more time than the Nyquist interval:
    ``wtmm_min_scale · gap > besov_nyquist_interval_ns``. ``coarse_share`` is an EMA of that
    indicator over half a buffer (weight 2/B), updated only on ticks with a ``measured`` gap.
    The branch freezes when the share exceeds 1/4 and is released when it falls below 1/8. From
    dense sampling a run of coarse gaps freezes it after ln(4/3)·B/2 ≈ 18 ticks (B = 128), so a
    reading taken before the freeze holds at most that many coarse gaps; the core takes the
    first reading after a release only once the buffer holds ticks from after it.
    """
    coarse = config.wtmm_min_scale * gap_ns.astype(jnp.float64) > config.besov_nyquist_interval_ns
    share = coarse_share + (2.0 / config.wtmm_buffer_size) * (coarse.astype(jnp.float64) - coarse_share)
    share = jnp.where(measured, share, coarse_share)
    frozen = jnp.where(frozen, share >= COARSE_SHARE_RELEASE, share > COARSE_SHARE_FREEZE)
    return share, frozen


def breaker_step(emergency: jax.Array, holder: jax.Array, holder_threshold: float,
                 dimension_threshold: float, margin: float) -> jax.Array:
    """Circuit breaker with hysteresis on the smoothed Hölder exponent ``holder``.

    Enter when H < holder_threshold or the graph dimension 2 − H > dimension_threshold + margin;
    leave only when H > holder_threshold + margin and 2 − H < dimension_threshold.
    """
    dimension = 2.0 - holder
    enter = (holder < holder_threshold) | (dimension > dimension_threshold + margin)
    leave = (holder > holder_threshold + margin) & (dimension < dimension_threshold)
    return jnp.where(emergency, ~leave, enter)
