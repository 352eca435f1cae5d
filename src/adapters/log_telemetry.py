"""Logging telemetry sink: what deserves a human's attention, through the ``logging`` module.

Never one line per tick in normal operation: :class:`LoggingTelemetry` writes at most a few
lines per ``TickTelemetry`` record (one micro-batch), and only when something happened:

=========================================  ========  ==========================================
what                                       level     line
=========================================  ========  ==========================================
rejected ticks in a batch                  WARNING   one summary: count per reason
regime changes in a batch                  INFO      count and the assets (first 10 named)
assets entering emergency mode             WARNING   count and assets
assets leaving emergency mode              INFO      count and assets
assets entering degraded inference mode    WARNING   count and assets
assets leaving degraded inference mode     INFO      count and assets
unreadable source records                  WARNING   count
snapshot failure                           ERROR     the error
snapshot written                           DEBUG     assets and seconds
parity hash                                DEBUG     step and digest
device memory crossing 85% / 95%           WARNING / ERROR (INFO when back under 85%)
shutdown                                   INFO (graceful) / WARNING (not graceful)
=========================================  ========  ==========================================

Device memory is logged on level changes only (per device), not at every reading. An asset's
first tick counts as a transition from "not in emergency / degraded mode".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

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
from .device_memory import memory_level
from .prometheus import REJECTION_REASONS

__all__ = ["LoggingTelemetry", "name_some"]

#: Most asset ids one line names.
NAMED = 10


def name_some(assets: Sequence[str], limit: int = NAMED) -> str:
    """``a, b, c`` or ``a, b, … and 7 more``: at most ``limit`` ids, repr-quoted."""
    shown = ", ".join(repr(a) for a in assets[:limit])
    return shown if len(assets) <= limit else f"{shown} and {len(assets) - limit} more"


class LoggingTelemetry:
    """Telemetry sink that logs to ``logger`` (default: the ``usp.telemetry`` logger)."""

    name = "logging"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("usp.telemetry")
        self._table = AssetTable()
        self._memory_levels: dict[str, int] = {}

    def publish(self, records: Sequence[TelemetryRecord]) -> None:
        """Log what ``records`` say that needs attention, in order.

        Raises:
            TypeError: a record of an unknown type (the records before it are logged).
        """
        log = self.logger
        for record in records:
            if isinstance(record, TickTelemetry):
                self._tick(record)
            elif isinstance(record, MalformedTelemetry):
                if record.count:
                    log.warning("%d unreadable source records skipped", record.count)
            elif isinstance(record, SnapshotTelemetry):
                if record.ok:
                    log.debug("snapshot of %d assets written in %.3f s", record.assets, record.seconds)
                else:
                    log.error("snapshot of %d assets failed after %.3f s: %s", record.assets, record.seconds,
                              record.error or "unknown error")
            elif isinstance(record, ParityHashTelemetry):
                log.debug("parity hash at step %d: %s", record.step, record.digest)
            elif isinstance(record, DeviceMemoryTelemetry):
                self._memory(record)
            elif isinstance(record, ShutdownTelemetry):
                if record.graceful:
                    log.info("graceful shutdown completed in %.2f s", record.seconds)
                else:
                    log.warning("shutdown was not graceful: %.2f s, %d observations not applied", record.seconds,
                                record.residual_observations)
            else:
                raise TypeError(f"not a telemetry record: {type(record).__name__}")

    def _tick(self, record: TickTelemetry) -> None:
        if not record.assets:
            return
        log = self.logger
        events = np.asarray(record.events, np.int64)
        counts = {reason: int(np.count_nonzero(events & bit)) for reason, bit in REJECTION_REASONS.items()}
        rejected = int(np.count_nonzero(events & int(EventCode.rejected())))
        if rejected:
            log.warning("%d of %d ticks rejected (%s)", rejected, len(events),
                        ", ".join(f"{reason} {n}" for reason, n in counts.items() if n))
        regime_rows = np.flatnonzero(events & int(EventCode.REGIME_CHANGED))
        if regime_rows.size:
            assets = list(dict.fromkeys(record.assets[i] for i in regime_rows))
            log.info("%d regime changes: %s", regime_rows.size, name_some(assets))
        update = self._table.update(record)
        for flag, before, after in (("emergency mode", update.emergency_before, update.emergency_after),
                                    ("degraded inference mode", update.degraded_before, update.degraded_after)):
            entered = [update.assets[i] for i in np.flatnonzero(after & ~before)]
            left = [update.assets[i] for i in np.flatnonzero(before & ~after)]
            if entered:
                log.warning("%d assets entered %s: %s", len(entered), flag, name_some(entered))
            if left:
                log.info("%d assets left %s: %s", len(left), flag, name_some(left))

    def _memory(self, record: DeviceMemoryTelemetry) -> None:
        level = memory_level(record.used_bytes, record.total_bytes)
        previous = self._memory_levels.get(record.device, 0)
        self._memory_levels[record.device] = level
        if level == previous:
            return
        share = 100.0 * record.used_bytes / record.total_bytes if record.total_bytes > 0 else 0.0
        if level == 2:
            self.logger.error("device %s memory critical: %.1f%% in use (%d of %d bytes)", record.device, share,
                              record.used_bytes, record.total_bytes)
        elif level == 1:
            self.logger.warning("device %s memory elevated: %.1f%% in use (%d of %d bytes)", record.device, share,
                                record.used_bytes, record.total_bytes)
        else:
            self.logger.info("device %s memory back to normal: %.1f%% in use", record.device, share)
