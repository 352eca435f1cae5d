"""Kernel N — the last value (martingale) forecast: the mixture's safe fallback.

``E[y_{t+1} | past] = y_t`` is the optimal forecast of a martingale, and the one-step forecast
every other kernel has to beat (MASE is measured against it). With N in the mixture, a series on
which A, D and S all lose to the last value can move its weight to N, so the fused forecast stays
close to naive (docs/model.md, "Kernel N").

The naive forecast's past one-step errors are the window's increments, so the kernel needs no
state of its own (an empty pytree: no leaf to carry across the compiled step). The scale is the
exponentially weighted RMS of the window's real increments, newest first, with weights
``(1 − volatility_alpha)^age`` normalised over the increments observed: the EMA of the squared
one-step errors, bias-corrected while the window fills. It is floored at ``SCALE_FLOOR_RELATIVE``
× the window's largest |value| (and 1e-300 for an all-zero window), so it stays > 0 on a constant
stream and follows the series' own scale. No ``fit``: there is nothing to refine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window

#: Smallest scale, relative to the window's largest |value|.
SCALE_FLOOR_RELATIVE = 1e-12
_TINY = 1e-300
_BIG = float(jnp.finfo(jnp.float64).max)

#: The kernel's state: empty (everything it needs is in the window).
KernelNState = tuple


def init(config: PredictorConfig, key: jax.Array) -> KernelNState:
    del config, key
    return ()


def update(state: KernelNState, window: Window, config: PredictorConfig) -> KernelNState:
    """Nothing to learn: the window holds the last value and the past errors."""
    del window, config
    return state


def predict(state: KernelNState, window: Window, config: PredictorConfig) -> KernelForecast:
    """The last value, with the exponentially weighted RMS of the window's increments as scale."""
    del state
    values = window.values
    size = values.shape[-1]
    steps = values[1:] - values[:-1]
    real = window.mask[1:] * window.mask[:-1]
    decay = jnp.asarray((1.0 - config.volatility_alpha) ** np.arange(size - 2, -1, -1.0))  # newest: 1
    weights = decay * real
    variance = jnp.sum(weights * jnp.minimum(steps * steps, _BIG)) / jnp.maximum(jnp.sum(weights), _TINY)
    floor = jnp.maximum(SCALE_FLOOR_RELATIVE * jnp.max(jnp.abs(values)), _TINY)
    return KernelForecast(mean=values[-1], scale=jnp.maximum(jnp.sqrt(jnp.minimum(variance, _BIG)), floor))


KERNEL_N = KernelSpec(
    name="N", init=init, update=update, predict=predict,
    description="Last value (martingale): the naive forecast, the mixture's fallback; scale from "
                "its realised one-step errors (the window's increments)")
