"""The predictors: ``FunctionalPredictor`` (stateless, one asset or a batch) and
``UniversalPredictor`` (stateful wrapper with the host-side checks of spec §4.2).

Both compile the core once per (config, kernel set) and, for batches, once per batch size.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from ..domain import DomainError, FrequencyWarning, PredictorConfig, StalenessWarning
from ..domain._core import UNTIMED, CoreState, Out, make_core, refresh_due
from ..domain._events import EventCode
from ..ports import Clock
from ..ports.state_store import StateStore, StoreEvent
from . import persistence as _persistence
from ._load_shedding import LoadSheddingController, LoadSheddingPolicy, depth_variants
from .types import (
    ColumnarBatch,
    PredictionResult,
    ProcessState,
    Telemetry,
    decode_events,
    history_values,
    to_magnitude,
)

logger = logging.getLogger("usp.predictor")


def _default_clock() -> Clock:
    from ..adapters.clocks import SystemClock  # the only adapter the application defaults to

    return SystemClock()


def _check_observation(obs: Any) -> None:
    if not isinstance(obs, ProcessState):
        raise DomainError(f"an observation is a ProcessState(magnitude, timestamp_utc), got {type(obs).__name__}")


def _resolve(config: PredictorConfig, kernels, plugin_manager):
    if kernels is not None:
        return tuple(kernels)
    from ..plugins.manager import resolve_kernels

    return resolve_kernels(config, plugin_manager)


@attrs.frozen
class CompiledCore:
    """The jitted entry points of one (config, kernel set): shared by every predictor using them."""

    init: Any
    init_batch: Any
    step: Any
    step_batch: Any
    read: Any
    read_batch: Any
    read_rows: Any
    scan: Any
    scan_batch: Any


#: Assets per vmapped chunk in ``step_batch``. Larger batches run chunk after chunk (``lax.map``)
#: inside the same compiled graph: on CPU a chunk's working set stays in cache, which measured
#: 57k asset-steps/s at 1000 assets against 24k for one 1000-wide vmap (docs/benchmarks.md).
BATCH_CHUNK = 256


def chunked_vmap(fn, chunk: int):
    """``vmap(fn)`` over the leading (asset) axis of every argument, ``chunk`` assets at a time.

    Full chunks go through ``lax.map``; the remainder is one more vmap. Every asset's arithmetic
    is the vmapped function's, and shapes are static, so it compiles once per batch size.
    """
    vfn = jax.vmap(fn)

    def run(*args):
        n = jax.tree_util.tree_leaves(args)[0].shape[0]
        full = (n // chunk) * chunk
        if full == 0 or n <= chunk:
            return vfn(*args)

        def head(a):
            return a[:full].reshape((full // chunk, chunk, *a.shape[1:]))

        mapped = jax.lax.map(lambda chunk_args: vfn(*chunk_args), jax.tree_util.tree_map(head, args))
        mapped = jax.tree_util.tree_map(lambda a: a.reshape((full, *a.shape[2:])), mapped)
        if full == n:
            return mapped
        rest = vfn(*jax.tree_util.tree_map(lambda a: a[full:], args))
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), mapped, rest)

    return run


def read_piece(assets: int, refresh_steps: int) -> int:
    """Rows per gathered roughness read in ``step_batch``: a power of two ≥ 8 and ≥ twice the
    N / R assets due on a typical tick once the assets' refresh ticks have spread out (after
    rejected ticks or staggered starts), capped at N."""
    wanted = max(8, 2 * -(-assets // refresh_steps))
    return min(assets, 1 << (wanted - 1).bit_length())


@functools.lru_cache(maxsize=16)
def compiled_core(config: PredictorConfig, kernels: tuple, batch_chunk: int = BATCH_CHUNK) -> CompiledCore:
    """Build (once per process and configuration) the jitted core functions.

    Memoised so that many predictors with one configuration — one per asset, or re-created on
    reload — share traced and compiled graphs instead of re-tracing each time.
    """
    init, step, due, read = make_core(config, kernels)
    read_batch = chunked_vmap(read, batch_chunk)

    def read_rows(readings, windows, values, rows):
        """``readings`` with the given rows (int[P], repeats allowed) re-read."""
        return readings.at[rows].set(read_batch(windows[rows], values[rows]))

    def step_batch(states, values, stamps, now, readings):
        return chunked_vmap(lambda s, y, t, r: step(s, y, t, now, r), batch_chunk)(states, values, stamps, readings)

    def scan(state, values):
        untimed = jnp.full(values.shape, UNTIMED, jnp.int64)
        return jax.lax.scan(lambda s, xs: step(s, xs[0], xs[1], jnp.int64(0), None), state, (values, untimed))

    def scan_batch(states, values):
        """History of N assets: float64[N, T], scanned over time with the batched step."""
        untimed = jnp.full(values.shape[0], UNTIMED, jnp.int64)

        def tick(s, column):
            readings = jax.lax.cond(jnp.any(jax.vmap(due)(s.count, s.sia_age)),
                                    lambda: read_batch(s.window, column), lambda: s.sia)
            return step_batch(s, column, untimed, jnp.int64(0), readings)

        states, outputs = jax.lax.scan(tick, states, values.T)
        return states, jnp.swapaxes(outputs, 0, 1)

    return CompiledCore(init=jax.jit(init), init_batch=jax.jit(jax.vmap(init)), step=jax.jit(step),
                        step_batch=jax.jit(step_batch), read=jax.jit(read), read_batch=jax.jit(read_batch),
                        read_rows=jax.jit(read_rows), scan=jax.jit(scan), scan_batch=jax.jit(scan_batch))


@attrs.frozen
class BatchPrediction:
    """Results of ``step_batch``: arrays over assets, with PredictionResult views per asset."""

    outputs: np.ndarray  # float64[N, Out.length(n, k)]
    kernel_names: tuple[str, ...]
    timestamps_ns: np.ndarray

    @property
    def reference_prediction(self) -> np.ndarray:
        return self.outputs[:, Out.PREDICTION]

    @property
    def confidence_lower(self) -> np.ndarray:
        return self.outputs[:, Out.LOWER]

    @property
    def confidence_upper(self) -> np.ndarray:
        return self.outputs[:, Out.UPPER]

    @property
    def operating_mode(self) -> np.ndarray:
        return self.outputs[:, Out.MODE].astype(np.int32)

    @property
    def events(self) -> np.ndarray:
        return self.outputs[:, Out.EVENTS].astype(np.int64)

    @property
    def weights(self) -> np.ndarray:
        n = len(self.kernel_names)
        return self.outputs[:, Out.SIZE:Out.SIZE + n]

    def __len__(self) -> int:
        return self.outputs.shape[0]

    def __getitem__(self, index: int) -> PredictionResult:
        return result_from_output(self.outputs[index], self.kernel_names, int(self.timestamps_ns[index]))

    def __iter__(self) -> Iterator[PredictionResult]:
        return (self[i] for i in range(len(self)))


def result_from_output(output: np.ndarray, kernel_names: tuple[str, ...], timestamp_ns: int | None,
                       request_id: str | None = None) -> PredictionResult:
    """Build the host-side result from one output vector of the core."""
    n = len(kernel_names)
    out = output.tolist()
    weights = tuple(out[Out.SIZE:Out.SIZE + n])
    means = out[Out.SIZE + n:Out.SIZE + 2 * n]
    koopman = out[Out.koopman(n):]
    k = len(koopman) // 3
    kept = [i for i in range(k) if koopman[2 * k + i] > 0.0]  # modes below koopman_min_power are dropped
    telemetry = Telemetry(
        holder_exponent=out[Out.HOLDER], weights=weights, kernel_names=kernel_names,
        kernel_predictions=dict(zip(kernel_names, means, strict=True)), kurtosis=out[Out.KURTOSIS],
        dgm_entropy=None, adaptive_threshold=out[Out.THRESHOLD], cusum_statistic=out[Out.CUSUM],
        distance_to_collapse=out[Out.DISTANCE], free_energy=out[Out.FREE_ENERGY],
        sinkhorn_converged=bool(out[Out.SINKHORN_CONVERGED]), sinkhorn_error=out[Out.SINKHORN_ERROR],
        sinkhorn_epsilon=out[Out.EPSILON], residual_sigma=out[Out.SIGMA],
        degraded_inference_mode=bool(out[Out.DEGRADED]), emergency_mode=bool(out[Out.EMERGENCY]),
        regime_change_detected=bool(out[Out.REGIME_CHANGE]), mode_collapse_warning=False,
        frozen_signal=bool(out[Out.FROZEN]), holder_exponent_raw=out[Out.HOLDER_RAW],
        singularity_spectrum_width=out[Out.SPECTRUM_WIDTH], koopman_frequencies=tuple(koopman[i] for i in kept),
        koopman_growth_rates=tuple(koopman[k + i] for i in kept),
        koopman_powers=tuple(koopman[2 * k + i] for i in kept),
        paley_wiener_integral=out[Out.PALEY_WIENER], paley_wiener_regular=bool(out[Out.PW_REGULAR]),
        topological_branch_frozen=bool(out[Out.BRANCH_FROZEN]),
        events=decode_events(int(out[Out.EVENTS]), timestamp_ns))
    return PredictionResult(out[Out.PREDICTION], out[Out.LOWER], out[Out.UPPER], int(out[Out.MODE]),
                            telemetry, request_id)


class FunctionalPredictor:
    """Stateless predictor: ``(S_t, obs_t) -> (S_{t+1}, prediction)``; thousands of assets share
    one compiled graph (``step_batch`` vmaps the core over a leading asset axis).

    Args:
        config: the hyperparameters (defaults if None).
        clock: where "now" comes from for the staleness check (system clock by default).
        kernels: explicit kernel specs (default: the config's enabled kernels from the plugins).
        plugin_manager: a pluggy manager to resolve kernels from (default: built-ins + entry points).
        batch_chunk: assets per vmapped chunk in ``step_batch`` (see ``BATCH_CHUNK``).
    """

    def __init__(self, config: PredictorConfig | None = None, *, clock: Clock | None = None,
                 kernels=None, plugin_manager=None, batch_chunk: int = BATCH_CHUNK) -> None:
        if batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1, got {batch_chunk}")
        self.config = config or PredictorConfig()
        self.clock = clock or _default_clock()
        self.kernels = _resolve(self.config, kernels, plugin_manager)
        self.kernel_names = tuple(k.name for k in self.kernels)
        core = compiled_core(self.config, self.kernels, batch_chunk)
        self._init, self._init_batch = core.init, core.init_batch
        self._step, self._step_batch = core.step, core.step_batch
        self._read, self._read_batch, self._read_rows = core.read, core.read_batch, core.read_rows
        self._scan, self._scan_batch = core.scan, core.scan_batch

    # -- state ---------------------------------------------------------------------------
    def init_state(self, n_assets: int | None = None, key: jax.Array | None = None) -> CoreState:
        """A cold state; with ``n_assets`` a batched state (leading axis n_assets)."""
        key = jax.random.PRNGKey(self.config.seed) if key is None else key
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

    def warm_up(self, state: CoreState | None = None) -> None:
        """Compile the step and the roughness reading now, so that neither the first tick nor the
        first refresh (tick ``wtmm_buffer_size``) waits on the compiler. With a batched state,
        compiles ``step_batch`` for that batch size instead."""
        state = self.init_state() if state is None else state
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

    def step_raw(self, state: CoreState, obs: ProcessState) -> tuple[CoreState, np.ndarray, int]:
        """Like :meth:`step` but returns the raw output vector (fast path for hosts)."""
        _check_observation(obs)
        value = to_magnitude(obs.magnitude)
        timestamp_ns = obs.timestamp_ns
        now = self._now(timestamp_ns)
        reading = self._read(state.window, value) if self.refresh_due(state) else state.sia
        new_state, output = self._step(state, value, timestamp_ns, now, reading)
        return new_state, np.asarray(output), timestamp_ns

    def step(self, state: CoreState, obs: ProcessState) -> tuple[CoreState, PredictionResult]:
        """One tick for one asset. Bad values never raise: they come back as events."""
        new_state, output, timestamp_ns = self.step_raw(state, obs)
        return new_state, result_from_output(output, self.kernel_names, timestamp_ns, obs.state_tag)

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
        return new_states, BatchPrediction(np.asarray(outputs), self.kernel_names, stamps)

    def _readings(self, states: CoreState, values: np.ndarray) -> jax.Array:
        """Roughness readings for a batch tick: only the due assets are read, in gathered pieces
        of :func:`read_piece` rows, or all at once when more than half are due. Rows not due
        carry ``states.sia``, which the step ignores."""
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
        """Warm up on past values (untimed), with one ``lax.scan``.

        ``history`` is float64[T] for a single state or float64[N, T] for a batched one (an array
        of an integer or floating dtype, or sequences of real numbers: bool, str and None raise
        ``DomainError``). Returns the new state and the output vector of the last tick (or [N, ...]).
        """
        values = history_values(history)
        batched = jax.tree_util.tree_leaves(state)[0].ndim > 0 and values.ndim == 2
        if values.ndim != (2 if batched else 1) or values.shape[-1] == 0:
            raise ValueError(f"history must be float64[T] (or [N, T] for a batched state), got shape "
                             f"{values.shape}")
        new_state, outputs = (self._scan_batch if batched else self._scan)(state, values)
        return new_state, np.asarray(outputs[..., -1, :])

    # -- persistence (usp.application.persistence; docs/persistence.md) ----------------------
    def save_states(self, store: StateStore, keys: str | Sequence[str], states: CoreState) -> None:
        """Save one asset's state (``keys`` a str) or a batch (one key per row, one ``save_many``)."""
        _persistence.save_states(self, store, keys, states)

    def load_states(self, store: StateStore, keys: str | Sequence[str], template: CoreState | None = None
                    ) -> tuple[CoreState, bool | np.ndarray]:
        """``(states, restored)`` for one asset or a batch; keys without a snapshot keep the template."""
        return _persistence.load_states(self, store, keys, template)


class UniversalPredictor:
    """Stateful predictor for one stream: spec §4 (TTL and Nyquist checks, last valid result).

    Stale ticks raise a ``StalenessWarning`` and sparse ones a ``FrequencyWarning`` (Python
    warnings, also logged and recorded as events); rejected ticks return the last valid result
    with a rejection event in its telemetry. The constructor compiles the step and the roughness
    reading (``FunctionalPredictor.warm_up``), so no tick waits on the compiler.

    **Threads.** One instance may be shared by several threads. A re-entrant lock serialises
    everything that replaces the state or the clock's view of time: :meth:`step`,
    :meth:`step_raw`, :meth:`fit_history`, the :attr:`state` setter (which :meth:`load_snapshot`
    goes through) and the load-shedding depth switch. Each tick is therefore applied exactly
    once, to the state the previous tick left (no update is lost), in the order the threads take
    the lock; ticks from different threads with equal timestamps are all accepted, and one whose
    timestamp is older than an already applied tick is rejected as out of order. Reading
    :attr:`state` and the snapshot saves do not wait: the state is an immutable pytree, so a
    reference is a consistent copy. Ticks are serial: threads add no throughput (use
    ``FunctionalPredictor.step_batch`` for many assets).
    """

    def __init__(self, config: PredictorConfig | None = None, clock: Clock | None = None, *,
                 kernels=None, plugin_manager=None,
                 load_shedding: LoadSheddingController | bool = False) -> None:
        self._functional = FunctionalPredictor(config, clock=clock, kernels=kernels,
                                               plugin_manager=plugin_manager)
        self.config = self._functional.config
        self._lock = threading.RLock()  # see "Threads" in the class doc
        self._state = self._functional.init_state()
        self._shedding: LoadSheddingController | None = None
        self._variants: dict[int, FunctionalPredictor] = {}
        if load_shedding:
            self._enable_load_shedding(load_shedding)
        else:
            self._functional.warm_up(self._state)  # no tick, not even the first refresh, compiles

    # -- load shedding (spec §18–19) -------------------------------------------------------
    def _enable_load_shedding(self, load_shedding: LoadSheddingController | bool) -> None:
        """Compile one step per signature depth now (warm-up), so switching never compiles."""
        if "D" not in self.kernel_names:
            raise ValueError("load shedding switches kernel D's signature depth; enable kernel 'D'")
        controller = (load_shedding if isinstance(load_shedding, LoadSheddingController) else
                      LoadSheddingController(LoadSheddingPolicy(budget_ns=self.config.besov_nyquist_interval_ns)))
        base = self._functional
        for depth, config in depth_variants(self.config, controller.policy.depths).items():
            variant = base if config == self.config else FunctionalPredictor(
                config, clock=base.clock, kernels=base.kernels)
            variant.warm_up(self._state)
            self._variants[depth] = variant
        self._shedding = controller
        self._functional = self._variants[controller.depth]

    @property
    def load_shedding(self) -> LoadSheddingController | None:
        """The depth controller, when load shedding is on."""
        return self._shedding

    @property
    def functional(self) -> FunctionalPredictor:
        return self._functional

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return self._functional.kernel_names

    @property
    def state(self) -> CoreState:
        return self._state

    @state.setter
    def state(self, value: CoreState) -> None:
        """Replace the state (e.g. a restored snapshot), after any tick in progress."""
        with self._lock:
            self._state = value

    def fit_history(self, history: Sequence[float]) -> bool:
        """Cold-start bootstrapping on at least ``wtmm_buffer_size`` past values.

        Returns True when, at the end, Sinkhorn converged and the CUSUM statistic is below its
        threshold; False (with a logged warning) otherwise.

        Raises:
            ValueError: fewer than ``wtmm_buffer_size`` values, or non-finite values.
            DomainError (a ValueError): bool, str, None or other non-numbers.
        """
        values = history_values(history)
        if values.ndim != 1:
            raise ValueError(f"history must be one-dimensional, got shape {values.shape}")
        if values.size < self.config.wtmm_buffer_size:
            raise ValueError(f"Insufficient history: {values.size} values. Required: "
                             f"{self.config.wtmm_buffer_size} (wtmm_buffer_size)")
        if not np.all(np.isfinite(values)):
            raise ValueError("history contains NaN or infinite values")
        with self._lock:
            self._state, last = self._functional.fit_history(self._state, values)
        converged = bool(last[Out.SINKHORN_CONVERGED]) or self._functional.kernel_names.__len__() == 1
        stable = last[Out.CUSUM] < last[Out.THRESHOLD]
        if not (converged and stable):
            logger.warning("Cold start finished without stable convergence (sinkhorn error %.3g, "
                           "CUSUM %.3g vs threshold %.3g)", last[Out.SINKHORN_ERROR], last[Out.CUSUM],
                           last[Out.THRESHOLD])
            return False
        return True

    def step(self, obs: ProcessState) -> PredictionResult:
        """One prediction cycle with domain, TTL and Nyquist validation."""
        output, timestamp_ns = self.step_raw(obs)
        result = result_from_output(output, self.kernel_names, timestamp_ns, obs.state_tag)
        if self._shedding is not None:
            telemetry = attrs.evolve(result.telemetry, load_shedding=self._shedding.figures().as_dict())
            result = attrs.evolve(result, telemetry=telemetry)
        return result

    def step_raw(self, obs: ProcessState) -> tuple[np.ndarray, int]:
        """Like :meth:`step`, returning the core's output vector (layout ``Out``) and timestamp."""
        with self._lock:  # one tick at a time: read the state, step, write it back
            started = time.perf_counter_ns()
            self._state, output, timestamp_ns = self._functional.step_raw(self._state, obs)
            if self._shedding is not None:
                depth = self._shedding.record(time.perf_counter_ns() - started)
                self._functional = self._variants[depth]
        bits = int(output[Out.EVENTS])
        if bits:
            self._report(bits, output, timestamp_ns)
        return output, timestamp_ns

    def _report(self, bits: int, output: np.ndarray, timestamp_ns: int) -> None:
        if bits & EventCode.rejected():
            logger.error("DomainError: tick at %d ns rejected (%s); returning the last valid result",
                         timestamp_ns, EventCode(bits & EventCode.rejected()).name)
        if bits & EventCode.STALE_DATA:
            warnings.warn(f"tick at {timestamp_ns} ns is older than staleness_ttl_ns="
                          f"{self.config.staleness_ttl_ns}: weights frozen (degraded mode)",
                          StalenessWarning, stacklevel=3)
        if bits & EventCode.SPARSE_ARRIVAL:
            warnings.warn(f"arrival gap above besov_nyquist_interval_ns="
                          f"{self.config.besov_nyquist_interval_ns}: roughness may alias",
                          FrequencyWarning, stacklevel=3)
        if bits & EventCode.REGIME_CHANGED:
            logger.info("regime change at %d ns (CUSUM %.3g, threshold %.3g)", timestamp_ns, output[Out.CUSUM],
                        output[Out.THRESHOLD])
        if bits & EventCode.TOPOLOGICAL_BRANCH_FROZEN:
            warnings.warn(f"sampling too coarse for the finest wavelet scale (a quarter of recent gaps × "
                          f"wtmm_min_scale > besov_nyquist_interval_ns={self.config.besov_nyquist_interval_ns}): "
                          f"Hölder reading and circuit breaker frozen", FrequencyWarning, stacklevel=3)
        if bits & EventCode.TOPOLOGICAL_BRANCH_RELEASED:
            logger.info("sampling dense again at %d ns: Hölder reading resumed", timestamp_ns)
        if bits & EventCode.CRITICAL_SINGULARITY:
            logger.info("emergency mode: Hölder exponent %.3f", output[Out.HOLDER])

    # -- persistence (usp.application.persistence; docs/persistence.md) ----------------------
    def save_snapshot(self, path_or_key: _persistence.PathOrKey, *, store: StateStore | None = None
                      ) -> _persistence.SnapshotReceipt:
        """Write the state now (a FileStore under ``config.snapshot_path`` unless ``store``)."""
        return _persistence.snapshots_of(self).save(path_or_key, store=store)

    def load_snapshot(self, path_or_key: _persistence.PathOrKey, *, store: StateStore | None = None) -> bool:
        """Restore the newest valid snapshot (True), or keep the state on a cold start (False)."""
        return _persistence.snapshots_of(self).load(path_or_key, store=store)

    def save_snapshot_nonblocking(self, path_or_key: _persistence.PathOrKey, *,
                                  store: StateStore | None = None) -> Future:
        """Capture the state and write it on a background worker; never waits on I/O."""
        return _persistence.snapshots_of(self).save_nonblocking(path_or_key, store=store)

    def save_emergency_dump(self, directory: str | Path | None = None, asset_id: str = "asset") -> Path:
        """Forensic MessagePack dump of the state (spec §16); returns the file's path."""
        return _persistence.snapshots_of(self).emergency_dump(directory, asset_id)

    @property
    def storage_events(self) -> collections.deque[StoreEvent]:
        """The latest storage events (corrupted snapshot, insufficient storage, failed write)."""
        return _persistence.snapshots_of(self).events

    def record_storage_event(self, event: StoreEvent) -> None:
        """An ``on_event`` callback for stores: files ``event`` in :attr:`storage_events`."""
        _persistence.snapshots_of(self).record(event)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for pending non-blocking snapshots (True when all finished in time)."""
        return _persistence.snapshots_of(self).close(timeout)

    def __enter__(self) -> UniversalPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
