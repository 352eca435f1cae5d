"""The kernel contract: what a prediction kernel is, as data and pure functions.

A kernel is a bundle of pure functions over its own pytree state (optax style: nothing is kept
on ``self``). The orchestrator calls, once per accepted tick and in this order::

    state = update(state, window, config)     # learn from the newest observation window[-1]
    forecast = predict(state, window, config) # forecast the next value

Both functions must survive ``jax.jit`` and ``jax.vmap`` (no Python control flow on traced
values, no host callbacks, fixed shapes) and must return finite numbers for finite windows.
The optional ``fit(state, history, config)`` does heavier offline training on a 1-D history
(called by ``fit_history`` before streaming).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import jax
import jax.numpy as jnp

from ._config import PredictorConfig
from ._pytree import pytree

KernelState = Any  # any pytree of arrays


@pytree
class Window:
    """The signal a kernel sees at one tick.

    Attributes:
        values: float64[window_size], oldest first; ``values[-1]`` is the newest observation.
            Slots before the first observation hold the first observed value.
        count: int32 scalar, number of real observations in ``values`` (saturates at window_size).
        signal_frozen: bool scalar, the frozen-signal alarm is on (kernels that must hold their
            forecast while the signal is frozen read this).
        emergency: bool scalar, the circuit breaker is on (the path is rough).
    """

    values: jax.Array
    count: jax.Array
    signal_frozen: jax.Array
    emergency: jax.Array

    @property
    def mask(self) -> jax.Array:
        """float64[window_size]: 1 on slots holding real observations, 0 on padding."""
        size = self.values.shape[-1]
        return (jnp.arange(size) >= size - self.count).astype(self.values.dtype)


@pytree
class KernelForecast:
    """One kernel's forecast of the next value.

    Attributes:
        mean: float64 scalar, estimate of E[y_{t+1} | past], in the units of the signal.
        scale: float64 scalar > 0, the kernel's one-step error scale (standard deviation), taken
            from its own realised residuals, in the units of the signal.
    """

    mean: jax.Array
    scale: jax.Array


@attrs.frozen
class KernelSpec:
    """A registered kernel: a name and its pure functions.

    Attributes:
        name: unique registered name (``"A"``, ``"D"``, or a plugin's own).
        init: ``(config, key) -> state``: a fresh state (cold start).
        update: ``(state, window, config) -> state``: learn from ``window.values[-1]``.
        predict: ``(state, window, config) -> KernelForecast``.
        fit: optional ``(state, history, config) -> state``: offline training on float64[n].
        description: one line shown by ``usp kernels list``.
        source: where it came from (``builtin`` or the distribution that installed it); the
            plugin manager fills it in.
    """

    name: str
    init: Callable[[PredictorConfig, jax.Array], KernelState]
    update: Callable[[KernelState, Window, PredictorConfig], KernelState]
    predict: Callable[[KernelState, Window, PredictorConfig], KernelForecast]
    fit: Callable[[KernelState, jax.Array, PredictorConfig], KernelState] | None = None
    description: str = ""
    source: str = "builtin"
