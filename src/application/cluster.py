"""``ShardWorker``: one worker of ``usp serve --cluster`` (docs/scale-out.md).

Ticks are partitioned into ``P`` shard streams by a stable hash of the asset id, so every tick of
an asset is in one shard, in the order it was published. Each shard is owned by at most one live
worker at a time, through a lease with a time to live and a fencing token (``ShardBroker``, a
Redis adapter in production). The owner of a shard:

1. loads the shard's committed offset (the id of the last entry applied, the entries applied so
   far and the shard's clock), and restores each asset's committed state when it first sees it;
2. reads up to ``max_batch`` entries strictly after the offset, and applies them exactly as the
   single-process ``Service`` does: the batch is cut into rounds (contiguous runs of distinct
   assets, ``plan_rounds``) and each round is one ``step_batch`` of the rounds' rows of the
   shard's ``AssetStates``. After a full read the last round waits for the next batch (it may go
   on in the entries not read yet), so rounds do not depend on where reads end;
3. commits the micro-batch atomically: the new states of the assets it touched (snapshot codec
   bytes, ``meta.receipt`` = the entry id of the asset's last tick), the prediction records, and
   the new offset, on condition that its lease still holds (else :class:`LeaseLost`: nothing is
   written, and the worker drops the shard and everything it computed for it).

So every entry is applied exactly once and its prediction written exactly once: a new owner starts
from the committed states and reads strictly after the committed entry, and an owner that lost its
lease (paused past its TTL, cut off) can no longer commit.

Clock: each shard has its own replay clock, "now" = the newest tick timestamp applied in the shard
(the committed offset carries it, so a new owner resumes it). An asset's ticks are therefore judged
stale exactly as a single process replaying the same ticks would judge them, as long as the other
assets of the replay lie within the staleness TTL of the shard's (always so for ticks published in
time order).

Assignment: every worker heartbeats (registering itself for one lease TTL) and reads the live set;
shard ``k`` belongs to ``sorted(live)[k mod W]`` (:func:`assign`). A worker releases the shards no
longer assigned to it (between micro-batches, after their commit) and acquires the free ones
assigned to it; a worker with none idles. Heartbeats and lease renewals run on a thread of their
own every third of the TTL, so a long step never lets a live worker's lease expire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import attrs
import jax
import numpy as np

from ..domain import USPError
from ..domain._core import Out
from ..ports import Clock
from ..ports.ingestion import ObservationBatch
from ..ports.prediction_sink import PredictionRecords
from ..ports.state_store import StateStore, asset_key
from ..ports.telemetry import TickTelemetry
from .asset_registry import RECEIPT_META, AssetStates, plan_rounds
from .batch_snapshots import save_states
from .functional import FunctionalPredictor
from .service import TelemetryOffer
from .types import OperatingMode, decode_events

logger = logging.getLogger("usp.cluster")

#: Seconds an idle worker waits before it looks at its shards again.
IDLE_POLL_S = 0.05


def assign(workers: Sequence[str], shards: int) -> dict[str, tuple[int, ...]]:
    """The target owner of each shard: ``k -> sorted(workers)[k mod len(workers)]``, as
    ``{worker: its shards}`` (every worker listed, with ``()`` when it gets none)."""
    ordered = sorted(set(workers))
    owned: dict[str, list[int]] = {worker: [] for worker in ordered}
    if ordered:
        for shard in range(shards):
            owned[ordered[shard % len(ordered)]].append(shard)
    return {worker: tuple(mine) for worker, mine in owned.items()}


class LeaseLost(USPError, RuntimeError):
    """A commit was refused: the worker's lease on the shard expired or was taken over (or the
    offset moved under it). Nothing of the commit was written."""


@attrs.frozen
class ShardProgress:
    """A shard's committed offset."""

    entry_id: str = "0-0"        #: id of the last entry applied ("0-0": none)
    applied: int = 0             #: entries applied (malformed ones included) since the stream began
    clock_ns: int | None = None  #: newest tick timestamp applied (UTC ns), None before the first


@attrs.frozen(eq=False)
class ShardEntries:
    """What one read of a shard gave."""

    batch: ObservationBatch  #: the readable ticks, in stream order (receipts: their entry ids)
    ids: tuple[str, ...]     #: the id of every entry read, in order (malformed ones included)


class StagingStore(StateStore, Protocol):
    """A shard's states: ``load_many`` gives committed snapshots, ``save_many`` stages them."""

    def take(self) -> dict[str, bytes]:
        """The staged snapshots (key -> blob), forgotten by the store: the next commit's states."""
        ...


class ShardBroker(Protocol):
    """Where shards, leases, offsets and commits live (``usp.adapters.redis_cluster.RedisShards``).
    Every method may raise the backend's error (``BrokerError``)."""

    shards: int    #: P
    lease_ms: int  #: lease time to live (ms)

    def heartbeat(self, worker: str) -> list[str]:
        """Register ``worker`` as live for one TTL; returns the live workers."""
        ...

    def leave(self, worker: str) -> None:
        """Deregister ``worker`` at once."""
        ...

    def acquire(self, shard: int, worker: str) -> str | None:
        """The new lease (a value with a fresh fencing token) if the shard was free, else None."""
        ...

    def renew(self, shard: int, lease: str) -> bool:
        """Extend ``lease`` by one TTL; False if it is no longer held."""
        ...

    def release(self, shard: int, lease: str) -> None:
        """Give the shard up (only if ``lease`` still holds it)."""
        ...

    def progress(self, shard: int) -> ShardProgress:
        """The shard's committed offset."""
        ...

    def states(self, shard: int) -> StagingStore:
        """The shard's committed states (keys: ``asset_key``), staging the next commit's."""
        ...

    def read(self, shard: int, after: str, count: int) -> ShardEntries:
        """Up to ``count`` entries strictly after entry ``after``."""
        ...

    def backlog(self, shard: int, applied: int) -> int:
        """Entries of the shard not applied yet, for a shard with ``applied`` entries applied."""
        ...

    def commit(self, shard: int, lease: str, previous: str, progress: ShardProgress, states: Mapping[str, bytes],
               records: PredictionRecords) -> None:
        """Atomically: if ``lease`` holds and the offset is ``previous``, write ``states``, the
        records and ``progress``; else raise :class:`LeaseLost` and write nothing."""
        ...


class ClusterObserver(Protocol):
    """Receives the worker's cluster metrics (``usp.adapters.prometheus.ClusterMetrics``). Called
    from the worker's threads; must be cheap and never block."""

    def owned(self, shards: Sequence[int]) -> None:
        """The shards the worker holds now."""
        ...

    def renewed(self, shard: int) -> None:
        """A lease was renewed."""
        ...

    def lost(self, shard: int, reason: str) -> None:
        """A lease was lost (reported once): ``"expired"`` (a renewal found it gone) or ``"fenced"``
        (a refused commit found it first)."""
        ...

    def committed(self, shard: int, seconds: float, ticks: int) -> None:
        """A micro-batch of ``ticks`` was committed, ``seconds`` after its states began encoding."""
        ...

    def backlog(self, shard: int, entries: int) -> None:
        """Entries of an owned shard not applied yet."""
        ...


@attrs.frozen
class ClusterSummary:
    """What a :meth:`ShardWorker.run` did."""

    worker: str
    ticks: int      #: ticks applied and committed
    entries: int    #: entries committed (ticks + malformed ones)
    commits: int    #: micro-batches committed
    acquired: int   #: leases acquired
    released: int   #: shards given up (reassigned, or at the end)
    expired: int    #: leases found lost by a renewal
    fenced: int     #: commits refused because the lease was lost (each a micro-batch thrown away)
    seconds: float  #: wall time of the run


class _Shard:
    """An owned shard: its lease, committed offset, and the states of its assets seen so far."""

    def __init__(self, number: int, lease: str, progress: ShardProgress, functional: FunctionalPredictor,
                 store: StagingStore) -> None:
        self.number = number
        self.lease = lease
        self.progress = progress
        self.functional = functional
        self.store = store
        self.states = AssetStates(functional, store=store)
        if progress.clock_ns is not None:
            functional.clock.observe(progress.clock_ns)
        self.lost = False  # set by the heartbeat thread when a renewal fails


def _whole_rounds(batch: ObservationBatch, ids: tuple[str, ...]) -> tuple[ObservationBatch, tuple[str, ...]]:
    """``batch`` (and the entry ids it was read from) without its last round, the ticks from the
    last point where an asset repeats: that round may go on in the entries not read yet. Read again
    by the next batch, it is applied whole, so rounds are as wide as the data makes them whatever
    ``max_batch`` is (assets ticking in lockstep: one compiled width). A batch of one round is kept."""
    labels: dict[str, int] = {}
    rounds = plan_rounds(np.fromiter((labels.setdefault(a, len(labels)) for a in batch.assets), np.int64,
                                     len(batch)))
    if len(rounds) < 2:
        return batch, ids
    keep = int(rounds[-1][0])
    last = ids.index(batch.receipts[keep])
    head = ObservationBatch(batch.assets[:keep], batch.timestamps_ns[:keep], batch.values[:keep],
                            batch.receipts[:keep])
    return head, ids[:last]


class ShardWorker:
    """One worker of the cluster (see the module doc).

    Args:
        broker: the shards (leases, offsets, reads, commits).
        functional: the predictor; each shard gets its own copy on a clock of ``clock()``.
        clock: makes each shard's clock (a replay clock: "now" is the newest timestamp observed).
        worker_id: this worker's name in the live set (unique among the workers).
        max_batch: most entries read per micro-batch (≥ 1).
        telemetry: anything with a non-blocking ``offer`` (a ``TelemetryQueue``): a
            ``TickTelemetry`` per ``step_batch`` call, as the single-process service offers.
        observer: the cluster metrics, or None.
        poll_s: seconds an idle worker waits before it looks at its shards again.
    """

    def __init__(self, broker: ShardBroker, functional: FunctionalPredictor, *, clock: Callable[[], Clock],
                 worker_id: str, max_batch: int = 4096, telemetry: TelemetryOffer | None = None,
                 observer: ClusterObserver | None = None, poll_s: float = IDLE_POLL_S) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not worker_id or any(c.isspace() for c in worker_id):
            raise ValueError(f"a worker id is non-empty text without whitespace, got {worker_id!r}")
        self.broker = broker
        self.functional = functional
        self.clock = clock
        self.worker_id = worker_id
        self.max_batch = max_batch
        self.telemetry = telemetry
        self.observer = observer
        self.poll_s = float(poll_s)
        self._owned: dict[int, _Shard] = {}
        self._live: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("ticks", "entries", "commits", "acquired", "released", "expired", "fenced"), 0)
        self._mode_names = np.array([OperatingMode.to_string(code) for code in range(3)], dtype=object)
        self._event_names: dict[int, tuple[str, ...]] = {}
        self._ran = False

    @property
    def owned(self) -> tuple[int, ...]:
        """The shards held now, in order."""
        with self._lock:
            return tuple(sorted(self._owned))

    # -- membership and leases ----------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Register as live, renew every lease held (a failed renewal marks its shard lost) and
        report the backlog of each shard held."""
        live = tuple(self.broker.heartbeat(self.worker_id))
        with self._lock:
            self._live = live
            held = list(self._owned.values())
        for shard in held:
            if shard.lost:
                continue
            renewed = self.broker.renew(shard.number, shard.lease)
            if not self._holds(shard):  # released meanwhile (a shard is dropped before its release)
                continue
            if renewed:
                self._observe("renewed", shard.number)
            else:
                shard.lost = True
                logger.warning("shard %d: lease lost (expired, or taken over by another worker); dropping it",
                               shard.number)
                self._observe("lost", shard.number, "expired")
                self._count("expired")
            backlog = self.broker.backlog(shard.number, shard.progress.applied)
            if self._holds(shard):
                self._observe("backlog", shard.number, backlog)

    def _holds(self, shard: _Shard) -> bool:
        with self._lock:
            return self._owned.get(shard.number) is shard

    def _beat(self, done: threading.Event) -> None:
        """The heartbeat thread: :meth:`_heartbeat` every third of the lease TTL until ``done``."""
        period = self.broker.lease_ms / 3000.0
        failing = False
        while not done.wait(period):
            try:
                self._heartbeat()
                failing = False
            except Exception as error:  # the broker is unreachable: retried; a lease that expires is lost
                if not failing:
                    logger.warning("heartbeat failed (retried every %.2f s): %s", period, error)
                failing = True

    def _rebalance(self) -> None:
        """Give up the shards no longer assigned here (or lost), acquire the free ones assigned here."""
        with self._lock:
            live = self._live
        target = set(assign(live, self.broker.shards).get(self.worker_id, ()))
        for number, shard in list(self._owned.items()):
            if shard.lost:
                self._drop(shard)
            elif number not in target:
                self._drop(shard)
                self.broker.release(number, shard.lease)
                self._count("released")
                logger.info("shard %d released (reassigned) after entry %s", number, shard.progress.entry_id)
        changed = False
        for number in sorted(target - set(self._owned)):
            lease = self.broker.acquire(number, self.worker_id)
            if lease is None:
                continue
            progress = self.broker.progress(number)
            functional = FunctionalPredictor(self.functional.config, clock=self.clock(),
                                             kernels=self.functional.kernels, device=self.functional.device,
                                             batch_chunk=self.functional.batch_chunk)
            shard = _Shard(number, lease, progress, functional, self.broker.states(number))
            with self._lock:
                self._owned[number] = shard
            self._count("acquired")
            changed = True
            logger.info("shard %d acquired (lease %s); resuming after entry %s (%d applied)", number,
                        lease.split(" ", 1)[0], progress.entry_id, progress.applied)
        if changed:
            self._observe("owned", self.owned)

    def _drop(self, shard: _Shard) -> None:
        with self._lock:
            if self._owned.get(shard.number) is shard:
                del self._owned[shard.number]
        self._observe("owned", self.owned)

    def _release_all(self) -> None:
        """At the end: give every shard up (best effort: an unreachable broker lets the leases expire)."""
        for shard in list(self._owned.values()):
            self._drop(shard)
            try:
                if not shard.lost:
                    self.broker.release(shard.number, shard.lease)
                    self._count("released")
            except Exception as error:
                logger.warning("shard %d: could not release the lease (it expires by itself): %s", shard.number,
                               error)

    # -- ticks ------------------------------------------------------------------------------------
    def _work(self, shard: _Shard) -> int:
        """Read, apply and commit one micro-batch of ``shard``; returns the entries it held."""
        read = self.broker.read(shard.number, shard.progress.entry_id, self.max_batch)
        if not read.ids:
            return 0
        batch, ids = read.batch, read.ids
        if len(ids) == self.max_batch:  # more may follow: leave the last round for the next batch
            batch, ids = _whole_rounds(batch, ids)
        outputs = self._step(shard, batch) if len(batch) else np.zeros((0, 0))
        records = self._records(batch, outputs)
        began = time.perf_counter()
        clock = shard.progress.clock_ns
        if len(batch):
            newest = int(batch.timestamps_ns.max())
            clock = newest if clock is None else max(clock, newest)
            self._stage(shard, batch)
        progress = ShardProgress(ids[-1], shard.progress.applied + len(ids), clock)
        try:
            self.broker.commit(shard.number, shard.lease, shard.progress.entry_id, progress, shard.store.take(),
                               records)
        except LeaseLost as refused:
            logger.warning("%s; dropping the shard and the %d ticks applied since its last commit", refused,
                           len(batch))
            if not shard.lost:  # (a loss the heartbeat found first is counted as expired)
                self._observe("lost", shard.number, "fenced")
            self._count("fenced")
            shard.lost = True
            self._drop(shard)
            return len(ids)
        self._observe("committed", shard.number, time.perf_counter() - began, len(batch))
        shard.progress = progress
        self._count("commits")
        self._count("entries", len(ids))
        self._count("ticks", len(batch))
        return len(ids)

    def _step(self, shard: _Shard, batch: ObservationBatch) -> np.ndarray:
        """Apply ``batch`` to the shard's states in rounds, as ``Service.step`` does; returns the
        outputs float64[n, Out.length] in input order."""
        states = shard.states
        rows = states.rows_for(batch.assets)
        state = states.state
        assert state is not None  # (rows_for registered the batch's assets)
        outputs = np.empty((len(batch), state.last_output.shape[-1]), np.float64)
        names = self.functional.kernel_names
        assets = states.assets
        for positions in plan_rounds(rows):
            positions = positions[np.argsort(rows[positions], kind="stable")]  # row order: rounds chain
            began = time.perf_counter()
            out = states.step_round(rows[positions], batch.values[positions], batch.timestamps_ns[positions])
            seconds = time.perf_counter() - began
            outputs[positions] = out
            if self.telemetry is not None:
                self.telemetry.offer(TickTelemetry(
                    assets=tuple(assets[row] for row in rows[positions].tolist()),
                    timestamps_ns=batch.timestamps_ns[positions], modes=out[:, Out.MODE].astype(np.int32),
                    events=out[:, Out.EVENTS].astype(np.int64),
                    weights=np.ascontiguousarray(out[:, Out.SIZE:Out.SIZE + len(names)]), kernel_names=names,
                    emergency=out[:, Out.EMERGENCY] != 0.0, degraded=out[:, Out.DEGRADED] != 0.0,
                    batch_seconds=seconds))
        states.flush()
        return outputs

    def _stage(self, shard: _Shard, batch: ObservationBatch) -> None:
        """Encode the states of the batch's assets into the shard's store (staged for the commit),
        each with the entry id of its last tick as ``meta.receipt``."""
        last = dict(zip(batch.assets, batch.receipts, strict=True))
        assets = list(last)
        rows = shard.states.rows_for(assets)
        host = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[rows], jax.device_get(shard.states.state))
        functional = shard.functional
        save_states(shard.store, [asset_key(asset) for asset in assets], host, config=functional.config,
                    kernel_names=functional.kernel_names, metas=[{RECEIPT_META: last[asset]} for asset in assets])

    def _records(self, batch: ObservationBatch, outputs: np.ndarray) -> PredictionRecords:
        if not len(batch):
            empty = np.zeros(0)
            return PredictionRecords((), np.zeros(0, np.int64), empty, empty, empty, (), (), ())
        modes = self._mode_names[np.clip(outputs[:, Out.MODE].astype(np.int64), 0, 2)]
        events = []
        for bits in outputs[:, Out.EVENTS].astype(np.int64).tolist():
            found = self._event_names.get(bits)
            if found is None:
                found = self._event_names[bits] = tuple(event.name for event in decode_events(bits))
            events.append(found)
        return PredictionRecords(
            assets=batch.assets, timestamps_ns=batch.timestamps_ns, prediction=outputs[:, Out.PREDICTION].copy(),
            lower=outputs[:, Out.LOWER].copy(), upper=outputs[:, Out.UPPER].copy(), modes=tuple(modes.tolist()),
            events=tuple(events), receipts=batch.receipts)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> ClusterSummary:
        """Work until ``stop`` is set: rebalance, then one micro-batch per shard held, in turn
        (idle: wait ``poll_s``). At the end (``stop``, or an error, which propagates) the shards
        are released and the worker leaves the live set; what was committed stays.

        Raises:
            RuntimeError: ``run`` was called before on this worker.
        """
        if self._ran:
            raise RuntimeError("a ShardWorker runs once; build a new one to work again")
        self._ran = True
        began = time.monotonic()
        done = threading.Event()
        beats = threading.Thread(target=self._beat, args=(done,), name="usp-cluster-heartbeat", daemon=True)
        try:
            self._heartbeat()
            beats.start()
            while not stop.is_set():
                self._rebalance()
                worked = 0
                for shard in [s for _, s in sorted(self._owned.items())]:
                    if stop.is_set():
                        break
                    if not shard.lost:
                        worked += self._work(shard)
                if not worked:
                    stop.wait(self.poll_s)
        finally:
            done.set()
            if beats.is_alive():
                beats.join()
            self._release_all()
            try:
                self.broker.leave(self.worker_id)
            except Exception as error:
                logger.warning("could not leave the live set (the heartbeat expires by itself): %s", error)
        counts = self._counts
        return ClusterSummary(worker=self.worker_id, seconds=time.monotonic() - began, **counts)

    # -- helpers ----------------------------------------------------------------------------------
    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _observe(self, what: str, *args: object) -> None:
        if self.observer is not None:
            getattr(self.observer, what)(*args)


__all__ = ["IDLE_POLL_S", "ClusterObserver", "ClusterSummary", "LeaseLost", "ShardBroker", "ShardEntries",
           "ShardProgress", "ShardWorker", "StagingStore", "assign"]
