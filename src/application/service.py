"""``Service``: the loop of ``usp serve`` — ticks of many assets in, predictions out, snapshots on
a schedule, telemetry on the side, and a graceful end.

Every adapter comes in as an argument (the source, the sinks, the store, the telemetry queue);
the predictor carries its clock: the composition root gives a ``ReplayClock`` for a source that is
not live (a replayed file: staleness judged by the data's own time) and the system clock for a
live one.

Time order: ticks are applied in input order. A micro-batch is cut into rounds, the contiguous
runs of the input in which no asset repeats (``asset_registry.plan_rounds``), and each round is
one ``step_batch`` call whose "now" is the clock after observing the round's newest timestamp:
with a ``ReplayClock``, exactly what a clock fed tick by tick in input order reads at the round's
last tick. Assets ticking at different rates therefore never see each other's future (no false
``StaleDataEvent``); assets ticking in lockstep still share rounds as wide as their number.

All source and sink calls happen on the thread that calls :meth:`Service.run`; only snapshot
writes run on a background thread.

Ownership: the caller builds the source, the sinks, the store and the telemetry queue, and
closes them after ``run`` returns; the service flushes the sinks but closes nothing.

Delivery: with a store, the source batches applied before a snapshot was captured are
acknowledged once that snapshot is written. Each asset's snapshot records, in its ``meta``, the
receipt of the last tick its state holds (``receipt``: a Redis Streams entry id). After a crash
a broker source redelivers what was not acknowledged; a restored asset skips (applies and
outputs nothing for) every redelivered tick whose receipt is at or before its recorded one,
compared as ``(milliseconds, sequence)`` integer pairs, and applies the rest. So, for a source
with ordered receipts, every tick affects the state exactly once, and outputs are at least once:
a tick applied after the last snapshot of its asset but before the crash is output again (the
same numbers, since it is applied to the same state). Ticks without receipts (files, stdin) or
snapshots without a recorded receipt are never skipped. Without a store nothing is durable but
the sink's output, and a batch is acknowledged as soon as its predictions are flushed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import attrs
import jax
import numpy as np

from ..domain import ConfigError, PredictorConfig
from ..domain._core import CoreState, Out
from ..ports.ingestion import MalformedObservationEvent, ObservationBatch, ObservationSource
from ..ports.prediction_sink import PredictionRecords, PredictionSink
from ..ports.state_store import StateStore, asset_key
from ..ports.telemetry import (
    MalformedTelemetry,
    ParityHashTelemetry,
    ShutdownTelemetry,
    SnapshotTelemetry,
    TelemetryRecord,
    TickTelemetry,
)
from .asset_registry import RECEIPT_META, AssetStates, plan_rounds, receipt_order
from .batch_snapshots import save_states
from .functional import FunctionalPredictor
from .reloadable import ConfigFileWatch, keeps_state
from .types import OperatingMode, decode_events

logger = logging.getLogger("usp.service")

#: Seconds a ``read`` waits for ticks, so that a stop request is seen this promptly.
READ_TIMEOUT_S = 0.1


@attrs.frozen
class ConfigReload:
    """How the service follows its config file (``usp serve --reload-every``).

    Attributes:
        watch: the file (``ConfigFileWatch``: a new version that loads is offered once).
        build: the ``FunctionalPredictor`` of a config, with the service's clock, kernels resolved
            and compiled by the caller's composition root.
        every_s: seconds between looks at the file (> 0).
    """

    watch: ConfigFileWatch
    build: Callable[[PredictorConfig], FunctionalPredictor]
    every_s: float = attrs.field(validator=lambda _, __, value: _positive_seconds(value, "every_s"))


def _positive_seconds(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0.0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


class TelemetryOffer(Protocol):
    """Where the service hands telemetry records (``TelemetryQueue``): ``offer`` never blocks."""

    def offer(self, record: TelemetryRecord) -> None: ...


@attrs.frozen
class ServeSummary:
    """What a :meth:`Service.run` did.

    Attributes:
        ticks: ticks applied (rejected ones included: each got an output).
        assets: distinct assets seen.
        batches: non-empty source batches applied.
        snapshots: snapshots of all assets written (the final one included).
        seconds: wall time of the run (s).
        residual_observations: ticks read but not applied (0 after a normal end).
        snapshot_failures: snapshot writes that failed (reported and retried).
        malformed: records the source reported as skipped (``note_malformed``).
        restored: assets whose state came from the store when first seen.
        skipped: redelivered ticks not applied (nor output) because their asset's restored
            snapshot already held them (receipt at or before the one it recorded).
        reloads: new versions of the config file adopted (``reload``).
    """

    ticks: int
    assets: int
    batches: int
    snapshots: int
    seconds: float
    residual_observations: int
    snapshot_failures: int = 0
    malformed: int = 0
    restored: int = 0
    skipped: int = 0
    reloads: int = 0


def weights_digest(assets: Sequence[str], last_outputs: np.ndarray, n_kernels: int) -> str:
    """The parity hash (model.md §6): SHA-256 over the assets in sorted id order, each as its UTF-8
    id (length-prefixed, uint32 little-endian) then the little-endian float64 bytes of its kernel
    weights and its transport cost (the free energy of the last valid tick).

    ``last_outputs`` is float64[len(assets), Out.length] in the order of ``assets``.
    """
    digest = hashlib.sha256()
    columns = [*range(Out.SIZE, Out.SIZE + n_kernels), Out.FREE_ENERGY]
    block = np.ascontiguousarray(last_outputs[:, columns], dtype="<f8")
    for row in sorted(range(len(assets)), key=assets.__getitem__):
        name = assets[row].encode("utf-8", "surrogatepass")
        digest.update(len(name).to_bytes(4, "little"))
        digest.update(name)
        digest.update(block[row].tobytes())
    return digest.hexdigest()


@attrs.frozen
class _Capture:
    """A snapshot's content: the assets, their batched state, the receipt of the last tick each
    asset's state holds (None: none known), and the batches it covers."""

    assets: tuple[str, ...]
    state: CoreState
    receipts: tuple[str | None, ...]
    batches: tuple[ObservationBatch, ...]


class Service:
    """Runs one ``FunctionalPredictor`` over every asset of a source (see the module docstring).

    Args:
        functional: the predictor; its clock is the service's time (replay or wall).
        source: where ticks come from.
        sinks: where each micro-batch's predictions go (written, then flushed, in order).
        store: where states are restored from (each asset when first seen) and snapshotted to,
            keyed by :func:`~usp.ports.state_store.asset_key`; None: cold starts, no snapshots.
        telemetry: anything with a non-blocking ``offer(record)`` (a ``TelemetryQueue``), or None.
        snapshot_every_s: seconds between snapshots of all assets (> 0), or None: only the final
            one. Needs a store.
        max_batch: most ticks read per micro-batch (≥ 1).
        hash_interval_steps: a parity hash every this many ticks (≥ 1; only with telemetry).
        reload: follow a config file (:class:`ConfigReload`), or None. Between micro-batches,
            every ``every_s`` seconds, a new valid version is compiled and adopted: when only
            sensitivity (traced) keys and I/O keys changed every asset keeps its state; any
            other change restarts every asset cold (spec §21.4) and a snapshot of the new states
            follows at once. A version that changes ``enabled_kernels`` is refused (restart the
            service for that), as is one that does not load (logged; the service goes on).

    Raises:
        ValueError: a bad argument (named).
    """

    def __init__(self, functional: FunctionalPredictor, source: ObservationSource,
                 sinks: Sequence[PredictionSink], *, store: StateStore | None = None,
                 telemetry: TelemetryOffer | None = None, snapshot_every_s: float | None = None,
                 max_batch: int = 4096, hash_interval_steps: int = 1000, reload: ConfigReload | None = None) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if isinstance(hash_interval_steps, bool) or not isinstance(hash_interval_steps, int) \
                or hash_interval_steps < 1:
            raise ValueError(f"hash_interval_steps must be a positive integer, got {hash_interval_steps!r}")
        if snapshot_every_s is not None:
            if not float(snapshot_every_s) > 0.0:
                raise ValueError(f"snapshot_every_s must be > 0 seconds, got {snapshot_every_s!r}")
            if store is None:
                raise ValueError("snapshot_every_s needs a store to write the snapshots to")
        self.functional = functional
        self.source = source
        self.sinks = tuple(sinks)
        self.store = store
        self.telemetry = telemetry
        self.snapshot_every_s = None if snapshot_every_s is None else float(snapshot_every_s)
        self.max_batch = max_batch
        self.hash_interval_steps = hash_interval_steps
        self.states = AssetStates(functional, store=store)
        self.reload = reload
        self.reloads = 0
        self.ticks = 0
        self.batches = 0
        self.snapshots = 0
        self.snapshot_failures = 0
        self.skipped = 0
        self._malformed_lock = threading.Lock()
        self._malformed_new = 0
        self._malformed_total = 0
        self._unacknowledged: list[ObservationBatch] = []
        self._event_names: dict[int, tuple[str, ...]] = {}
        self._mode_names = np.array([OperatingMode.to_string(code) for code in range(3)], dtype=object)
        self._ran = False

    # -- telemetry ---------------------------------------------------------------------------
    def _offer(self, record: TelemetryRecord) -> None:
        if self.telemetry is not None:
            self.telemetry.offer(record)

    def note_malformed(self, event: MalformedObservationEvent) -> None:
        """The source's ``on_event`` callback: counts a skipped record (any thread); the count is
        offered as ``MalformedTelemetry`` from the loop."""
        del event  # the source has logged it
        with self._malformed_lock:
            self._malformed_new += 1
            self._malformed_total += 1

    def _report_malformed(self) -> None:
        with self._malformed_lock:
            count, self._malformed_new = self._malformed_new, 0
        if count:
            self._offer(MalformedTelemetry(count))

    # -- ticks -------------------------------------------------------------------------------
    def step(self, batch: ObservationBatch) -> PredictionRecords:
        """Apply one micro-batch to the states (rounds: contiguous runs of distinct assets, so
        every tick in input order) and return its predictions in input order. Offers a ``TickTelemetry`` per
        ``step_batch`` call and a ``ParityHashTelemetry`` whenever the tick count reaches a
        multiple of ``hash_interval_steps`` (the batch is cut there: the hash is of the states
        after exactly that many ticks, wherever the batch boundaries fell). Writes nothing to
        the sinks."""
        n = len(batch)
        if n == 0:
            return self._records(batch, np.zeros((0, Out.SIZE)))
        rows = self.states.rows_for(batch.assets)
        state = self.states.state
        assert state is not None  # (rows_for registered the batch's assets)
        outputs = np.empty((n, state.last_output.shape[-1]), np.float64)
        hashing = self.telemetry is not None
        start = 0
        while start < n:
            stop = n
            if hashing:
                stop = min(n, start + self.hash_interval_steps - self.ticks % self.hash_interval_steps)
            self._step_segment(batch, rows, start, stop, outputs)
            if hashing and self.ticks % self.hash_interval_steps == 0:
                assets = self.states.assets
                digest = weights_digest(assets, self.states.last_outputs(), len(self.functional.kernel_names))
                self._offer(ParityHashTelemetry(self.ticks, digest))
            start = stop
        self.states.flush()
        return self._records(batch, outputs)

    def _step_segment(self, batch: ObservationBatch, rows: np.ndarray, start: int, stop: int,
                      outputs: np.ndarray) -> None:
        names = self.functional.kernel_names
        assets = self.states.assets
        for positions in plan_rounds(rows[start:stop]):
            positions = positions + start
            positions = positions[np.argsort(rows[positions], kind="stable")]  # row order: rounds chain
            began = time.perf_counter()
            out = self.states.step_round(rows[positions], batch.values[positions], batch.timestamps_ns[positions])
            seconds = time.perf_counter() - began
            outputs[positions] = out
            self.ticks += positions.size
            if self.telemetry is not None:
                self._offer(TickTelemetry(
                    assets=tuple(assets[row] for row in rows[positions].tolist()),
                    timestamps_ns=batch.timestamps_ns[positions], modes=out[:, Out.MODE].astype(np.int32),
                    events=out[:, Out.EVENTS].astype(np.int64),
                    weights=np.ascontiguousarray(out[:, Out.SIZE:Out.SIZE + len(names)]), kernel_names=names,
                    emergency=out[:, Out.EMERGENCY] != 0.0, degraded=out[:, Out.DEGRADED] != 0.0,
                    batch_seconds=seconds))

    def _records(self, batch: ObservationBatch, outputs: np.ndarray) -> PredictionRecords:
        modes = self._mode_names[np.clip(outputs[:, Out.MODE].astype(np.int64), 0, 2)]
        names = self._event_names
        events = []
        for bits in outputs[:, Out.EVENTS].astype(np.int64).tolist():
            found = names.get(bits)
            if found is None:
                found = names[bits] = tuple(event.name for event in decode_events(bits))
            events.append(found)
        return PredictionRecords(
            assets=batch.assets, timestamps_ns=batch.timestamps_ns,
            prediction=outputs[:, Out.PREDICTION].copy(), lower=outputs[:, Out.LOWER].copy(),
            upper=outputs[:, Out.UPPER].copy(), modes=tuple(modes.tolist()), events=tuple(events),
            receipts=batch.receipts)

    def _unseen(self, batch: ObservationBatch) -> ObservationBatch:
        """``batch`` without the redelivered ticks its assets' restored snapshots already hold.

        A restored asset whose snapshot recorded a receipt has a floor (``AssetStates.floors``);
        a tick of it whose receipt is at or before the floor (compared as ``receipt_order``
        pairs) is dropped and counted in :attr:`skipped`. The first tick past the floor lifts it
        (a source hands an asset's ticks in receipt order), so once the redeliveries are through
        this is one set test per batch.
        """
        floors = self.states.floors
        if not floors or not batch.receipts or floors.keys().isdisjoint(batch.assets):
            return batch
        keep = np.ones(len(batch), bool)
        passed = set()
        for i, (asset, receipt) in enumerate(zip(batch.assets, batch.receipts, strict=True)):
            floor = floors.get(asset)
            if floor is None or asset in passed:
                continue
            order = receipt_order(receipt)
            if order is not None and order <= floor:
                keep[i] = False
            else:
                passed.add(asset)
        for asset in passed:
            del floors[asset]
        if keep.all():
            return batch
        skipped = int(np.count_nonzero(~keep))
        self.skipped += skipped
        dropped = {asset for asset, kept in zip(batch.assets, keep.tolist(), strict=True) if not kept}
        logger.info("skipped %d redelivered ticks of %d assets: their snapshots already hold them", skipped,
                    len(dropped))
        rows = np.flatnonzero(keep).tolist()
        return ObservationBatch(tuple(batch.assets[i] for i in rows), batch.timestamps_ns[rows],
                                batch.values[rows], tuple(batch.receipts[i] for i in rows))

    def _apply(self, batch: ObservationBatch) -> None:
        """Step, write and flush one non-empty batch (less the ticks already in the restored
        snapshots); acknowledge it when nothing else will."""
        self.states.rows_for(batch.assets)  # restores (and sets the floors of) assets seen first here
        fresh = self._unseen(batch)
        if len(fresh):
            records = self.step(fresh)
            if fresh.receipts:
                self.states.receipts.update(zip(fresh.assets, fresh.receipts, strict=True))
            for sink in self.sinks:
                sink.write(records)
            for sink in self.sinks:
                sink.flush()
        self.batches += 1
        if self.store is None or not len(fresh):  # (all skipped: already durable in the store)
            self.source.acknowledge([batch])
        else:
            self._unacknowledged.append(batch)

    # -- config reload -----------------------------------------------------------------------
    def _reload(self) -> bool:
        """Adopt a new version of the config file, if there is one (see ``reload``); True when a
        structural change restarted the states (a snapshot of them is due)."""
        assert self.reload is not None
        current = self.functional.config
        config = self.reload.watch.poll(current)
        if config is None:
            return False
        if config.enabled_kernels != current.enabled_kernels:
            self.reload.watch.refuse(f"enabled_kernels changed from {list(current.enabled_kernels)} to "
                                     f"{list(config.enabled_kernels)}: restart the service to change the kernel set")
            return False
        try:
            functional = self.reload.build(config)
            functional.warm_up()  # compile before the swap
        except (ConfigError, OSError) as exc:
            self.reload.watch.refuse(str(exc))
            return False
        keep = keeps_state(current, config)
        self.states.reconfigure(functional, keep_states=keep)
        self.functional = functional
        self.reloads += 1
        logger.info("reloaded %s: %s", self.reload.watch.path, "states kept" if keep else
                    f"structural change, {len(self.states)} assets restart cold")
        return not keep

    # -- snapshots ---------------------------------------------------------------------------
    def _capture(self) -> _Capture | None:
        """What a snapshot now would write, and the batches it covers (taken off the to-ack list)."""
        assets, state = self.states.capture()
        batches, self._unacknowledged = tuple(self._unacknowledged), []
        if state is None:
            if batches:
                self.source.acknowledge(list(batches))
            return None
        receipts = self.states.receipts
        return _Capture(assets, state, tuple(receipts.get(asset) for asset in assets), batches)

    def _write(self, capture: _Capture) -> float:
        """Write a snapshot (any thread); returns its seconds. Raises what the store raises."""
        began = time.perf_counter()
        count = len(capture.assets)
        host = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[:count], jax.device_get(capture.state))
        metas = [{} if receipt is None else {RECEIPT_META: receipt} for receipt in capture.receipts]
        functional = self.functional
        save_states(self.store, [asset_key(a) for a in capture.assets], host,  # type: ignore[arg-type]
                    config=functional.config, kernel_names=functional.kernel_names, metas=metas,
                    reports=functional.kernel_reports)
        return time.perf_counter() - began

    def _finished(self, capture: _Capture, future: Future) -> bool:
        """Report a finished snapshot write; acknowledge what it covers when it succeeded, or
        put those batches back to be covered by the next one."""
        error = future.exception()
        if error is None:
            self.snapshots += 1
            self._offer(SnapshotTelemetry(len(capture.assets), float(future.result()), True))
            if capture.batches:
                self.source.acknowledge(list(capture.batches))
            return True
        self.snapshot_failures += 1
        logger.error("snapshot of %d assets failed: %s", len(capture.assets), error)
        self._offer(SnapshotTelemetry(len(capture.assets), 0.0, False, f"{type(error).__name__}: {error}"))
        self._unacknowledged[:0] = capture.batches
        return False

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> ServeSummary:
        """Serve until ``stop`` is set or a non-live source ends (``read`` returns None).

        Loop: read up to ``max_batch`` ticks (waiting at most :data:`READ_TIMEOUT_S`), apply them,
        write and flush the sinks; every ``snapshot_every_s`` seconds capture all states and write
        them on a background thread (at most one in flight; the loop keeps ticking), then
        acknowledge the batches that snapshot covers. Once ``stop`` is set, ``read`` is not called
        again; what was read is applied. At the end: wait for the pending snapshot, write the final
        one, acknowledge, offer ``ShutdownTelemetry`` and return. A snapshot failure is logged,
        offered as ``SnapshotTelemetry(ok=False)`` and retried at the next interval; an exception
        from the source, a sink or a state restore ends the run (the pending snapshot is still
        awaited and acknowledged, no final one is written) and propagates.

        Raises:
            RuntimeError: ``run`` was called before on this service.
        """
        if self._ran:
            raise RuntimeError("a Service runs once; build a new one to serve again")
        self._ran = True
        began = time.monotonic()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usp-snapshot")
        pending: tuple[_Capture, Future] | None = None
        interval = self.snapshot_every_s
        next_snapshot = None if interval is None else began + interval
        next_reload = None if self.reload is None else began + self.reload.every_s
        in_hand = 0
        ended_at = began
        try:
            while not stop.is_set():
                batch = self.source.read(self.max_batch, READ_TIMEOUT_S)
                self._report_malformed()
                if batch is None:
                    break
                if len(batch):
                    in_hand = len(batch)
                    self._apply(batch)
                    in_hand = 0
                if pending is not None and pending[1].done():
                    ok = self._finished(*pending)
                    pending = None
                    if not ok and interval is not None:
                        next_snapshot = time.monotonic() + interval
                # a reload waits for the snapshot in flight: it was captured under the old config
                if next_reload is not None and pending is None and time.monotonic() >= next_reload:
                    next_reload = time.monotonic() + self.reload.every_s  # type: ignore[union-attr]
                    if self._reload() and self.store is not None:
                        next_snapshot = time.monotonic()  # the store must hold the new layout
                if next_snapshot is not None and pending is None and time.monotonic() >= next_snapshot:
                    next_snapshot = None if interval is None else time.monotonic() + interval
                    capture = self._capture()
                    if capture is not None:
                        pending = (capture, executor.submit(self._write, capture))
            ended_at = time.monotonic()
        except Exception:
            if pending is not None:
                pending[1].exception()  # wait for it: what it covers is durable once it is written
                self._finished(*pending)
            executor.shutdown(wait=True)
            self._offer(ShutdownTelemetry(False, time.monotonic() - began, in_hand))
            raise
        except BaseException:  # KeyboardInterrupt and the like: leave at once, no snapshot waited on
            executor.shutdown(wait=False, cancel_futures=True)
            self._offer(ShutdownTelemetry(False, time.monotonic() - began, in_hand))
            raise
        if pending is not None:
            pending[1].exception()
            self._finished(*pending)
        executor.shutdown(wait=True)
        self._final_snapshot()
        self._report_malformed()
        for sink in self.sinks:
            sink.flush()
        self._offer(ShutdownTelemetry(True, time.monotonic() - ended_at, 0))
        return ServeSummary(ticks=self.ticks, assets=len(self.states), batches=self.batches,
                            snapshots=self.snapshots, seconds=time.monotonic() - began, residual_observations=0,
                            snapshot_failures=self.snapshot_failures, malformed=self._malformed_total,
                            restored=self.states.restored, skipped=self.skipped, reloads=self.reloads)

    def _final_snapshot(self) -> None:
        """Write all states now (on this thread) and acknowledge everything applied."""
        if self.store is None:
            return
        capture = self._capture()
        if capture is None:
            return
        future: Future = Future()
        try:
            future.set_result(self._write(capture))
        except Exception as error:  # reported like any failed snapshot; the batches stay unacknowledged
            future.set_exception(error)
        self._finished(capture, future)


__all__ = ["READ_TIMEOUT_S", "ConfigReload", "ServeSummary", "Service", "TelemetryOffer", "weights_digest"]
