"""Non-blocking snapshot writes: a bounded pool that coalesces requests per (store, key).

A request captures the state (an immutable pytree: a reference is a consistent copy) and its
time; a worker encodes and writes it later through the write function it was built with.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import attrs

from ..domain._core import CoreState
from ..ports.state_store import SnapshotWriteError, StateStore

SNAPSHOT_WORKERS = 2          # threads writing non-blocking snapshots
MAX_PENDING_KEYS = 8          # keys with a non-blocking write in flight (beyond: refused, never waited on)
MIN_WRITE_INTERVAL_S = 0.01   # back-to-back non-blocking writes of one key start this far apart


@attrs.frozen
class SnapshotReceipt:
    """What a save wrote: the key, blob size, SHA-256 hex of the payload, the state's capture time
    (ns) and how many requests it served (> 1 when non-blocking requests were coalesced)."""

    key: str
    size_bytes: int
    digest: str
    timestamp_ns: int
    requests: int = 1


@attrs.define
class SnapshotJob:
    """One write request: where to, the captured ``(state, capture time ns)``, and its Future."""

    store: StateStore
    key: str
    capture: tuple[CoreState, int]
    future: Future = attrs.field(factory=Future)
    requests: int = 1
    reported: bool = False  # the write failure is already in the events


class SnapshotWriter:
    """Bounded background writes on ``workers`` threads. Per (store, key): one write at a time and
    at most one request waiting; a newer request replaces the waiting one's state and shares its
    Future (the newest state is written, snapshots are never reordered), and back-to-back writes
    start ``min_interval_s`` apart (bounding the writer's share of the GIL). At most
    ``max_pending`` keys in flight: beyond, a request is refused at once (failed Future).
    Submitting never waits on I/O."""

    def __init__(self, write: Callable[[SnapshotJob], SnapshotReceipt],
                 failed: Callable[[SnapshotJob, BaseException], None], workers: int = SNAPSHOT_WORKERS,
                 max_pending: int = MAX_PENDING_KEYS, min_interval_s: float = MIN_WRITE_INTERVAL_S) -> None:
        self._write, self._failed = write, failed
        self.max_pending, self.min_interval_s = max_pending, min_interval_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usp-snapshot")
        self._idle = threading.Condition()
        self._slots: dict[tuple[int, str], SnapshotJob | None] = {}  # key in flight → its waiting request
        self._closed = False

    def submit(self, store: StateStore, key: str, capture: tuple[CoreState, int]) -> Future:
        ident = (id(store), key)
        with self._idle:
            if self._closed:
                raise RuntimeError("the predictor's snapshot writer is closed")
            waiting = self._slots.get(ident)
            if waiting is not None and not waiting.future.cancelled():  # coalesce: newest state wins
                waiting.capture, waiting.requests = capture, waiting.requests + 1
                return waiting.future
            job = SnapshotJob(store, key, capture)
            if ident not in self._slots:
                if len(self._slots) >= self.max_pending:
                    self._failed(job, SnapshotWriteError(errno.EBUSY, f"snapshot {key!r} refused: "
                                                         f"{self.max_pending} keys are being written"))
                    return job.future
                self._executor.submit(self._run, ident, 0.0)
            self._slots[ident] = job
            return job.future

    def _run(self, ident: tuple[int, str], not_before: float) -> None:
        delay = not_before - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the request stays open to coalescing meanwhile
        with self._idle:
            job, self._slots[ident] = self._slots[ident], None
        started = time.monotonic()
        if job is not None and job.future.set_running_or_notify_cancel():
            try:
                job.future.set_result(self._write(job))
            except BaseException as exc:  # reported, never raised into the pool
                self._failed(job, exc)
        with self._idle:
            waiting = self._slots[ident]
            if waiting is not None:
                try:
                    self._executor.submit(self._run, ident, started + self.min_interval_s)
                    return
                except RuntimeError as exc:  # shut down by a close() that timed out
                    self._failed(waiting, SnapshotWriteError(errno.ESHUTDOWN, f"snapshot {waiting.key!r} "
                                                             f"dropped: {exc}"))
            del self._slots[ident]
            self._idle.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, wait for those in flight; True when all finished in time."""
        with self._idle:
            self._closed = True
            drained = self._idle.wait_for(lambda: not self._slots, timeout)
        self._executor.shutdown(wait=drained)
        return drained


__all__ = ["MAX_PENDING_KEYS", "MIN_WRITE_INTERVAL_S", "SNAPSHOT_WORKERS", "SnapshotJob", "SnapshotReceipt",
           "SnapshotWriter"]
