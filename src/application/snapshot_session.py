"""The snapshot session of one stateful predictor: saves (now or in the background), loads, the
emergency dump, and the bounded history of storage events.

The session sees its predictor only through a :class:`SnapshotSubject` (config, kernel names, a
state getter and setter) and reaches storage only through the :class:`SnapshotStores` the
composition root supplies (``usp.composition``); it imports no adapter.
"""

from __future__ import annotations

import collections
import datetime as _dt
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import attrs

from ..domain import IntegrityError, PredictorConfig
from ..domain._core import CoreState, ReportLayout
from ..ports.state_store import (
    DIGEST_HEX_LEN,
    CorruptedSnapshotEvent,
    EventCallback,
    InsufficientStorageError,
    InsufficientStorageEvent,
    SnapshotKeyError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
    StateStore,
    StoreEvent,
)
from .emergency_dump import dump_meta, dump_path, write_atomically
from .snapshot import encode_snapshot
from .snapshot_payload import decode_payload, payload_to_state, state_to_payload
from .snapshot_writer import SnapshotJob, SnapshotReceipt, SnapshotWriter

logger = logging.getLogger("usp.persistence")

STORAGE_EVENT_HISTORY = 256   # storage events kept on a predictor
PathOrKey = str | os.PathLike[str]


@attrs.frozen
class SnapshotStores:
    """The storage adapters of a snapshot session, chosen by the composition root.

    Attributes:
        for_bare_keys: ``(on_event) -> StateStore``: the store of snapshots named by a bare key
            (``[io] storage_kind``; a file store under ``snapshot_path`` by default). Called once,
            on first use.
        for_directory: ``(root, on_event) -> StateStore``: a file store rooted at ``root``, for
            snapshots named by a path. Called once per root.
        check_key: ``(key) -> key``: the stores' key rule (raises ``SnapshotKeyError``); the
            emergency dump's asset id obeys it, as it becomes part of a file name.
    """

    for_bare_keys: Callable[[EventCallback], StateStore]
    for_directory: Callable[[str, EventCallback], StateStore]
    check_key: Callable[[str], str]


@attrs.frozen
class SnapshotSubject:
    """What a session reads and writes of its predictor.

    Attributes:
        config: the config written into every snapshot and checked on load.
        kernel_names: the order of ``state.kernels``.
        get_state: ``() -> CoreState``: the current state (one asset), never waiting on a tick.
        set_state: ``(state) -> None``: replace it (a restore), after any tick in progress.
        kernel_reports: the kernels' report layout (``domain._core.report_layout``).
    """

    config: PredictorConfig
    kernel_names: tuple[str, ...]
    get_state: Callable[[], CoreState]
    set_state: Callable[[CoreState], None]
    kernel_reports: ReportLayout = None


class SnapshotSession:
    """Persistence of one predictor's state (``UniversalPredictor`` makes one and delegates to it).

    Without ``store``, ``path_or_key`` names a file-store location: a path (it contains a
    separator, or is a ``PathLike``) means root = its parent directory and key = its name; a bare
    key names a snapshot in the store of ``[io] storage_kind`` (a file store under
    ``config.snapshot_path`` by default). A path with a ``..`` component is refused
    (:class:`~usp.ports.state_store.SnapshotKeyError`), so a path built from an asset id cannot
    climb out of its directory; untrusted ids belong in ``store`` keys, which are single plain
    names. With ``store``, ``path_or_key`` is the store key. The default stores report their
    events here; give a store of your own ``on_event=session.record`` to see its corruption
    events too (its write failures are recorded here either way).
    """

    def __init__(self, subject: SnapshotSubject, stores: SnapshotStores) -> None:
        self._subject = subject
        self._stores = stores
        self.events: collections.deque[StoreEvent] = collections.deque(maxlen=STORAGE_EVENT_HISTORY)
        self._lock = threading.Lock()
        self._directory_stores: dict[str, StateStore] = {}
        self._bare_key_store: StateStore | None = None
        self._writer: SnapshotWriter | None = None

    # -- events -----------------------------------------------------------------------------
    def record(self, event: StoreEvent) -> None:
        """Keep a storage event (the default stores' ``on_event``; pass it to your own store)."""
        self.events.append(event)

    def _hears(self, store: StateStore | None) -> bool:
        callback = getattr(store, "on_event", None)
        return callback is not None and callback == self.record

    def _report_write_failure(self, store: StateStore | None, key: str, exc: BaseException, size: int,
                              location: str | None = None) -> None:
        if isinstance(exc, SnapshotWriteError) and self._hears(store):
            return  # the store already reported it here
        location = location or f"{type(store).__name__}:{key}"
        event: StoreEvent = (InsufficientStorageEvent(key, location, size, None)
                             if isinstance(exc, InsufficientStorageError) else
                             SnapshotWriteFailedEvent(key, location, f"{type(exc).__name__}: {exc}",
                                                      getattr(exc, "errno", None)))
        logger.error("%s: %s", type(event).__name__, event)
        self.record(event)

    # -- stores -----------------------------------------------------------------------------
    def resolve(self, path_or_key: PathOrKey, store: StateStore | None) -> tuple[StateStore, str]:
        """The store and key a ``path_or_key`` designates (rules in the class doc).

        :raises SnapshotKeyError: a path with a ``..`` component (the store checks keys itself).
        """
        text = os.fspath(path_or_key)
        if store is not None:
            return store, text
        if not (isinstance(path_or_key, os.PathLike) or "/" in text or (os.altsep and os.altsep in text)):
            with self._lock:
                if self._bare_key_store is None:
                    self._bare_key_store = self._stores.for_bare_keys(self.record)
                return self._bare_key_store, text
        if ".." in Path(text).parts:
            raise SnapshotKeyError(f"refusing snapshot path {text!r}: a '..' component could leave "
                                   "the snapshot directory; pass an asset id from outside as a store "
                                   "key instead (save_snapshot(asset_id, store=FileStore(root)))")
        root, key = str(Path(text).parent), Path(text).name
        with self._lock:
            if root not in self._directory_stores:
                self._directory_stores[root] = self._stores.for_directory(root, self.record)
            return self._directory_stores[root], key

    # -- save / load ------------------------------------------------------------------------
    def _capture(self) -> tuple[CoreState, int]:
        # An immutable pytree: a reference is a consistent snapshot, as long as the step never
        # donates its input buffers (it does not; donating would require a copy here).
        return self._subject.get_state(), time.time_ns()

    def _encode(self, state: CoreState, **options) -> bytes:
        subject = self._subject
        return encode_snapshot(state_to_payload(subject.config, subject.kernel_names, state,
                                                reports=subject.kernel_reports, **options))

    def _write(self, job: SnapshotJob) -> SnapshotReceipt:
        state, stamp = job.capture
        blob = self._encode(state, timestamp_ns=stamp)
        try:
            job.store.save(job.key, blob)
        except Exception as exc:
            self._report_write_failure(job.store, job.key, exc, len(blob))
            job.reported = True
            raise
        digest = blob[-DIGEST_HEX_LEN:].decode("ascii")
        return SnapshotReceipt(job.key, len(blob), digest, stamp, job.requests)

    def save(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> SnapshotReceipt:
        """Encode and write the current state now (the caller waits for the store).

        :raises SnapshotWriteError: (or ``InsufficientStorageError``) the write failed; the event
            is in ``events``, earlier snapshots and the in-memory state are untouched.
        """
        store, key = self.resolve(path_or_key, store)
        return self._write(SnapshotJob(store, key, self._capture()))

    def save_nonblocking(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> Future:
        """Capture the state and return at once; a worker encodes and writes it.

        The Future gives a :class:`SnapshotReceipt`, or the write's exception (also recorded in
        ``events`` and logged; the predictor keeps running in memory). See
        :class:`~.snapshot_writer.SnapshotWriter` for coalescing and the bound.
        """
        store, key = self.resolve(path_or_key, store)
        with self._lock:  # held while submitting (never waits on I/O) so close() cannot interleave
            if self._writer is None:
                self._writer = SnapshotWriter(self._write, self._failed)
            return self._writer.submit(store, key, self._capture())

    def _failed(self, job: SnapshotJob, exc: BaseException) -> None:
        if not job.reported:  # refused, or failed before reaching the store
            self._report_write_failure(job.store, job.key, exc, 0)
        logger.error("non-blocking snapshot %r failed (%s); the predictor continues in memory", job.key, exc)
        if not job.future.done():
            job.future.set_exception(exc)

    def load(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> bool:
        """Restore the newest valid snapshot: True; none valid (cold start, state unchanged): False.

        Corrupt versions are skipped by the store (``CorruptedSnapshotEvent`` in ``events``).

        :raises IntegrityError: the bytes the store returned fail the digest or are malformed.
        :raises ValueError: other schema version, or incompatible config (keys named).
        :raises SnapshotReadError: the store could not be read at all.
        """
        store, key = self.resolve(path_or_key, store)
        blob = store.load(key)
        subject = self._subject
        if blob is None:
            logger.warning("no valid snapshot for %r: cold start (state unchanged)", key)
            return False
        try:
            payload = decode_payload(subject.config, blob)
        except IntegrityError as exc:
            self.record(CorruptedSnapshotEvent(key, f"{type(store).__name__}:{key}", str(exc)))
            raise
        restored = payload_to_state(subject.config, subject.get_state(), payload, kernel_names=subject.kernel_names)
        subject.set_state(restored)
        return True

    def emergency_dump(self, directory: str | os.PathLike[str] | None = None, asset_id: str = "asset", *,
                       reason: str = "emergency") -> Path:
        """Write the forensic snapshot of spec §16 (``usp.application.emergency_dump``) of the
        current state; returns the file's path. ``directory`` defaults to
        ``~/predictor_emergency_dumps``.

        :raises SnapshotKeyError: ``asset_id`` is not a valid store key (no path separators).
        :raises SnapshotWriteError: the file could not be written (event recorded).
        """
        now = _dt.datetime.now(_dt.UTC)
        self._stores.check_key(asset_id)
        state = self._subject.get_state()
        meta = dump_meta(state.last_output, len(self._subject.kernel_names), asset_id, reason, now)
        blob = self._encode(state, meta=meta)
        path = dump_path(directory, asset_id, now)
        try:
            write_atomically(path, blob)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            error = (InsufficientStorageError if full else SnapshotWriteError)(exc.errno, str(exc), str(path))
            self._report_write_failure(None, asset_id, error, len(blob), str(path))
            raise error from exc
        logger.critical("Emergency dump saved to %s for forensic analysis", path)
        return path

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the non-blocking saves in flight and stop the workers (True when all finished).

        A later non-blocking save starts a new writer.
        """
        with self._lock:
            writer, self._writer = self._writer, None
        return True if writer is None else writer.close(timeout)


__all__ = ["STORAGE_EVENT_HISTORY", "PathOrKey", "SnapshotSession", "SnapshotStores", "SnapshotSubject"]
