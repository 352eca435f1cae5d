"""The compile cache: the jitted core functions of one (core config, kernel set, batch chunk).

Memoised per process, so that every predictor with that configuration — one per asset, or
re-created on reload — shares the traced and compiled graphs instead of re-tracing. The key and
the config the core and the kernels are traced with is ``core_config(config)``: the config with
every I/O key (``[io]``, ``[security]``, ``[meta_optimization]``) at its default, so two configs
that differ only in, say, ``snapshot_path`` compile nothing new. The sensitivity keys
(``domain._core.SENSITIVITY_KEYS``, the fast tuning tier) are traced parameters: the graphs are
traced with them at their defaults and each config's values are passed in as arrays
(``domain._core.Sensitivity``), so configs that differ only in those keys share one compiled
graph too. Batch sizes and history lengths compile once each (``jax.jit``'s own cache, per shape).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import jax
import jax.numpy as jnp

from ..domain import KernelSpec, PredictorConfig
from ..domain._config import FIELDS, core_config
from ..domain._core import SENSITIVITY_KEYS, UNTIMED, Sensitivity, make_core, sensitivity
from ..domain._pytree import packing
from .batching import BATCH_CHUNK, chunked_vmap
from .kernel_fit import make_fit_kernels

Jitted = Callable[..., Any]


@attrs.frozen
class CompiledCore:
    """The jitted entry points, shared by every predictor using them (shapes: N assets, T ticks).

    Attributes:
        init: ``key -> CoreState``.
        init_batch: ``keys[N] -> CoreState`` with a leading asset axis.
        step: ``(state, y, timestamp_ns, now_ns, reading) -> (state, output float64[Out.length])``.
        step_batch: the same over N assets, chunked (``batching.chunked_vmap``); ``now_ns`` shared.
        step_packed: ``step`` on the state's packed buffers: ``(buffers, y, timestamp_ns, now_ns,
            reading) -> (buffers, output)``, the output with one more element at the end: 1.0 when
            the next tick is a refresh tick (``refresh_due`` of the new state), else 0.0.
        read_packed: ``(buffers, y) -> reading``: ``read`` on the packed state's window.
        pack: ``state -> buffers``; unpack: ``buffers -> state``.
        read: ``(window, y) -> reading``: the roughness engine on the buffer once ``y`` is appended.
        read_batch: ``read`` over N assets.
        read_rows: ``(readings, windows, values, rows int[P]) -> readings`` with those rows re-read.
        scan: ``(state, history float64[T]) -> (state, outputs[T, ...])``: untimed ticks.
        scan_batch: ``(states, history float64[N, T]) -> (states, outputs[N, T, ...])``.
        fit_kernels: ``(state, history float64[T]) -> state``: every kernel's ``fit`` (kernel_fit).
        fit_kernels_batch: the same per asset, each with its own history row.
    """

    init: Jitted
    init_batch: Jitted
    step: Jitted
    step_batch: Jitted
    step_packed: Jitted
    read_packed: Jitted
    pack: Jitted
    unpack: Jitted
    read: Jitted
    read_batch: Jitted
    read_rows: Jitted
    scan: Jitted
    scan_batch: Jitted
    fit_kernels: Jitted
    fit_kernels_batch: Jitted


def compiled_core(config: PredictorConfig, kernels: Sequence[KernelSpec], batch_chunk: int = BATCH_CHUNK
                  ) -> CompiledCore:
    """The jitted core of ``config``'s non-I/O keys and ``kernels`` (built once per process), its
    entry points bound to ``config``'s sensitivity values."""
    return _bind(core_config(config), tuple(kernels), batch_chunk)


class _Bound:
    """A jitted function with its last argument (the sensitivity values) bound; other attributes
    (``_cache_size``...) are the jitted function's."""

    def __init__(self, jitted: Jitted, params: Sensitivity) -> None:
        self._jitted = jitted
        self._params = params

    def __call__(self, *args: Any) -> Any:
        return self._jitted(*args, self._params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)


def _at_defaults(config: PredictorConfig) -> PredictorConfig:
    """``config`` with every sensitivity key at its default: the key of the traced graphs."""
    defaults: dict[str, Any] = {name: FIELDS[name].default for name in SENSITIVITY_KEYS}
    return attrs.evolve(config, **defaults)


@functools.lru_cache(maxsize=64)
def _bind(config: PredictorConfig, kernels: tuple[KernelSpec, ...], batch_chunk: int) -> CompiledCore:
    # Put on the device once (uncommitted, so jit may move it): numpy values would be copied
    # to the device again on every call.
    shared, params = _compile(_at_defaults(config), kernels, batch_chunk), jax.device_put(sensitivity(config))
    traced = ("init", "init_batch", "step", "step_batch", "scan", "scan_batch")
    bound: dict[str, Any] = {name: _Bound(getattr(shared, name), params) for name in traced}
    # The packed step takes the values packed too: two buffers instead of six leaves per call.
    bound["step_packed"] = _Bound(shared.step_packed, jax.device_put(packing(params).pack(params)))
    return attrs.evolve(shared, **bound)


@functools.lru_cache(maxsize=16)
def _compile(config: PredictorConfig, kernels: tuple[KernelSpec, ...], batch_chunk: int) -> CompiledCore:
    """The jitted functions; ``init``, ``init_batch``, ``step``, ``step_batch``, ``scan`` and
    ``scan_batch`` take the sensitivity values (``Sensitivity``) as their last argument."""
    init, step, due, read = make_core(config, kernels)
    read_batch = chunked_vmap(read, batch_chunk)
    fit_kernels = make_fit_kernels(config, kernels)
    layout = packing(jax.eval_shape(init, jax.random.PRNGKey(0)))
    param_layout = packing(sensitivity(config))

    def step_packed(buffers, value, stamp, now, reading, param_buffers):
        state, output = step(layout.unpack(buffers), value, stamp, now, reading, param_layout.unpack(param_buffers))
        return layout.pack(state), jnp.append(output, due(state.count, state.sia_age).astype(output.dtype))

    def read_packed(buffers, value):
        return read(layout.unpack(buffers).window, value)

    def read_rows(readings, windows, values, rows):
        """``readings`` with the given rows (int[P], repeats allowed) re-read."""
        return readings.at[rows].set(read_batch(windows[rows], values[rows]))

    def step_batch(states, values, stamps, now, readings, params):
        return chunked_vmap(lambda s, y, t, r: step(s, y, t, now, r, params), batch_chunk)(states, values, stamps,
                                                                                            readings)

    def scan(state, values, params):
        untimed = jnp.full(values.shape, UNTIMED, jnp.int64)
        return jax.lax.scan(lambda s, xs: step(s, xs[0], xs[1], jnp.int64(0), None, params), state,
                            (values, untimed))

    def scan_batch(states, values, params):
        """History of N assets: float64[N, T], scanned over time with the batched step."""
        untimed = jnp.full(values.shape[0], UNTIMED, jnp.int64)

        def tick(s, column):
            readings = jax.lax.cond(jnp.any(jax.vmap(due)(s.count, s.sia_age)),
                                    lambda: read_batch(s.window, column), lambda: s.sia)
            return step_batch(s, column, untimed, jnp.int64(0), readings, params)

        states, outputs = jax.lax.scan(tick, states, values.T)
        return states, jnp.swapaxes(outputs, 0, 1)

    return CompiledCore(init=jax.jit(init), init_batch=jax.jit(jax.vmap(init, in_axes=(0, None))), step=jax.jit(step),
                        step_batch=jax.jit(step_batch), step_packed=jax.jit(step_packed),
                        read_packed=jax.jit(read_packed), pack=jax.jit(layout.pack), unpack=jax.jit(layout.unpack),
                        read=jax.jit(read), read_batch=jax.jit(read_batch),
                        read_rows=jax.jit(read_rows), scan=jax.jit(scan), scan_batch=jax.jit(scan_batch),
                        fit_kernels=jax.jit(fit_kernels), fit_kernels_batch=jax.jit(jax.vmap(fit_kernels)))


__all__ = ["CompiledCore", "compiled_core"]
