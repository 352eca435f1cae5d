"""Prometheus telemetry sink: the service's metrics on an HTTP ``/metrics`` endpoint.

:class:`PrometheusTelemetry` keeps its own ``CollectorRegistry`` (never the process-global one)
and turns telemetry records into these metrics (types as exposed; ``{label}`` lists labels):

================================================  =========  ====================================
metric                                            type       meaning
================================================  =========  ====================================
``usp_ticks_total``                               counter    ticks applied by ``step_batch``
                                                             (accepted or rejected)
``usp_ticks_rejected_total{reason}``              counter    rejected ticks: ``non_finite``,
                                                             ``magnitude``, ``outlier``,
                                                             ``out_of_order`` (the tick's event
                                                             bits), ``malformed`` (records a
                                                             source could not read; not ticks)
``usp_regime_changes_total``                      counter    ticks raising ``REGIME_CHANGED``
``usp_assets{mode}``                              gauge      assets whose latest tick left them
                                                             in ``inference`` / ``calibration`` /
                                                             ``diagnostic`` mode
``usp_assets_emergency``                          gauge      assets in emergency mode (latest tick)
``usp_assets_degraded``                           gauge      assets in degraded inference mode
``usp_kernel_weight{kernel}``                     gauge      mean over assets of each asset's
                                                             latest weight of the kernel
``usp_asset_kernel_weight{asset,kernel}``         gauge      latest weight, only for the assets
                                                             named in ``per_asset_weights``
``usp_batch_seconds``                             histogram  wall time of one ``step_batch`` call
``usp_step_seconds``                              histogram  a *step* is one tick's share of its
                                                             batch: ``batch_seconds / rows``,
                                                             observed once per batch
``usp_jitter_seconds{quantile}``                  gauge      P95 / P99 (``quantile`` "0.95",
                                                             "0.99", nearest rank) of the step
                                                             jitter ``|step_t − step_{t−1}|`` over
                                                             the last ``jitter_window`` batches
``usp_snapshot_writes_total``                     counter    snapshots written
``usp_snapshot_failures_total``                   counter    snapshot writes that failed
``usp_snapshot_seconds``                          histogram  duration of every snapshot attempt
``usp_telemetry_dropped_total``                   counter    telemetry records dropped by full
                                                             queues (read at scrape time from
                                                             :meth:`PrometheusTelemetry.watch_drops`)
``usp_parity_hash_info{digest,step}``             gauge 1    the latest parity hash (model.md §6)
``usp_device_memory_used_bytes{device}``          gauge      accelerator memory in use (bytes)
``usp_device_memory_total_bytes{device}``         gauge      accelerator memory available (bytes)
``predictor_graceful_shutdowns_total``            counter    graceful shutdowns (spec §11)
``predictor_shutdown_duration_seconds``           histogram  duration of every shutdown (spec §11)
``predictor_shutdown_residual_observations``      histogram  ticks read but not applied at each
                                                             shutdown (spec §11)
================================================  =========  ====================================

A worker of ``usp serve --cluster`` adds, through :class:`ClusterMetrics` on the same registry:

================================================  =========  ====================================
``usp_cluster_shards_owned``                      gauge      shards whose lease this worker holds
``usp_cluster_lease_renewals_total``              counter    lease renewals that succeeded
``usp_cluster_lease_losses_total{reason}``        counter    leases lost: ``expired`` (a renewal
                                                             found it gone), ``fenced`` (a commit
                                                             was refused)
``usp_cluster_commit_seconds``                    histogram  one micro-batch's commit: encoding its
                                                             states and the atomic script
``usp_cluster_lag_entries{shard}``                gauge      entries of an owned shard's stream
                                                             not applied yet
================================================  =========  ====================================

Jitter follows the project's load-shedding definition (spec §19): the step-to-step variation
of the per-tick latency, RFC 3550 style; the latency distribution itself is ``usp_step_seconds``.
The asset gauges, weights and jitter are computed at scrape time from arrays kept per asset
(``usp.application.telemetry_queue.AssetTable``), so a scrape sees one consistent state.
Per-record work is vectorised over the record's arrays.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..application.telemetry_queue import AssetTable
from ..domain._events import EventCode
from ..ports.telemetry import (
    DeviceMemoryTelemetry,
    MalformedTelemetry,
    ParityHashTelemetry,
    ShutdownTelemetry,
    SnapshotTelemetry,
    TelemetryRecord,
    TickTelemetry,
)

__all__ = ["COMMIT_BUCKETS", "MODE_NAMES", "REJECTION_REASONS", "SNAPSHOT_BUCKETS", "STEP_BUCKETS", "ClusterMetrics",
           "PrometheusTelemetry", "nearest_rank"]

#: Histogram buckets of ``usp_step_seconds`` / ``usp_batch_seconds`` (s): 1 µs to 10 s, 1-2.5-5.
STEP_BUCKETS: tuple[float, ...] = (*(float(f"{m}e{e}") for e in range(-6, 1) for m in (1, 2.5, 5)), 10.0)
#: Histogram buckets of ``usp_snapshot_seconds`` (s): 1 ms to 60 s.
SNAPSHOT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                       10.0, 30.0, 60.0)
#: Histogram buckets of ``usp_cluster_commit_seconds`` (s): 0.5 ms to 10 s.
COMMIT_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                     10.0)
#: The ``reason`` label of ``usp_ticks_rejected_total`` for each rejection bit.
REJECTION_REASONS: dict[str, int] = {
    "non_finite": int(EventCode.REJECTED_NON_FINITE),
    "magnitude": int(EventCode.REJECTED_MAGNITUDE),
    "outlier": int(EventCode.REJECTED_OUTLIER),
    "out_of_order": int(EventCode.REJECTED_OUT_OF_ORDER),
}
#: ``usp_assets`` label per OperatingMode code.
MODE_NAMES: tuple[str, ...] = ("inference", "calibration", "diagnostic")
JITTER_QUANTILES: tuple[float, ...] = (0.95, 0.99)


def nearest_rank(samples: np.ndarray, q: float) -> float:
    """The nearest-rank ``q``-quantile of ``samples`` (non-empty): the ⌈q·n⌉-th smallest."""
    return float(np.percentile(samples, 100.0 * q, method="inverted_cdf"))


class PrometheusTelemetry:
    """Telemetry sink exposing the metrics listed in the module docstring.

    Args:
        registry: where to register the metrics; a new ``CollectorRegistry`` when None.
        per_asset_weights: asset ids whose own kernel weights are exported (keep it small:
            each adds one series per kernel).
        jitter_window: batches in the rolling window of ``usp_jitter_seconds`` (>= 1).
    """

    name = "prometheus"

    def __init__(self, *, registry: CollectorRegistry | None = None, per_asset_weights: Iterable[str] = (),
                 jitter_window: int = 1024) -> None:
        if jitter_window < 1:
            raise ValueError(f"jitter_window must be >= 1, got {jitter_window}")
        self.registry = CollectorRegistry() if registry is None else registry
        self.per_asset_weights = frozenset(per_asset_weights)
        self._lock = threading.Lock()
        self._table = AssetTable()
        self._jitter: collections.deque[float] = collections.deque(maxlen=jitter_window)
        self._last_step: float | None = None
        self._drops: Callable[[], int] | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        reg = self.registry
        self._ticks = Counter("usp_ticks_total", "Ticks applied by step_batch (accepted or rejected)", registry=reg)
        self._rejected = Counter("usp_ticks_rejected_total", "Rejected ticks and unreadable records, by reason",
                                 ["reason"], registry=reg)
        for reason in (*REJECTION_REASONS, "malformed"):
            self._rejected.labels(reason=reason)
        self._regimes = Counter("usp_regime_changes_total", "Ticks that raised a regime change (CUSUM alarm)",
                                registry=reg)
        self._batch = Histogram("usp_batch_seconds", "Wall time of one step_batch call (s)", buckets=STEP_BUCKETS,
                                registry=reg)
        self._step = Histogram("usp_step_seconds", "Per-tick share of a step_batch call: batch_seconds / rows (s)",
                               buckets=STEP_BUCKETS, registry=reg)
        self._snap_ok = Counter("usp_snapshot_writes_total", "Snapshots written", registry=reg)
        self._snap_failed = Counter("usp_snapshot_failures_total", "Snapshot writes that failed", registry=reg)
        self._snap_seconds = Histogram("usp_snapshot_seconds", "Duration of a snapshot attempt (s)",
                                       buckets=SNAPSHOT_BUCKETS, registry=reg)
        self._parity = Info("usp_parity_hash", "Latest parity hash of the weights (model.md section 6)",
                            registry=reg)
        self._mem_used = Gauge("usp_device_memory_used_bytes", "Accelerator memory in use (bytes)", ["device"],
                               registry=reg)
        self._mem_total = Gauge("usp_device_memory_total_bytes", "Accelerator memory available (bytes)", ["device"],
                                registry=reg)
        self._shutdowns = Counter("predictor_graceful_shutdowns_total", "Total number of graceful shutdowns executed",
                                  registry=reg)
        self._shutdown_seconds = Histogram("predictor_shutdown_duration_seconds",
                                           "Time taken to complete graceful shutdown",
                                           buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0), registry=reg)
        self._residual = Histogram("predictor_shutdown_residual_observations",
                                   "Number of observations in buffer during shutdown",
                                   buckets=(0, 1, 5, 10, 50, 100, 500, 1000), registry=reg)
        reg.register(_StateCollector(self))

    # -- records ---------------------------------------------------------------------------
    def publish(self, records: Sequence[TelemetryRecord]) -> None:
        """Fold ``records`` into the metrics, in order.

        Raises:
            TypeError: a record of an unknown type (the records before it are counted).
        """
        for record in records:
            if isinstance(record, TickTelemetry):
                self._tick(record)
            elif isinstance(record, MalformedTelemetry):
                self._rejected.labels(reason="malformed").inc(record.count)
            elif isinstance(record, SnapshotTelemetry):
                (self._snap_ok if record.ok else self._snap_failed).inc()
                self._snap_seconds.observe(record.seconds)
            elif isinstance(record, ParityHashTelemetry):
                self._parity.info({"digest": record.digest, "step": str(record.step)})
            elif isinstance(record, DeviceMemoryTelemetry):
                self._mem_used.labels(device=record.device).set(record.used_bytes)
                self._mem_total.labels(device=record.device).set(record.total_bytes)
            elif isinstance(record, ShutdownTelemetry):
                if record.graceful:
                    self._shutdowns.inc()
                self._shutdown_seconds.observe(record.seconds)
                self._residual.observe(record.residual_observations)
            else:
                raise TypeError(f"not a telemetry record: {type(record).__name__}")

    def _tick(self, record: TickTelemetry) -> None:
        rows = len(record.assets)
        if rows == 0:
            return
        events = np.asarray(record.events, np.int64)
        self._ticks.inc(rows)
        for reason, bit in REJECTION_REASONS.items():
            count = int(np.count_nonzero(events & bit))
            if count:
                self._rejected.labels(reason=reason).inc(count)
        regimes = int(np.count_nonzero(events & int(EventCode.REGIME_CHANGED)))
        if regimes:
            self._regimes.inc(regimes)
        step = record.batch_seconds / rows
        self._batch.observe(record.batch_seconds)
        self._step.observe(step)
        with self._lock:
            if self._last_step is not None:
                self._jitter.append(abs(step - self._last_step))
            self._last_step = step
            self._table.update(record)

    def watch_drops(self, fn: Callable[[], int]) -> None:
        """Expose ``fn()`` (e.g. ``TelemetryQueue.dropped_total``) as ``usp_telemetry_dropped_total``
        at every scrape (0 until a function is given; a later call replaces it)."""
        self._drops = fn

    # -- HTTP ------------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on ``addr:port`` in a daemon thread (port 0: a free
        port); returns the bound port.

        Raises:
            RuntimeError: already serving.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the Prometheus endpoint is already being served")
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (no-op when not serving)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5.0)

    # -- scrape-time state -----------------------------------------------------------------
    def _state_metrics(self) -> Iterator[Metric]:
        with self._lock:
            table = self._table
            modes = np.bincount(table.modes.astype(np.intp), minlength=len(MODE_NAMES))
            emergency = int(np.count_nonzero(table.emergency))
            degraded = int(np.count_nonzero(table.degraded))
            kernels = table.kernel_names
            weights = table.weights.copy()
            mine = sorted((asset, slot) for asset, slot in table.slots.items() if asset in self.per_asset_weights)
            jitter = np.array(self._jitter)
        drops = self._drops
        assets = GaugeMetricFamily("usp_assets", "Assets by the operating mode of their latest tick",
                                   labels=["mode"])
        for code, mode in enumerate(MODE_NAMES):
            assets.add_metric([mode], float(modes[code]))
        yield assets
        yield GaugeMetricFamily("usp_assets_emergency", "Assets in emergency mode (latest tick)", value=emergency)
        yield GaugeMetricFamily("usp_assets_degraded", "Assets in degraded inference mode (latest tick)",
                                value=degraded)
        mean = GaugeMetricFamily("usp_kernel_weight", "Mean over assets of the latest kernel weight",
                                 labels=["kernel"])
        known = np.all(np.isfinite(weights), axis=1)
        if kernels and np.any(known):
            for kernel, value in zip(kernels, weights[known].mean(axis=0), strict=True):
                mean.add_metric([kernel], float(value))
        yield mean
        own = GaugeMetricFamily("usp_asset_kernel_weight", "Latest kernel weight of a configured asset",
                                labels=["asset", "kernel"])
        for asset, slot in mine:
            for kernel, value in zip(kernels, weights[slot], strict=True):
                own.add_metric([asset, kernel], float(value))
        yield own
        jitter_family = GaugeMetricFamily("usp_jitter_seconds", "Step jitter |step_t - step_t-1| quantiles (s)",
                                          labels=["quantile"])
        if jitter.size:
            for q in JITTER_QUANTILES:
                jitter_family.add_metric([str(q)], nearest_rank(jitter, q))
        yield jitter_family
        yield CounterMetricFamily("usp_telemetry_dropped_total", "Telemetry records dropped by full queues",
                                  value=0 if drops is None else int(drops()))


class _StateCollector:
    """Registry collector for the scrape-time metrics of a :class:`PrometheusTelemetry`."""

    def __init__(self, owner: PrometheusTelemetry) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        return self._owner._state_metrics()


class ClusterMetrics:
    """The per-worker metrics of ``usp serve --cluster`` (a ``usp.application.cluster.ClusterObserver``),
    registered on ``registry`` (a :class:`PrometheusTelemetry`'s, so one ``/metrics`` serves both);
    the table is in the module doc. Thread-safe (prometheus_client's metrics are)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._owned = Gauge("usp_cluster_shards_owned", "Shards whose lease this worker holds", registry=registry)
        self._renewals = Counter("usp_cluster_lease_renewals_total", "Lease renewals that succeeded",
                                 registry=registry)
        self._losses = Counter("usp_cluster_lease_losses_total", "Leases lost, by how the loss was found",
                               ["reason"], registry=registry)
        for reason in ("expired", "fenced"):
            self._losses.labels(reason=reason)
        self._commit = Histogram("usp_cluster_commit_seconds", "Commit of one micro-batch: states encoded and the "
                                 "atomic script (s)", buckets=COMMIT_BUCKETS, registry=registry)
        self._lag = Gauge("usp_cluster_lag_entries", "Entries of an owned shard not applied yet", ["shard"],
                          registry=registry)
        self._lock = threading.Lock()
        self._lagging: set[int] = set()

    def owned(self, shards: Sequence[int]) -> None:
        """The shards held now (the lag series of the others are removed)."""
        held = set(shards)
        self._owned.set(len(held))
        with self._lock:
            for shard in self._lagging - held:
                self._lag.remove(str(shard))
            self._lagging &= held

    def renewed(self, shard: int) -> None:
        self._renewals.inc()

    def lost(self, shard: int, reason: str) -> None:
        self._losses.labels(reason=reason).inc()

    def committed(self, shard: int, seconds: float, ticks: int) -> None:
        self._commit.observe(seconds)

    def backlog(self, shard: int, entries: int) -> None:
        with self._lock:
            self._lagging.add(shard)
            self._lag.labels(shard=str(shard)).set(entries)
