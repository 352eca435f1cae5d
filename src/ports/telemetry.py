"""``TelemetrySink``: where per-tick telemetry and service events go (Prometheus, logging).

Telemetry never blocks a tick: the service puts records on a bounded queue
(``[io] telemetry_buffer_maxlen``, ``usp.application.telemetry_queue``), one per sink, and a
background thread hands each sink lists of records. A record that does not fit is dropped and
counted (``usp_telemetry_dropped_total``), never silently lost. Records carry arrays over the
assets of a micro-batch, never one object per asset-tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs
import numpy as np


@attrs.frozen(eq=False)
class TickTelemetry:
    """One ``step_batch`` call of the service: the columns of its output, one row per tick."""

    assets: tuple[str, ...]     #: asset id per row
    timestamps_ns: np.ndarray   #: int64[n]
    modes: np.ndarray           #: int32[n] OperatingMode codes (0 inference, 1 calibration, 2 diagnostic)
    events: np.ndarray          #: int64[n] EventCode bits
    weights: np.ndarray         #: float64[n, k] kernel weights, in ``kernel_names`` order
    kernel_names: tuple[str, ...]
    emergency: np.ndarray       #: bool[n] emergency mode (circuit breaker) after the tick
    degraded: np.ndarray        #: bool[n] degraded inference mode after the tick
    batch_seconds: float        #: wall time of the step_batch call (s)


@attrs.frozen
class MalformedTelemetry:
    """Records a source skipped as unreadable since the last report."""

    count: int


@attrs.frozen
class SnapshotTelemetry:
    """One snapshot write of the service's states (``ok`` False: it failed, ``error`` says why)."""

    assets: int
    seconds: float
    ok: bool
    error: str | None = None


@attrs.frozen
class ParityHashTelemetry:
    """SHA-256 of the weights of every asset, every ``telemetry_hash_interval_steps`` ticks
    (model.md §6): two replicas fed the same ticks report the same digest at the same step."""

    step: int
    digest: str


@attrs.frozen
class DeviceMemoryTelemetry:
    """Accelerator memory in use and in total (bytes), as the device reports it."""

    device: str
    used_bytes: int
    total_bytes: int


@attrs.frozen
class ShutdownTelemetry:
    """A shutdown: ``graceful`` when it finished within the grace period; ``residual_observations``
    the ticks read but not applied when it ended (0 after a graceful one)."""

    graceful: bool
    seconds: float
    residual_observations: int


TelemetryRecord = (TickTelemetry | MalformedTelemetry | SnapshotTelemetry | ParityHashTelemetry
                   | DeviceMemoryTelemetry | ShutdownTelemetry)


@runtime_checkable
class TelemetrySink(Protocol):
    """Consumes telemetry records, on the queue's thread (never on the tick's)."""

    name: str

    def publish(self, records: Sequence[TelemetryRecord]) -> None:
        """Handle ``records`` in order. May be slow; it only delays this sink's own queue."""
        ...


__all__ = ["DeviceMemoryTelemetry", "MalformedTelemetry", "ParityHashTelemetry", "ShutdownTelemetry",
           "SnapshotTelemetry", "TelemetryRecord", "TelemetrySink", "TickTelemetry"]
