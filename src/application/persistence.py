"""Predictor persistence: ``CoreState`` ⇄ snapshot payloads, and the predictors' save/load API.

* :func:`state_to_payload` / :func:`payload_to_state` map one asset's state onto the codec's
  layout (``usp.application.snapshot``): the ``global`` block holds every ``CoreState`` field but
  ``kernels``, and ``kernels`` holds one block per kernel name. Telemetry and flags are derived
  from the state (informational: a restore reads only the blocks). ``dgm_entropy`` is NaN: no
  DGM kernel reports an entropy yet, and 0.0 would read as a mode collapse.
* :func:`save_states` / :func:`load_states` serve ``FunctionalPredictor`` (one asset or a batch).
* :class:`PredictorSnapshots` serves ``UniversalPredictor``: synchronous and non-blocking saves,
  loads, the emergency forensic dump (spec §16) and the bounded ``storage_events`` history.

Loading checks the digest, the schema version and :data:`COMPATIBILITY_KEYS` (the config values
that fix the state's shapes or meaning), in that order. See docs/persistence.md.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import errno
import functools
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import jax
import numpy as np

from ..domain import IntegrityError, PredictorConfig
from ..domain._core import CoreState, Out
from ..ports.state_store import (
    DIGEST_HEX_LEN,
    CorruptedSnapshotEvent,
    InsufficientStorageError,
    InsufficientStorageEvent,
    SnapshotKeyError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
    StateStore,
    StoreEvent,
)
from .snapshot import blocks_to_pytree, decode_snapshot, encode_snapshot, pytree_to_blocks

if TYPE_CHECKING:
    from .predictors import FunctionalPredictor, UniversalPredictor

logger = logging.getLogger("usp.persistence")

#: Config keys a snapshot must share with the predictor loading it (they fix shapes or meaning).
COMPATIBILITY_KEYS = ("float_precision", "enabled_kernels", "window_size", "kurtosis_window",
                      "wtmm_buffer_size", "kernel_a_order", "kernel_a_mode", "kernel_a_rkhs_points",
                      "log_sig_depth", "kernel_c_jump_max_events", "koopman_top_k")
SNAPSHOT_WORKERS = 2          # threads writing non-blocking snapshots
MAX_PENDING_KEYS = 8          # keys with a non-blocking write in flight (beyond: refused, never waited on)
MIN_WRITE_INTERVAL_S = 0.01   # back-to-back non-blocking writes of one key start this far apart
STORAGE_EVENT_HISTORY = 256   # storage events kept on a predictor
DUMP_DIRECTORY = "~/predictor_emergency_dumps"
PathOrKey = str | os.PathLike[str]


# -- payloads ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _config_values(config: PredictorConfig) -> dict[str, Any]:
    return attrs.asdict(config)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _leaf_to_host(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)  # per leaf: several times cheaper than jax.device_get on a tree
    return leaf


def to_host(state: Any) -> Any:
    """``state`` with NumPy leaves (typed PRNG keys as their uint32 data); NumPy leaves kept."""
    return jax.tree_util.tree_map(_leaf_to_host, state)


def state_to_payload(config: PredictorConfig, kernel_names: Sequence[str], state: CoreState, *,
                     timestamp_ns: int | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The codec payload of one asset's state (JAX leaves are copied to the host once)."""
    host = to_host(state)
    if np.ndim(host.last_output) != 1:
        raise ValueError("state_to_payload takes one asset's state; save a batched state with one key "
                         "per row (FunctionalPredictor.save_states)")
    if len(host.kernels) != len(kernel_names):
        raise ValueError(f"state has {len(host.kernels)} kernel blocks for kernels {list(kernel_names)}")
    out = np.asarray(host.last_output, dtype=np.float64)
    return {
        "schema_version": config.schema_version,
        "timestamp": time.time_ns() if timestamp_ns is None else int(timestamp_ns),
        "config": dict(_config_values(config)),
        "global": pytree_to_blocks(attrs.evolve(host, kernels=())),
        "telemetry": {"kurtosis": float(out[Out.KURTOSIS]), "dgm_entropy": math.nan,
                      "adaptive_threshold": float(out[Out.THRESHOLD])},
        "flags": {"degraded_inference": bool(out[Out.DEGRADED]), "emergency": bool(host.emergency),
                  "regime_change": bool(out[Out.REGIME_CHANGE]), "mode_collapse": False},
        "kernels": {name: pytree_to_blocks(block) for name, block in zip(kernel_names, host.kernels,
                                                                          strict=True)},
        "meta": {"kernel_names": list(kernel_names), **(meta or {})},
    }


def check_compatible(config: PredictorConfig, stored: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every :data:`COMPATIBILITY_KEYS` value that differs."""
    current = {k: _plain(getattr(config, k)) for k in COMPATIBILITY_KEYS if hasattr(config, k)}
    differ = [k for k, v in current.items() if stored.get(k, "<absent>") != v]
    if differ:
        details = ", ".join(f"{k}: snapshot={stored.get(k, '<absent>')!r}, current={current[k]!r}"
                            for k in differ)
        raise ValueError(f"snapshot was made with an incompatible configuration ({details})")


def payload_to_state(config: PredictorConfig, template_state: CoreState, payload: dict[str, Any], *,
                     kernel_names: Sequence[str] | None = None) -> CoreState:
    """Rebuild a state of ``template_state``'s layout (and placement) from a decoded payload.

    ``kernel_names`` defaults to ``config.enabled_kernels`` (the order of ``state.kernels``).

    :raises ValueError: incompatible config (keys named), other kernels, or a block whose name,
        dtype or shape differs from the template's.
    """
    names = tuple(config.enabled_kernels if kernel_names is None else kernel_names)
    check_compatible(config, payload["config"])
    if sorted(payload["kernels"]) != sorted(names):
        raise ValueError(f"snapshot holds kernels {sorted(payload['kernels'])}, "
                         f"the predictor runs {list(names)}")
    restored = blocks_to_pytree(attrs.evolve(template_state, kernels=()), payload["global"])
    kernels = tuple(blocks_to_pytree(block, payload["kernels"][name])
                    for name, block in zip(names, template_state.kernels, strict=True))
    return attrs.evolve(restored, kernels=kernels)


def _decode(config: PredictorConfig, blob: bytes) -> dict[str, Any]:
    return decode_snapshot(blob, expected_schema=config.schema_version)


# -- FunctionalPredictor: one asset or a batch ------------------------------------------------------
def _rows(states: CoreState, count: int) -> list[CoreState]:
    host = to_host(states)
    size = jax.tree_util.tree_leaves(host)[0].shape[:1]
    if size != (count,):
        raise ValueError(f"{count} keys for a batched state of leading axis {size}")
    return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], host) for i in range(count)]


def save_states(predictor: FunctionalPredictor, store: StateStore, keys: str | Sequence[str],
                states: CoreState) -> None:
    """Save one asset (``keys`` a str) or a batch (one key per row of a batched state, one
    ``save_many``). Raises the store's ``SnapshotWriteError`` / ``InsufficientStorageError``."""
    config, names, stamp = predictor.config, predictor.kernel_names, time.time_ns()
    if isinstance(keys, str):
        store.save(keys, encode_snapshot(state_to_payload(config, names, states, timestamp_ns=stamp)))
        return
    rows = _rows(states, len(keys))
    store.save_many({key: encode_snapshot(state_to_payload(config, names, row, timestamp_ns=stamp))
                     for key, row in zip(keys, rows, strict=True)})


def load_states(predictor: FunctionalPredictor, store: StateStore, keys: str | Sequence[str],
                template: CoreState | None = None) -> tuple[CoreState, bool | np.ndarray]:
    """Load one asset (``keys`` a str) or a batch (one ``load_many``): ``(states, restored)``.

    Keys without a valid snapshot keep the template's row (default: a cold ``init_state``);
    ``restored`` is a bool, or a bool array over the keys.

    :raises IntegrityError / ValueError: as :func:`payload_to_state` and the codec.
    """
    config, names = predictor.config, predictor.kernel_names
    if isinstance(keys, str):
        template = predictor.init_state() if template is None else template
        blob = store.load(keys)
        if blob is None:
            return template, False
        return payload_to_state(config, template, _decode(config, blob), kernel_names=names), True
    keys = list(keys)
    template = predictor.init_state(len(keys)) if template is None else template
    blobs = store.load_many(keys)
    rows = _rows(template, len(keys))
    restored = np.array([blobs.get(key) is not None for key in keys])
    for i, key in enumerate(keys):
        if restored[i]:
            rows[i] = payload_to_state(config, rows[i], _decode(config, blobs[key]), kernel_names=names)
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *rows)
    return blocks_to_pytree(template, pytree_to_blocks(stacked)), restored


# -- UniversalPredictor -----------------------------------------------------------------------------
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
class _Job:
    store: StateStore
    key: str
    capture: tuple[CoreState, int]
    future: Future = attrs.field(factory=Future)
    requests: int = 1
    reported: bool = False  # the write failure is already in the events


class _SnapshotWriter:
    """Bounded background writes on ``workers`` threads. Per (store, key): one write at a time and
    at most one request waiting; a newer request replaces the waiting one's state and shares its
    Future (the newest state is written, snapshots are never reordered), and back-to-back writes
    start ``min_interval_s`` apart (bounding the writer's share of the GIL). At most
    ``max_pending`` keys in flight: beyond, a request is refused at once (failed Future).
    Submitting never waits on I/O."""

    def __init__(self, write: Callable[[_Job], SnapshotReceipt],
                 failed: Callable[[_Job, BaseException], None], workers: int = SNAPSHOT_WORKERS,
                 max_pending: int = MAX_PENDING_KEYS, min_interval_s: float = MIN_WRITE_INTERVAL_S) -> None:
        self._write, self._failed = write, failed
        self.max_pending, self.min_interval_s = max_pending, min_interval_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usp-snapshot")
        self._idle = threading.Condition()
        self._slots: dict[tuple[int, str], _Job | None] = {}  # key in flight → its waiting request
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
            job = _Job(store, key, capture)
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


def _atomic_write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class PredictorSnapshots:
    """Persistence of one ``UniversalPredictor`` (one per predictor, see :func:`snapshots_of`).

    Without ``store``, ``path_or_key`` names a :class:`~usp.adapters.stores.FileStore` location:
    a path (it contains a separator, or is a ``PathLike``) means root = its parent directory and
    key = its name; a bare key means root = ``config.snapshot_path``. A path with a ``..``
    component is refused (:class:`~usp.ports.state_store.SnapshotKeyError`), so a path built from
    an asset id cannot climb out of its directory; untrusted ids belong in ``store`` keys, which
    are single plain names. With ``store``, ``path_or_key`` is the store key. The default file
    stores report their events here; give a store of your own
    ``on_event=predictor.record_storage_event`` to see its corruption events too (its write
    failures are recorded here either way).
    """

    def __init__(self, predictor: UniversalPredictor) -> None:
        self._predictor = predictor
        self.events: collections.deque[StoreEvent] = collections.deque(maxlen=STORAGE_EVENT_HISTORY)
        self._lock = threading.Lock()
        self._file_stores: dict[str, StateStore] = {}
        self._configured: StateStore | None = None  # the store of [io] storage_kind, when not "file"
        self._writer: _SnapshotWriter | None = None

    # -- events -----------------------------------------------------------------------------
    def record(self, event: StoreEvent) -> None:
        """Keep a storage event (the default stores' ``on_event``; pass it to your own store)."""
        self.events.append(event)

    def _hears(self, store: StateStore | None) -> bool:
        callback = getattr(store, "on_event", None)
        return callback is not None and callback in (self.record, getattr(self._predictor,
                                                                          "record_storage_event", None))

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
        if isinstance(path_or_key, os.PathLike) or "/" in text or (os.altsep and os.altsep in text):
            if ".." in Path(text).parts:
                raise SnapshotKeyError(f"refusing snapshot path {text!r}: a '..' component could leave "
                                       "the snapshot directory; pass an asset id from outside as a store "
                                       "key instead (save_snapshot(asset_id, store=FileStore(root)))")
            root, key = str(Path(text).parent), Path(text).name
        else:
            root, key = self._predictor.config.snapshot_path, text
            if self._predictor.config.storage_kind != "file":
                with self._lock:
                    if self._configured is None:
                        from ..container import store_for_config  # the container picks the adapter

                        self._configured = store_for_config(self._predictor.config, on_event=self.record)
                    return self._configured, key
        with self._lock:
            if root not in self._file_stores:
                from ..adapters.stores import FileStore  # the default adapter, as for the clock

                self._file_stores[root] = FileStore(root, on_event=self.record)
            return self._file_stores[root], key

    # -- save / load ------------------------------------------------------------------------
    def _capture(self) -> tuple[CoreState, int]:
        # An immutable pytree: a reference is a consistent snapshot, as long as the step never
        # donates its input buffers (it does not; donating would require a copy here).
        return self._predictor.state, time.time_ns()

    def _write(self, job: _Job) -> SnapshotReceipt:
        state, stamp = job.capture
        pred = self._predictor
        blob = encode_snapshot(state_to_payload(pred.config, pred.kernel_names, state, timestamp_ns=stamp))
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
        return self._write(_Job(store, key, self._capture()))

    def save_nonblocking(self, path_or_key: PathOrKey, *, store: StateStore | None = None) -> Future:
        """Capture the state and return at once; a worker encodes and writes it.

        The Future gives a :class:`SnapshotReceipt`, or the write's exception (also recorded in
        ``events`` and logged; the predictor keeps running in memory). See :class:`_SnapshotWriter`
        for coalescing and the bound.
        """
        store, key = self.resolve(path_or_key, store)
        with self._lock:  # held while submitting (never waits on I/O) so close() cannot interleave
            if self._writer is None:
                self._writer = _SnapshotWriter(self._write, self._failed)
            return self._writer.submit(store, key, self._capture())

    def _failed(self, job: _Job, exc: BaseException) -> None:
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
        pred = self._predictor
        if blob is None:
            logger.warning("no valid snapshot for %r: cold start (state unchanged)", key)
            return False
        try:
            payload = _decode(pred.config, blob)
        except IntegrityError as exc:
            self.record(CorruptedSnapshotEvent(key, f"{type(store).__name__}:{key}", str(exc)))
            raise
        pred.state = payload_to_state(pred.config, pred.state, payload, kernel_names=pred.kernel_names)
        return True

    def emergency_dump(self, directory: str | os.PathLike[str] | None = None, asset_id: str = "asset", *,
                       reason: str = "emergency") -> Path:
        """Write a forensic snapshot (spec §16) to ``<directory>/<asset_id>_emergency_<UTC>.msgpack``.

        The file is a full verified snapshot (``decode_snapshot`` reads it) whose ``meta`` adds the
        asset id, the reason, the time and the Hölder exponent, weights and distance to collapse
        of the last result. Written atomically (temp file, fsync, rename). ``directory`` defaults
        to ``~/predictor_emergency_dumps``.

        :raises ValueError: ``asset_id`` is not a valid store key (no path separators).
        :raises SnapshotWriteError: the file could not be written (event recorded).
        """
        from ..adapters.stores import check_key

        pred, now = self._predictor, _dt.datetime.now(_dt.UTC)
        check_key(asset_id)
        out = np.asarray(pred.state.last_output, dtype=np.float64)
        n = len(pred.kernel_names)
        meta = {"asset_id": asset_id, "reason": reason, "emergency_timestamp": now.isoformat(),
                "holder_exponent": float(out[Out.HOLDER]), "weights": out[Out.SIZE:Out.SIZE + n].tolist(),
                "distance_to_collapse": float(out[Out.DISTANCE]), "cusum_statistic": float(out[Out.CUSUM])}
        blob = encode_snapshot(state_to_payload(pred.config, pred.kernel_names, pred.state, meta=meta))
        name = f"{asset_id}_emergency_{now:%Y%m%dT%H%M%S%fZ}.msgpack"
        path = Path(directory or DUMP_DIRECTORY).expanduser() / name
        try:
            _atomic_write(path, blob)
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


_ATTACH = threading.Lock()


def snapshots_of(predictor: UniversalPredictor) -> PredictorSnapshots:
    """The predictor's :class:`PredictorSnapshots`, created on first use."""
    session = predictor.__dict__.get("_snapshots")
    if session is None:
        with _ATTACH:
            session = predictor.__dict__.setdefault("_snapshots", PredictorSnapshots(predictor))
    return session


__all__ = [
    "COMPATIBILITY_KEYS", "PredictorSnapshots", "SnapshotReceipt", "check_compatible", "load_states",
    "payload_to_state", "save_states", "snapshots_of", "state_to_payload",
]
