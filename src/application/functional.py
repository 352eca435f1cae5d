"""``FunctionalPredictor``: the stateless predictor, ``(S_t, obs_t) -> (S_{t+1}, prediction)``,
for one asset or a batch sharing one compiled graph.

Its dependencies are explicit: the clock and the resolved kernels, and the device the state
lives on; ``usp.FunctionalPredictor`` (``usp.composition``) fills them in from a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import jax
import numpy as np

from ..domain import DomainError, KernelSpec, PredictorConfig
from ..domain._core import UNTIMED, CoreState, refresh_due, report_layout
from ..domain._roughness import Sia, koopman_modes
from ..ports import Clock
from ..ports.state_store import StateStore
from . import batch_snapshots
from .batching import BATCH_CHUNK, read_piece
from .compiled_core import compiled_core
from .kernel_fit import fitting_kernels
from .results import BatchPrediction, result_from_output
from .types import ColumnarBatch, PredictionResult, ProcessState, history_values, to_magnitude


def _check_observation(obs: Any) -> None:
    """Raise ``DomainError`` unless ``obs`` is a ``ProcessState``."""
    if not isinstance(obs, ProcessState):
        raise DomainError(f"an observation is a ProcessState(magnitude, timestamp_utc), got {type(obs).__name__}")


@attrs.frozen
class PackedState:
    """One asset's state as the packed step takes it (``FunctionalPredictor.pack_state``).

    A ``CoreState`` crosses the compiled boundary as its ~50 leaves, each costing a few µs per
    call; packed, it crosses as one buffer per dtype (``domain._pytree.Packing``). Hosts that keep
    one asset's state between ticks (``UniversalPredictor``) keep it packed and unpack it only when
    someone reads it. Immutable, like the state.

    Attributes:
        buffers: the packed buffers, on the state's device.
        refresh_due: whether the next accepted tick re-reads the roughness buffer.
    """

    buffers: tuple[jax.Array, ...]
    refresh_due: bool


class FunctionalPredictor:
    """Stateless predictor: ``(S_t, obs_t) -> (S_{t+1}, prediction)``; thousands of assets share
    one compiled graph (``step_batch`` vmaps the core over a leading asset axis).

    Args:
        config: the hyperparameters.
        clock: where "now" comes from for the staleness check.
        kernels: the kernel specs, in ``state.kernels`` order (the config's enabled kernels).
        device: where the state lives, and so where every step runs (``init_state`` puts the PRNG
            key there); None leaves placement to JAX.
        batch_chunk: assets per vmapped chunk in ``step_batch`` (see ``batching.BATCH_CHUNK``).
    """

    def __init__(self, config: PredictorConfig, *, clock: Clock, kernels: Sequence[KernelSpec],
                 device: jax.Device | None = None, batch_chunk: int = BATCH_CHUNK) -> None:
        if batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1, got {batch_chunk}")
        self.config = config
        self.clock = clock
        self.kernels = tuple(kernels)
        self.kernel_names = tuple(k.name for k in self.kernels)
        #: the layout of the output's report block (``domain._core.report_layout``)
        self.kernel_reports = report_layout(self.kernels)
        self.device = device
        self.batch_chunk = batch_chunk
        core = compiled_core(self.config, self.kernels, batch_chunk)
        self._init, self._init_batch = core.init, core.init_batch
        self._step, self._step_batch = core.step, core.step_batch
        self._step_packed, self._read_packed, self._pack, self._unpack = (core.step_packed, core.read_packed,
                                                                          core.pack, core.unpack)
        # what the packed step gets on ticks that are not refresh ticks (it reads the reading only
        # on those): any array of the reading's shape, put on the device once
        self._no_reading = jax.device_put(np.zeros(Sia.length(koopman_modes(config))), device)
        self._read, self._read_batch, self._read_rows = core.read, core.read_batch, core.read_rows
        self._scan, self._scan_batch = core.scan, core.scan_batch
        self._fit_kernels = core.fit_kernels if fitting_kernels(self.kernels) else None
        self._fit_kernels_batch = core.fit_kernels_batch

    # -- state ---------------------------------------------------------------------------
    def init_state(self, n_assets: int | None = None, key: jax.Array | None = None) -> CoreState:
        """A cold state on :attr:`device`; with ``n_assets`` a batched state (leading axis n_assets)."""
        key = jax.random.PRNGKey(self.config.seed) if key is None else key
        if self.device is not None:
            key = jax.device_put(key, self.device)
        if n_assets is None:
            return self._init(key)
        if n_assets < 1:
            raise ValueError(f"n_assets must be >= 1, got {n_assets}")
        return self._init_batch(jax.random.split(key, n_assets))

    def refresh_due(self, state: CoreState) -> bool | np.ndarray:
        """Whether the next accepted tick re-reads the roughness buffer (the ~100 µs WTMM,
        Koopman and Paley–Wiener analysis, every ``wtmm_refresh_steps`` ticks); per asset for a
        batched state."""
        due = refresh_due(np.asarray(state.count), np.asarray(state.sia_age), self.config.wtmm_buffer_size,
                          self.config.wtmm_refresh_steps)
        return due if due.ndim else bool(due)

    def warm_up(self, state: CoreState | None = None, *, packed: bool = False) -> None:
        """Compile the step and the roughness reading now, so that neither the first tick nor the
        first refresh (tick ``wtmm_buffer_size``) waits on the compiler. With a batched state,
        compiles ``step_batch`` for that batch size instead; with ``packed``, the packed step
        (:meth:`step_packed`) and :meth:`pack_state` / :meth:`unpack_state` instead."""
        state = self.init_state() if state is None else state
        if packed:
            buffers = self.pack_state(state).buffers
            jax.block_until_ready(self._unpack(buffers))
            jax.block_until_ready(self._step_packed(buffers, 0.0, UNTIMED, 0, self._no_reading))
            jax.block_until_ready(self._read_packed(buffers, 0.0))
            return
        if np.ndim(state.count):
            values = np.zeros(state.count.shape[0])
            stamps = np.full(values.shape, UNTIMED, np.int64)
            jax.block_until_ready(self._step_batch(state, values, stamps, 0, state.sia))
            jax.block_until_ready(self._read_batch(state.window, values))
            piece = read_piece(values.size, self.config.wtmm_refresh_steps)
            if piece < values.size:
                jax.block_until_ready(self._read_rows(state.sia, state.window, values, np.zeros(piece, np.int64)))
        else:
            jax.block_until_ready(self._step(state, 0.0, UNTIMED, 0, state.sia))
            jax.block_until_ready(self._read(state.window, 0.0))

    # -- ticks -----------------------------------------------------------------------------
    def _now(self, timestamp_ns: int) -> int:
        self.clock.observe(timestamp_ns)
        return self.clock.now_ns()

    def _tick_inputs(self, obs: ProcessState) -> tuple[float, int, int]:
        """``(value, timestamp_ns, now_ns)`` of a checked observation; the clock observes it."""
        _check_observation(obs)
        timestamp_ns = obs.timestamp_ns
        return to_magnitude(obs.magnitude), timestamp_ns, self._now(timestamp_ns)

    def step_raw(self, state: CoreState, obs: ProcessState) -> tuple[CoreState, np.ndarray, int]:
        """Like :meth:`step` but returns the raw output vector (fast path for hosts)."""
        value, timestamp_ns, now = self._tick_inputs(obs)
        reading = self._read(state.window, value) if self.refresh_due(state) else state.sia
        new_state, output = self._step(state, value, timestamp_ns, now, reading)
        return new_state, np.asarray(output), timestamp_ns

    def pack_state(self, state: CoreState) -> PackedState:
        """``state`` (one asset) packed for :meth:`step_packed`.

        Raises:
            TypeError: ``state`` is not a single-asset state of this predictor's kernels and config.
        """
        # the jitted pack traces anew for a foreign structure, and its check raises while tracing
        return PackedState(tuple(self._pack(state)), bool(self.refresh_due(state)))

    def unpack_state(self, packed: PackedState) -> CoreState:
        """The ``CoreState`` of ``packed`` (bit for bit the state it stands for)."""
        return self._unpack(packed.buffers)

    def step_packed(self, packed: PackedState, obs: ProcessState) -> tuple[PackedState, np.ndarray, int]:
        """:meth:`step_raw` on a packed state: the same numbers, bit for bit, with fewer arrays
        crossing the compiled boundary (the single-asset fast path)."""
        value, timestamp_ns, now = self._tick_inputs(obs)
        reading = self._read_packed(packed.buffers, value) if packed.refresh_due else self._no_reading
        buffers, output = self._step_packed(packed.buffers, value, timestamp_ns, now, reading)
        output = np.asarray(output)
        return PackedState(tuple(buffers), bool(output[-1])), output[:-1], timestamp_ns

    def step(self, state: CoreState, obs: ProcessState) -> tuple[CoreState, PredictionResult]:
        """One tick for one asset. Bad values never raise: they come back as events."""
        new_state, output, timestamp_ns = self.step_raw(state, obs)
        return new_state, result_from_output(output, self.kernel_names, timestamp_ns, obs.state_tag,
                                                  reports=self.kernel_reports)

    def step_batch(self, states: CoreState, obs_batch: Sequence[ProcessState] | ColumnarBatch
                   ) -> tuple[CoreState, BatchPrediction]:
        """One tick for each of N assets (states batched with ``init_state(N)``).

        ``obs_batch`` is a list of ProcessState (one per asset, in state order) or a
        ColumnarBatch of arrays (both checked when built: bad values raise ``DomainError``, bad
        timestamps ``TimestampError``). One compiled graph per batch size.
        """
        if isinstance(obs_batch, ColumnarBatch):
            values, stamps = obs_batch.values, obs_batch.timestamps_ns
        else:
            if not isinstance(obs_batch, Sequence):
                raise DomainError(f"step_batch takes a ColumnarBatch or a sequence of ProcessState, got "
                                  f"{type(obs_batch).__name__}")
            for obs in obs_batch:
                _check_observation(obs)
            values = np.array([to_magnitude(o.magnitude) for o in obs_batch], dtype=np.float64)
            stamps = np.array([o.timestamp_ns for o in obs_batch], dtype=np.int64)
        expected = jax.tree_util.tree_leaves(states)[0].shape[0]
        if values.shape != (expected,):
            raise DomainError(f"batch of {values.shape[0] if values.ndim else 0} observations for "
                              f"{expected} asset states")
        now = self._now(int(stamps.max()) if stamps.size else 0)
        new_states, outputs = self._step_batch(states, values, stamps, now, self._readings(states, values))
        return new_states, BatchPrediction(np.asarray(outputs), self.kernel_names, stamps, self.kernel_reports)

    def _readings(self, states: CoreState, values: np.ndarray) -> jax.Array:
        """Roughness readings for a batch tick: only the due assets are read, in gathered pieces
        of :func:`~.batching.read_piece` rows, or all at once when more than half are due. Rows not
        due carry ``states.sia``, which the step ignores."""
        rows = np.flatnonzero(self.refresh_due(states))
        assets, piece = values.size, read_piece(values.size, self.config.wtmm_refresh_steps)
        if rows.size == 0:
            return states.sia
        if 2 * rows.size > assets or piece == assets:
            return self._read_batch(states.window, values)
        readings = states.sia
        for start in range(0, rows.size, piece):
            part = rows[start:start + piece]
            part = np.concatenate([part, np.full(piece - part.size, part[0])])
            readings = self._read_rows(readings, states.window, values, part)
        return readings

    # -- history ---------------------------------------------------------------------------
    def fit_history(self, state: CoreState, history: Any) -> tuple[CoreState, np.ndarray]:
        """Warm up on past values (untimed): one ``lax.scan`` streams them through the core (every
        kernel's ``update`` sees each tick), then each kernel that defines ``fit`` gets
        ``fit(kernel_state, history, config)`` once, with the whole history (the fit contract,
        ``usp.application.kernel_fit``; per asset, with its own row, for a batched state).

        ``history`` is float64[T] for a single state or float64[N, T] for a batched one (an array
        of an integer or floating dtype, or sequences of real numbers: bool, str and None raise
        ``DomainError``). Returns the new state and the output vector of the last scanned tick (or
        [N, ...]).

        Raises:
            TypeError: a kernel's ``fit`` changed its state's structure, shapes or dtypes (named).
        """
        values = history_values(history)
        batched = jax.tree_util.tree_leaves(state)[0].ndim > 0 and values.ndim == 2
        if values.ndim != (2 if batched else 1) or values.shape[-1] == 0:
            raise ValueError(f"history must be float64[T] (or [N, T] for a batched state), got shape "
                             f"{values.shape}")
        new_state, outputs = (self._scan_batch if batched else self._scan)(state, values)
        if self._fit_kernels is not None:
            new_state = (self._fit_kernels_batch if batched else self._fit_kernels)(new_state, values)
        return new_state, np.asarray(outputs[..., -1, :])

    # -- persistence (usp.application.batch_snapshots; docs/persistence.md) ------------------
    def save_states(self, store: StateStore, keys: str | Sequence[str], states: CoreState) -> None:
        """Save one asset's state (``keys`` a str) or a batch (one key per row, one ``save_many``)."""
        batch_snapshots.save_states(store, keys, states, config=self.config, kernel_names=self.kernel_names,
                                    reports=self.kernel_reports)

    def load_states(self, store: StateStore, keys: str | Sequence[str], template: CoreState | None = None
                    ) -> tuple[CoreState, bool | np.ndarray]:
        """``(states, restored)`` for one asset or a batch; keys without a snapshot keep the
        template's row (default: a cold :meth:`init_state`)."""
        keys = keys if isinstance(keys, str) else list(keys)
        if template is None:
            template = self.init_state() if isinstance(keys, str) else self.init_state(len(keys))
        return batch_snapshots.load_states(store, keys, template, config=self.config,
                                           kernel_names=self.kernel_names)


__all__ = ["FunctionalPredictor", "PackedState"]
