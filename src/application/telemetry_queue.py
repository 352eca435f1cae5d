"""``TelemetryQueue``: the bounded, never-blocking hand-off from the tick path to telemetry sinks.

Each sink gets its own bounded queue (``maxlen`` records, ``[io] telemetry_buffer_maxlen``) and
its own daemon worker thread, so a slow sink only delays itself. :meth:`TelemetryQueue.offer`
is called on the tick's thread (or any other): it appends the record to every sink's queue
under a short lock and returns at once. A record that does not fit a sink's queue is *dropped
for that sink* and counted; nothing is ever lost silently.

Invariant, per sink, at any moment: ``offered == delivered + failed + dropped + pending``, where
``delivered`` counts records whose ``publish`` call returned, ``failed`` those whose ``publish``
raised (the exception is logged on the ``usp.telemetry`` logger and the worker carries on),
``dropped`` those that did not fit (or came after :meth:`close`), and ``pending`` those queued
or being published. After ``close`` returns True, ``pending`` is 0 for every sink.

Workers hand a sink lists of records, in offer order: as many as are queued, up to
``batch_size``.

:class:`AssetTable` is the bookkeeping sinks share: the latest mode, flags and kernel weights of
each asset seen in ``TickTelemetry`` records, as arrays indexed by a slot per asset.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence

import attrs
import numpy as np

from ..ports.telemetry import TelemetryRecord, TelemetrySink, TickTelemetry

logger = logging.getLogger("usp.telemetry")

__all__ = ["AssetTable", "AssetUpdate", "TelemetryQueue"]


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


class _Lane:
    """One sink's queue, counters and worker thread (all counters guarded by ``cond``)."""

    def __init__(self, sink: TelemetrySink, maxlen: int, batch_size: int) -> None:
        self.sink = sink
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.cond = threading.Condition(threading.Lock())
        self.queue: collections.deque[TelemetryRecord] = collections.deque()
        self.closed = False
        self.in_flight = 0
        self.offered = self.delivered = self.failed = self.dropped = 0
        self.thread = threading.Thread(target=self._work, name=f"usp-telemetry-{sink.name}", daemon=True)

    def offer(self, record: TelemetryRecord) -> None:
        with self.cond:
            self.offered += 1
            if self.closed or len(self.queue) >= self.maxlen:
                self.dropped += 1
                dropped = self.dropped
            else:
                self.queue.append(record)
                self.cond.notify()
                return
        if _is_power_of_ten(dropped):  # 1, 10, 100, ...: a bounded number of lines
            logger.warning("telemetry sink %r: %d records dropped so far (queue full at %d)",
                           self.sink.name, dropped, self.maxlen)

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if not self.queue:
                    return
                count = min(len(self.queue), self.batch_size)
                batch = [self.queue.popleft() for _ in range(count)]
                self.in_flight = count
            ok = True
            try:
                self.sink.publish(batch)
            except Exception:
                ok = False
                logger.exception("telemetry sink %r failed to publish %d records", self.sink.name, count)
            with self.cond:
                self.in_flight = 0
                if ok:
                    self.delivered += count
                else:
                    self.failed += count
                self.cond.notify_all()

    def pending(self) -> int:
        with self.cond:
            return len(self.queue) + self.in_flight


class TelemetryQueue:
    """One bounded queue and one daemon worker per sink.

    Args:
        sinks: the telemetry sinks; their ``name`` attributes must be distinct.
        maxlen: records each sink's queue holds (>= 1); ``[io] telemetry_buffer_maxlen``.
        batch_size: most records handed to one ``publish`` call (>= 1).

    Raises:
        ValueError: ``maxlen`` or ``batch_size`` below 1, or two sinks with one name.
    """

    def __init__(self, sinks: Sequence[TelemetrySink], maxlen: int, *, batch_size: int = 256) -> None:
        if maxlen < 1:
            raise ValueError(f"telemetry_buffer_maxlen must be >= 1, got {maxlen}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"telemetry sink names must be distinct, got {names}")
        self.maxlen = int(maxlen)
        self._lanes = {sink.name: _Lane(sink, self.maxlen, batch_size) for sink in sinks}
        for lane in self._lanes.values():
            lane.thread.start()

    @property
    def names(self) -> tuple[str, ...]:
        """The sink names, in the order given."""
        return tuple(self._lanes)

    def offer(self, record: TelemetryRecord) -> None:
        """Queue ``record`` for every sink; never blocks beyond a short lock. A sink whose queue
        is full (or a queue already closed) drops it and counts the drop."""
        for lane in self._lanes.values():
            lane.offer(record)

    def _counts(self, field: str) -> dict[str, int]:
        out = {}
        for name, lane in self._lanes.items():
            with lane.cond:
                out[name] = int(getattr(lane, field))
        return out

    def dropped(self) -> dict[str, int]:
        """Records dropped so far, per sink name."""
        return self._counts("dropped")

    def dropped_total(self) -> int:
        """Records dropped so far, summed over the sinks (a record dropped by two sinks counts twice)."""
        return sum(self.dropped().values())

    def offered(self) -> dict[str, int]:
        """Records offered so far, per sink name (the same for every sink)."""
        return self._counts("offered")

    def delivered(self) -> dict[str, int]:
        """Records whose ``publish`` call returned, per sink name."""
        return self._counts("delivered")

    def failed(self) -> dict[str, int]:
        """Records whose ``publish`` call raised (logged), per sink name."""
        return self._counts("failed")

    def pending(self) -> dict[str, int]:
        """Records queued or being published, per sink name."""
        return {name: lane.pending() for name, lane in self._lanes.items()}

    def close(self, timeout_s: float) -> bool:
        """Stop accepting (later offers are dropped and counted), let every worker publish what
        is queued, and wait up to ``timeout_s`` seconds in all. Returns True when every sink
        drained in time; False leaves the late workers running (daemon threads) and may be
        called again to keep waiting."""
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        for lane in self._lanes.values():
            with lane.cond:
                lane.closed = True
                lane.cond.notify_all()
        for lane in self._lanes.values():
            lane.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(lane.thread.is_alive() for lane in self._lanes.values())


@attrs.frozen(eq=False)
class AssetUpdate:
    """What one ``TickTelemetry`` record changed: per distinct asset of the record (in order of
    first appearance), its flags before (False for an asset not seen before) and after its last
    row in the record."""

    assets: tuple[str, ...]
    emergency_before: np.ndarray  #: bool[m]
    emergency_after: np.ndarray   #: bool[m]
    degraded_before: np.ndarray   #: bool[m]
    degraded_after: np.ndarray    #: bool[m]


class AssetTable:
    """The latest state of every asset seen: ``modes`` (int8, OperatingMode codes), ``emergency``
    and ``degraded`` (bool), ``weights`` (float64[assets, kernels], in ``kernel_names`` order),
    each indexed by the asset's slot (``slots``: asset id -> row, in order of first sight).

    Not thread-safe: one sink's worker updates it; readers on other threads copy under the
    sink's own lock. When a record names other kernels than the table holds, the weights of
    assets not updated since are NaN (unknown), never mixed across layouts.
    """

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.kernel_names: tuple[str, ...] = ()
        self._modes = np.zeros(0, np.int8)
        self._emergency = np.zeros(0, bool)
        self._degraded = np.zeros(0, bool)
        self._weights = np.zeros((0, 0))

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def modes(self) -> np.ndarray:
        return self._modes[:len(self.slots)]

    @property
    def emergency(self) -> np.ndarray:
        return self._emergency[:len(self.slots)]

    @property
    def degraded(self) -> np.ndarray:
        return self._degraded[:len(self.slots)]

    @property
    def weights(self) -> np.ndarray:
        return self._weights[:len(self.slots)]

    def _grow(self, needed: int, kernels: int) -> None:
        capacity = self._modes.shape[0]
        if needed > capacity:
            capacity = max(needed, 2 * capacity, 64)
            n = len(self._modes)
            self._modes = np.concatenate([self._modes, np.zeros(capacity - n, np.int8)])
            self._emergency = np.concatenate([self._emergency, np.zeros(capacity - n, bool)])
            self._degraded = np.concatenate([self._degraded, np.zeros(capacity - n, bool)])
            self._weights = np.concatenate([self._weights, np.full((capacity - n, self._weights.shape[1]), np.nan)])
        if self._weights.shape[1] != kernels:
            self._weights = np.full((self._modes.shape[0], kernels), np.nan)

    def update(self, record: TickTelemetry) -> AssetUpdate:
        """Take each asset's last row of ``record`` as its latest state (rows are in tick order)."""
        if not record.assets:
            empty = np.zeros(0, bool)
            return AssetUpdate((), empty, empty, empty, empty)
        last = dict(zip(record.assets, range(len(record.assets)), strict=True))  # later rows win
        names = tuple(last)
        rows = np.fromiter(last.values(), np.intp, len(last))
        seen = len(self.slots)
        if not self.slots.keys() >= last.keys():  # new assets take the next slots, in order of first sight
            for name in names:
                self.slots.setdefault(name, len(self.slots))
        slots = np.fromiter(map(self.slots.__getitem__, names), np.intp, len(names))
        if record.kernel_names != self.kernel_names:
            self._weights = np.zeros((self._weights.shape[0], 0))
            self.kernel_names = record.kernel_names
        self._grow(len(self.slots), len(record.kernel_names))
        fresh = slots >= seen
        emergency_before = np.where(fresh, False, self._emergency[slots])
        degraded_before = np.where(fresh, False, self._degraded[slots])
        self._modes[slots] = np.asarray(record.modes)[rows]
        self._emergency[slots] = np.asarray(record.emergency, bool)[rows]
        self._degraded[slots] = np.asarray(record.degraded, bool)[rows]
        self._weights[slots] = np.asarray(record.weights, np.float64)[rows]
        return AssetUpdate(names, emergency_before, self._emergency[slots].copy(), degraded_before,
                           self._degraded[slots].copy())
