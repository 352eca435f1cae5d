"""``UniversalPredictor``: the stateful predictor of one stream (spec §4), with the host-side
checks' warnings, optional load shedding and a snapshot session.

Its dependencies are explicit: a ``FunctionalPredictor`` (config, clock, kernels, device) and the
snapshot stores; ``usp.UniversalPredictor`` (``usp.composition``) builds both from a config.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..domain._core import CoreState, Out, ReportLayout
from ..ports.state_store import EventCallback, StateStore, StoreEvent
from ._load_shedding import LoadSheddingController, LoadSheddingPolicy, depth_variants
from .functional import FunctionalPredictor, PackedState
from .results import result_from_output
from .snapshot_session import PathOrKey, SnapshotSession, SnapshotStores, SnapshotSubject
from .snapshot_writer import SnapshotReceipt
from .tick_reports import report_tick_events
from .types import PredictionResult, ProcessState, history_values

logger = logging.getLogger("usp.predictor")


def depth_predictors(base: FunctionalPredictor, depths: Sequence[int]) -> dict[int, FunctionalPredictor]:
    """One functional predictor per signature depth (``base`` itself for its own depth), sharing
    ``base``'s clock, kernels and device: load shedding switches between them."""
    return {depth: base if config == base.config else FunctionalPredictor(
        config, clock=base.clock, kernels=base.kernels, device=base.device, batch_chunk=base.batch_chunk)
        for depth, config in depth_variants(base.config, tuple(depths)).items()}


class UniversalPredictor:
    """Stateful predictor for one stream: spec §4 (TTL and Nyquist checks, last valid result).

    Stale ticks raise a ``StalenessWarning`` and sparse ones a ``FrequencyWarning`` (Python
    warnings, also logged and recorded as events); rejected ticks return the last valid result
    with a rejection event in its telemetry. The constructor compiles the step and the roughness
    reading (``FunctionalPredictor.warm_up``), so no tick waits on the compiler.

    Args:
        functional: the stateless predictor it steps (its config, clock, kernels and device).
        stores: the snapshot stores of :meth:`save_snapshot` and friends.
        load_shedding: True, or a controller, to switch kernel D's signature depth on latency.

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

    def __init__(self, functional: FunctionalPredictor, stores: SnapshotStores, *,
                 load_shedding: LoadSheddingController | bool = False) -> None:
        self._functional = functional
        self.config = functional.config
        self._lock = threading.RLock()  # see "Threads" in the class doc
        state = functional.init_state()
        # The state lives packed (the fast path of a tick: ``FunctionalPredictor.step_packed``);
        # ``_view`` pairs some packed state with its unpacked ``CoreState``, made when first read.
        self._packed = functional.pack_state(state)
        self._view: tuple[PackedState, CoreState] = (self._packed, state)
        self._shedding: LoadSheddingController | None = None
        self._variants: dict[int, FunctionalPredictor] = {}
        self._snapshots = SnapshotSession(
            SnapshotSubject(config=self.config, kernel_names=self.kernel_names,
                            get_state=lambda: self.state, set_state=self._replace_state,
                            kernel_reports=self.kernel_reports), stores)
        if load_shedding:
            self._enable_load_shedding(load_shedding)
        else:
            self._functional.warm_up(state, packed=True)  # no tick, not even the first refresh, compiles

    # -- load shedding (spec §18–19) -------------------------------------------------------
    def _enable_load_shedding(self, load_shedding: LoadSheddingController | bool) -> None:
        """Compile one step per signature depth now (warm-up), so switching never compiles."""
        if "D" not in self.kernel_names:
            raise ValueError("load shedding switches kernel D's signature depth; enable kernel 'D'")
        controller = (load_shedding if isinstance(load_shedding, LoadSheddingController) else
                      LoadSheddingController(LoadSheddingPolicy(budget_ns=self.config.besov_nyquist_interval_ns)))
        self._variants = depth_predictors(self._functional, controller.policy.depths)
        for variant in self._variants.values():
            variant.warm_up(self.state, packed=True)
        self._shedding = controller
        self._functional = self._variants[controller.depth]

    @property
    def load_shedding(self) -> LoadSheddingController | None:
        """The depth controller, when load shedding is on."""
        return self._shedding

    @property
    def functional(self) -> FunctionalPredictor:
        """The stateless predictor the next tick goes through (per depth under load shedding)."""
        return self._functional

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return self._functional.kernel_names

    @property
    def kernel_reports(self) -> ReportLayout:
        """The layout of the output's report block (``domain._core.report_layout``)."""
        return self._functional.kernel_reports

    @property
    def state(self) -> CoreState:
        """The state after the last tick: an immutable pytree, so a consistent copy that later
        ticks do not change. Reading it never waits on a tick in progress."""
        packed, view = self._view
        current = self._packed
        if packed is not current:  # unpacked once per state read, not per tick
            view = self._functional.unpack_state(current)
            self._view = (current, view)
        return view

    @state.setter
    def state(self, value: CoreState) -> None:
        """Replace the state (e.g. a restored snapshot), after any tick in progress.

        Raises:
            TypeError: ``value`` is not a single-asset state of this predictor's kernels and config.
        """
        self._replace_state(value)

    def _replace_state(self, value: CoreState) -> None:
        packed = self._functional.pack_state(value)
        with self._lock:
            self._packed = packed
            self._view = (packed, value)

    def fit_history(self, history: Any) -> bool:
        """Cold-start bootstrapping on at least ``wtmm_buffer_size`` past values: the core's scan,
        then each kernel's ``fit`` (``FunctionalPredictor.fit_history``).

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
            state, last = self._functional.fit_history(self.state, values)
            self._replace_state(state)
        converged = bool(last[Out.SINKHORN_CONVERGED]) or len(self.kernel_names) == 1
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
        result = result_from_output(output, self.kernel_names, timestamp_ns, obs.state_tag,
                                    reports=self.kernel_reports)
        if self._shedding is not None and result.telemetry is not None:
            telemetry = attrs.evolve(result.telemetry, load_shedding=self._shedding.figures().as_dict())
            result = attrs.evolve(result, telemetry=telemetry)
        return result

    def step_raw(self, obs: ProcessState, *, report_mask: int = -1) -> tuple[np.ndarray, int]:
        """Like :meth:`step`, returning the core's output vector (layout ``Out``) and timestamp.

        ``report_mask``: the event bits (``EventCode``) that are reported (logged, and warned
        for staleness and sparse arrival); the output keeps all of them."""
        with self._lock:  # one tick at a time: read the state, step, write it back
            started = time.perf_counter_ns()
            self._packed, output, timestamp_ns = self._functional.step_packed(self._packed, obs)
            if self._shedding is not None:
                depth = self._shedding.record(time.perf_counter_ns() - started)
                self._functional = self._variants[depth]
        bits = int(output[Out.EVENTS]) & report_mask
        if bits:
            report_tick_events(bits, output, timestamp_ns, self.config)
        return output, timestamp_ns

    # -- persistence (usp.application.snapshot_session; docs/persistence.md) -----------------
    def save_snapshot(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> SnapshotReceipt:
        """Write the state now (to the store of ``[io] storage_kind`` for a bare key, a file store
        for a path, or ``store``)."""
        return self._snapshots.save(path_or_key, store=store)

    def load_snapshot(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> bool:
        """Restore the newest valid snapshot (True), or keep the state on a cold start (False)."""
        return self._snapshots.load(path_or_key, store=store)

    def save_snapshot_nonblocking(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> Future:
        """Capture the state and write it on a background worker; never waits on I/O."""
        return self._snapshots.save_nonblocking(path_or_key, store=store)

    def save_emergency_dump(self, directory: str | os.PathLike[str] | None = None, asset_id: str = "asset") -> Path:
        """Forensic MessagePack dump of the state (spec §16); returns the file's path."""
        return self._snapshots.emergency_dump(directory, asset_id)

    @property
    def storage_events(self) -> collections.deque[StoreEvent]:
        """The latest storage events (corrupted snapshot, insufficient storage, failed write)."""
        return self._snapshots.events

    @property
    def record_storage_event(self) -> EventCallback:
        """The ``on_event`` callback to give a store of your own: ``record_storage_event(event)``
        files ``event`` in :attr:`storage_events` (and the predictor then knows the store reported
        its write failures itself)."""
        return self._snapshots.record

    def close(self, timeout: float | None = None) -> bool:
        """Wait for pending non-blocking snapshots (True when all finished in time)."""
        return self._snapshots.close(timeout)

    def __enter__(self) -> UniversalPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["UniversalPredictor", "depth_predictors"]
