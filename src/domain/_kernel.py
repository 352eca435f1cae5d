"""The kernel contract: what a prediction kernel is, as data and pure functions.

A kernel is a bundle of pure functions over its own pytree state (optax style: nothing is kept
on ``self``). The orchestrator calls, once per accepted tick and in this order::

    state = update(state, window, config)     # learn from the newest observation window[-1]
    forecast = predict(state, window, config) # forecast the next value

Both functions must survive ``jax.jit`` and ``jax.vmap`` (no Python control flow on traced
values, no host callbacks, fixed shapes) and must return finite numbers for finite windows.
``usp.testing.check_kernel`` checks all of this for one kernel.

**The ``fit`` contract.** ``fit_history(state, history)`` first streams the history through the
core's ``lax.scan``, where every kernel's ``update`` sees each tick exactly as in live streaming.
Then, for each kernel whose spec defines ``fit``, it calls ``fit(kernel_state, history, config)``
once with the whole float64[T] history (per asset, under ``vmap``, for a batched state) and keeps
the state ``fit`` returns. ``fit`` is for offline refinement that the online ``update`` cannot
do (a grid search over a smoothing constant, a batch least-squares solve, ...). It must not
replay ``update`` over the history — the scan already did, and the kernel would learn the
history twice — and it must return a state of the same pytree structure, shapes and dtypes.
It runs under ``jit`` (once per history length) and ``vmap``, so the same purity rules apply.

**The ``report`` contract.** A kernel may also say how it is doing: ``diagnostics`` names the
float64 scalars it reports, and ``report(state, config) -> KernelReport`` (called on every
accepted tick after ``predict``, under the same purity rules) returns their values in that order
and this tick's :class:`KernelEvent` bits. The core carries both into the prediction's telemetry
(``Prediction.kernel_diagnostics``, ``Prediction.kernel_events``), turns the bits into events, and
gives a kernel that reports ``MODE_COLLAPSE`` no weight in the mixture while it does. A
diagnostic named ``"dgm_entropy"`` is also ``Prediction.dgm_entropy``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs
import jax
import jax.numpy as jnp

from ._config import PredictorConfig
from ._pytree import pytree

#: A kernel's own state: any pytree of arrays with fixed shapes and dtypes (usually a ``@pytree``
#: class). It must keep its structure, shapes and dtypes across ``update`` and ``fit``.
KernelState: TypeAlias = Any


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


class KernelEvent(enum.IntFlag):
    """What a kernel reports about one tick (:attr:`KernelReport.events`)."""

    #: This tick's simulation or solve was non-finite or diverged; the kernel fell back to a safe
    #: forecast (raises ``EventCode.KERNEL_UNSTABLE``).
    UNSTABLE = 1 << 0
    #: Training clipped its gradient norm too many iterations in a row and lowered its learning
    #: rate (raises ``EventCode.KERNEL_GRADIENT_INSTABILITY``, the GradientInstabilityEvent).
    GRADIENT_INSTABILITY = 1 << 1
    #: A level, set on every tick while the kernel's solution is collapsed: the kernel gets no
    #: weight in the mixture and ``mode_collapse_warning`` is on (the rising edge raises
    #: ``EventCode.KERNEL_MODE_COLLAPSE``).
    MODE_COLLAPSE = 1 << 2


@pytree
class KernelReport:
    """One kernel's report on one tick.

    Attributes:
        values: float64[len(spec.diagnostics)], the diagnostics in ``KernelSpec.diagnostics``
            order (units are the kernel's to document).
        events: int32 scalar, the :class:`KernelEvent` bits of this tick.
    """

    values: jax.Array
    events: jax.Array


#: ``init(config, key) -> state``: a fresh (cold) state; ``key`` is a raw PRNG key (uint32[2]).
InitFn: TypeAlias = Callable[[PredictorConfig, jax.Array], KernelState]
#: ``update(state, window, config) -> state``: learn from ``window.values[-1]``.
UpdateFn: TypeAlias = Callable[[KernelState, Window, PredictorConfig], KernelState]
#: ``predict(state, window, config) -> KernelForecast``: forecast the next value.
PredictFn: TypeAlias = Callable[[KernelState, Window, PredictorConfig], KernelForecast]
#: ``fit(state, history, config) -> state``: offline refinement on float64[T] (the fit contract).
FitFn: TypeAlias = Callable[[KernelState, jax.Array, PredictorConfig], KernelState]
#: ``report(state, config) -> KernelReport``: diagnostics and events of the tick (the report contract).
ReportFn: TypeAlias = Callable[[KernelState, PredictorConfig], KernelReport]


@attrs.frozen
class KernelSpec:
    """A registered kernel: a name and its pure functions.

    Attributes:
        name: unique registered name (``"A"``, ``"D"``, or a plugin's own); it is what
            ``[kernels] enabled_kernels`` lists.
        init: ``(config, key) -> state``: a fresh state (cold start).
        update: ``(state, window, config) -> state``: learn from ``window.values[-1]``.
        predict: ``(state, window, config) -> KernelForecast``.
        fit: optional ``(state, history, config) -> state``. ``fit_history`` calls it once, with
            the whole float64[T] history, *after* its scan has streamed that history through
            ``update`` (per asset for a batched state), and keeps the state it returns. Offline
            refinement only: it must not replay ``update`` over the history (the scan did) and
            must return a state of the same structure, shapes and dtypes (module docstring).
        diagnostics: names of the float64 scalars ``report`` returns, in order (unique).
        report: optional ``(state, config) -> KernelReport`` (module docstring); a kernel with
            ``diagnostics`` must have one.
        description: one line shown by ``usp kernels list``.
        source: where it came from (``builtin`` or the distribution that installed it); the
            plugin manager fills it in.
    """

    name: str
    init: InitFn
    update: UpdateFn
    predict: PredictFn
    fit: FitFn | None = None
    diagnostics: tuple[str, ...] = ()
    report: ReportFn | None = None
    description: str = ""
    source: str = "builtin"

    def __attrs_post_init__(self) -> None:
        names = self.diagnostics
        if (not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise TypeError(f"kernel {self.name!r}: diagnostics must be a tuple of unique non-empty names, "
                            f"got {names!r}")
        if names and self.report is None:
            raise TypeError(f"kernel {self.name!r} names diagnostics {names!r} but has no report function")
