"""The service loop of ``usp serve`` (``usp.application.service``): many assets in one batched
state, rounds of distinct assets, predictions in input order, snapshots on a schedule with
acknowledgements after them, a prompt and complete stop, telemetry that never blocks, and a
bounded number of compiled shapes.

Sources and sinks here are small in-memory implementations of the ports over lists; the store is
the real ``MemoryStore`` and the telemetry queue the real ``TelemetryQueue``.
"""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest
import usp
from hypothesis import given
from hypothesis import strategies as st
from usp import PredictorConfig, ProcessState
from usp.adapters.clocks import ReplayClock
from usp.adapters.stores import MemoryStore
from usp.application.asset_registry import (
    MIN_CAPACITY,
    asset_prng_key,
    bucket_size,
    compiled_shapes,
    plan_rounds,
    receipt_order,
)
from usp.application.service import ServeSummary, Service, weights_digest
from usp.application.snapshot_payload import decode_payload
from usp.application.telemetry_queue import TelemetryQueue
from usp.ports.ingestion import MalformedObservationEvent, ObservationBatch, empty_batch
from usp.ports.state_store import asset_key
from usp.ports.telemetry import (
    MalformedTelemetry,
    ParityHashTelemetry,
    ShutdownTelemetry,
    SnapshotTelemetry,
    TickTelemetry,
)

CONFIG = PredictorConfig(window_size=32, wtmm_buffer_size=32, wtmm_refresh_steps=8, kurtosis_window=16,
                         kernel_a_order=4, enabled_kernels=("A",))
T0 = 1_800_000_000_000_000_000
TICK_NS = 10_000_000  # 10 ms between an asset's ticks (below the 100 ms Nyquist interval)
N_ASSETS, N_TICKS = 50, 500
ASSETS = ("EUR/USD", "btc-usd", "Zürich", "^GSPC", *(f"A{i:02d}" for i in range(N_ASSETS - 4)))


def _functional() -> usp.FunctionalPredictor:
    """A predictor with its own replay clock (the compiled core is shared by all of them)."""
    return usp.FunctionalPredictor(CONFIG, clock=ReplayClock())


class ListSource:
    """An ``ObservationSource`` over a list of batches. Not live: ``read`` returns None at the
    end. Live: it returns empty batches at the end (after waiting ``timeout_s``), and
    ``stop_after`` batches it sets ``stop``, as a signal handler would."""

    name = "list"

    def __init__(self, batches, *, live: bool = False, stop: threading.Event | None = None,
                 stop_after: int | None = None, on_ack=None, delay_s: float = 0.0, on_event=None) -> None:
        self.batches = list(batches)
        self.live = live
        self.stop, self.stop_after = stop, stop_after
        self.on_ack = on_ack
        self.on_event = on_event  # given the read count, as a source reports skipped records
        self.delay_s = delay_s
        self.served: list[ObservationBatch] = []
        self.acknowledged: list[ObservationBatch] = []
        self.reads_after_stop = 0
        self.threads: set[int] = set()

    def read(self, max_rows: int, timeout_s: float):
        self.threads.add(threading.get_ident())
        assert max_rows >= 1 and 0 < timeout_s <= 0.2
        if self.stop is not None and self.stop.is_set():
            self.reads_after_stop += 1
        if not self.batches:
            if self.live:
                time.sleep(timeout_s)
                return empty_batch()
            return None
        time.sleep(self.delay_s)
        if self.on_event is not None:
            self.on_event(len(self.served))
        batch = self.batches.pop(0)
        assert len(batch) <= max_rows
        self.served.append(batch)
        if self.stop_after is not None and len(self.served) == self.stop_after:
            self.stop.set()
        return batch

    def acknowledge(self, batches) -> None:
        self.threads.add(threading.get_ident())
        if self.on_ack is not None:
            self.on_ack(batches)
        self.acknowledged.extend(batches)

    def close(self) -> None:
        self.batches = []


class ListSink:
    """A ``PredictionSink`` keeping what it was given; ``visible`` holds what was flushed."""

    name = "list"

    def __init__(self) -> None:
        self.written, self.visible = [], []

    def write(self, records) -> None:
        self.written.append(records)

    def flush(self) -> None:
        self.visible = list(self.written)

    def close(self) -> None:
        self.flush()


class RecordingTelemetry:
    """A ``TelemetrySink`` keeping every record; ``gate`` (when given) blocks each publish."""

    def __init__(self, name: str = "recorder", gate: threading.Event | None = None) -> None:
        self.name, self.gate = name, gate
        self.records: list = []

    def publish(self, records) -> None:
        if self.gate is not None:
            self.gate.wait()
        self.records.extend(records)


def _stream(n_assets: int = N_ASSETS, n_ticks: int = N_TICKS, *, seed: int = 0, nan_share: float = 0.002):
    """Ticks of ``n_assets`` interleaved (a random order at each step), random walks with a few
    NaN values: (assets tuple, timestamps int64[n], values float64[n])."""
    rng = np.random.default_rng(seed)
    assets = ASSETS[:n_assets]
    walks = np.cumsum(rng.normal(0.0, 0.01, (n_assets, n_ticks)), axis=1) + rng.uniform(1.0, 100.0, (n_assets, 1))
    walks[rng.random(walks.shape) < nan_share] = np.nan
    order = np.concatenate([rng.permutation(n_assets) for _ in range(n_ticks)])
    steps = np.repeat(np.arange(n_ticks), n_assets)
    stamps = T0 + steps * TICK_NS + order * 1_000  # an asset's offset keeps its own ticks regular
    return tuple(assets[i] for i in order), stamps.astype(np.int64), walks[order, steps]


def _batches(stream, sizes, *, receipts: bool = True):
    """The stream cut into micro-batches of the given sizes (cycled)."""
    assets, stamps, values = stream
    out, start, k = [], 0, 0
    while start < len(assets):
        stop = min(len(assets), start + sizes[k % len(sizes)])
        ids = tuple(f"{i}-0" for i in range(start, stop)) if receipts else ()
        out.append(ObservationBatch(assets[start:stop], stamps[start:stop], values[start:stop], ids))
        start, k = stop, k + 1
    return out


def _reference(assets, stamps, values):
    """Per asset: ``FunctionalPredictor.step`` with its own ReplayClock from its own cold key;
    each tick's (prediction, lower, upper, mode, events) in input order."""
    states, rows = {}, []
    for asset, stamp, value in zip(assets, stamps.tolist(), values.tolist(), strict=True):
        if asset not in states:
            predictor = _functional()
            states[asset] = (predictor, predictor.init_state(key=asset_prng_key(CONFIG.seed, asset)))
        predictor, state = states[asset]
        state, result = predictor.step(state, ProcessState(value, stamp))
        states[asset] = (predictor, state)
        rows.append((result.reference_prediction, result.confidence_lower, result.confidence_upper, result.mode,
                     tuple(event.name for event in result.telemetry.events)))
    return rows, {asset: state for asset, (_, state) in states.items()}


def _joined(records):
    """The sink's records as one table: assets, timestamps, float64[n, 3], modes, events, receipts."""
    return (tuple(a for r in records for a in r.assets), np.concatenate([r.timestamps_ns for r in records]),
            np.column_stack([np.concatenate([getattr(r, column) for r in records])
                             for column in ("prediction", "lower", "upper")]),
            tuple(m for r in records for m in r.modes), tuple(e for r in records for e in r.events),
            tuple(x for r in records for x in r.receipts))


def _host(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _identical(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_host(a), _host(b), strict=True))


@pytest.fixture(scope="module")
def stream():
    return _stream()


@pytest.fixture(scope="module")
def reference(stream):
    return _reference(*stream)


# -- 1. a replay equals the per-asset reference, in input order ---------------------------------------

def test_replay_of_50_assets_equals_each_asset_stepped_alone(stream, reference):
    sizes = [1, 7, 50, 64, 3, 200, 129, 33, 1000, 2]
    batches = _batches(stream, sizes)
    sink = ListSink()
    source = ListSource(batches)
    summary = Service(_functional(), source, [sink], max_batch=1000).run(threading.Event())

    assert summary == ServeSummary(ticks=N_ASSETS * N_TICKS, assets=N_ASSETS, batches=len(batches), snapshots=0,
                                   seconds=summary.seconds, residual_observations=0)
    assert [len(r) for r in sink.visible] == [len(b) for b in batches]
    assets, stamps, numbers, modes, events, receipts = _joined(sink.visible)
    assert assets == stream[0] and np.array_equal(stamps, stream[1])
    assert receipts == tuple(x for b in batches for x in b.receipts)
    rows, _ = reference
    expected = np.array([row[:3] for row in rows])
    np.testing.assert_allclose(numbers, expected, rtol=0, atol=1e-12)
    assert modes == tuple(row[3] for row in rows)
    assert events == tuple(row[4] for row in rows)
    assert {"calibration", "inference"} <= set(modes)
    assert ("NonFiniteRejectedEvent",) in events  # the NaN ticks came back as events, in place
    assert source.acknowledged == batches  # no store: each batch acknowledged once written


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_batch": 0}, "max_batch"), ({"max_batch": True}, "max_batch"),
    ({"hash_interval_steps": 0}, "hash_interval_steps"),
    ({"snapshot_every_s": 0.0, "store": MemoryStore()}, "snapshot_every_s"),
    ({"snapshot_every_s": float("nan"), "store": MemoryStore()}, "snapshot_every_s"),
    ({"snapshot_every_s": 5.0}, "needs a store"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Service(_functional(), ListSource([]), [], **kwargs)


def test_a_service_runs_once():
    service = Service(_functional(), ListSource([]), [])
    assert service.run(threading.Event()).ticks == 0
    with pytest.raises(RuntimeError, match="runs once"):
        service.run(threading.Event())


# -- 2. rounds ----------------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 6), max_size=60))
def test_rounds_are_the_longest_runs_of_the_input_without_a_repeated_row(rows):
    rows = np.array(rows, np.int64)
    rounds = plan_rounds(rows)
    seen = np.concatenate(rounds) if rounds else np.zeros(0, np.int64)
    assert seen.tolist() == list(range(rows.size))  # contiguous, in input order
    for k, positions in enumerate(rounds):
        assert positions.size and len(set(rows[positions].tolist())) == positions.size
        if k + 1 < len(rounds):  # cut only where a row repeats
            assert rows[rounds[k + 1][0]] in set(rows[positions].tolist())


def test_lockstep_assets_share_rounds_as_wide_as_their_number():
    order = np.concatenate([np.random.default_rng(1).permutation(50) for _ in range(40)])
    assert [r.size for r in plan_rounds(order)] == [50] * 40  # a random order at each step
    assert [r.size for r in plan_rounds(np.tile(np.arange(50), 40))] == [50] * 40


def test_assets_ticking_at_different_rates_never_look_stale():
    """F ticks every 10 ms, S every second, in time order: the rounds follow the input's time, so
    no tick sees another asset's future, and no StaleDataEvent appears (a tick's staleness is
    judged against the newest timestamp before it, as with one replay clock fed in input order).
    The outputs are the per-asset reference's."""
    ticks = sorted([(T0 + i * TICK_NS, "F") for i in range(300)] + [(T0 + i * 100 * TICK_NS, "S") for i in range(3)])
    assets = tuple(asset for _, asset in ticks)
    stamps = np.array([stamp for stamp, _ in ticks], np.int64)
    values = 100.0 + np.cumsum(np.random.default_rng(7).normal(0.0, 0.01, len(ticks)))
    sink = ListSink()
    Service(_functional(), ListSource(_batches((assets, stamps, values), [250, 53])), [sink]).run(threading.Event())
    got = _joined(sink.visible)
    assert got[0] == assets and len(got[0]) == 303
    assert not [e for e in got[4] if "StaleDataEvent" in e]
    rows, _ = _reference(assets, stamps, values)
    assert got[4] == tuple(row[4] for row in rows)
    np.testing.assert_allclose(got[2], np.array([row[:3] for row in rows]), rtol=0, atol=1e-12)


def test_bucket_sizes_are_powers_of_two():
    assert [bucket_size(n) for n in (1, 2, 3, 4, 5, 63, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]


def test_an_asset_repeated_in_one_batch_is_stepped_in_order():
    assets = ("X", "Y", "X", "X", "Z", "Y", "X", "X")
    stamps = T0 + np.array([0, 1, 10, 20, 2, 11, 30, 40], np.int64) * TICK_NS
    values = np.array([1.0, 5.0, 1.1, 1.3, 9.0, 5.2, 1.2, np.nan])
    service = Service(_functional(), ListSource([]), [])
    records = service.step(ObservationBatch(assets, stamps, values))
    rows, states = _reference(assets, stamps, values)
    assert records.assets == assets and np.array_equal(records.timestamps_ns, stamps)
    np.testing.assert_allclose(np.column_stack([records.prediction, records.lower, records.upper]),
                               np.array([row[:3] for row in rows]), rtol=0, atol=1e-12)
    assert records.events == tuple(row[4] for row in rows)
    assert records.events[-1] == ("NonFiniteRejectedEvent",)
    for asset, state in states.items():
        mine = service.states.state_of(asset)
        assert int(mine.count) == int(state.count)
        assert int(mine.last_timestamp_ns) == int(state.last_timestamp_ns)


def test_an_assets_cold_state_is_made_from_its_own_key_whatever_the_arrival_order():
    functional = _functional()
    one = Service(functional, ListSource([]), [])
    two = Service(functional, ListSource([]), [])
    one.states.rows_for(["Q", "EUR/USD", "R"])
    two.states.rows_for(["R", "S"])
    two.states.rows_for(["EUR/USD", "Q"])
    for asset in ("Q", "R", "EUR/USD"):
        cold = functional.init_state(key=asset_prng_key(CONFIG.seed, asset))
        assert _identical(one.states.state_of(asset), cold) and _identical(two.states.state_of(asset), cold)
    assert not np.array_equal(one.states.state_of("Q").key, one.states.state_of("R").key)


# -- 3. untouched rows --------------------------------------------------------------------------------

def test_rows_not_in_a_batch_stay_bit_identical(stream):
    service = Service(_functional(), ListSource([]), [])
    for batch in _batches((stream[0][:400], stream[1][:400], stream[2][:400]), [100]):
        service.step(batch)
    before = jax.device_get(service.states.state)
    touched = ("A05", "EUR/USD", "A17")
    stamps = np.array([T0 + 10**12] * 3, np.int64)
    service.step(ObservationBatch(touched, stamps, np.array([50.0, 60.0, 70.0])))
    after = jax.device_get(service.states.state)
    rows = [service.states.assets.index(a) for a in touched]
    assert service.states.capacity == MIN_CAPACITY
    untouched = np.setdiff1d(np.arange(service.states.capacity), rows)  # spare rows included
    for old, new in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True):
        assert np.array_equal(np.asarray(old)[untouched], np.asarray(new)[untouched], equal_nan=True)
    assert not np.array_equal(np.asarray(before.count)[rows], np.asarray(after.count)[rows])


def test_new_assets_beyond_the_capacity_grow_it_and_keep_every_state(stream):
    service = Service(_functional(), ListSource([]), [])
    service.step(_batches(stream, [30])[0])
    kept = {a: service.states.state_of(a) for a in service.states.assets}
    many = tuple(f"N{i}" for i in range(100))
    service.step(ObservationBatch(many, np.full(100, T0, np.int64), np.ones(100)))
    assert service.states.capacity == 256 and len(service.states) == len(kept) + 100
    for asset, state in kept.items():
        assert _identical(service.states.state_of(asset), state)


# -- 4. snapshots, restore, acknowledgements ----------------------------------------------------------

def _ack_checker(store, functional, batches):
    """An ``on_ack`` that checks, when a batch is acknowledged, that the store already holds, for
    every asset of it, a state at least as new as that asset's last tick in the batch."""
    def check(acked):
        for batch in acked:
            last = {}
            for asset, stamp in zip(batch.assets, batch.timestamps_ns.tolist(), strict=True):
                last[asset] = stamp
            for asset, stamp in last.items():
                state, restored = functional.load_states(store, asset_key(asset))
                assert restored, f"{asset} acknowledged before any snapshot of it"
                assert int(state.last_timestamp_ns) >= stamp, f"{asset} acknowledged before its snapshot"
    return check


def test_snapshots_on_schedule_restore_into_a_new_service_that_continues_bit_identically():
    stream = _stream(12, 300, seed=3, nan_share=0.0)
    batches = _batches(stream, [20, 5, 33])
    split = len(batches) // 2
    first, second = batches[:split], batches[split:]

    whole = ListSink()
    uninterrupted = Service(_functional(), ListSource(batches), [whole])
    uninterrupted.run(threading.Event())

    store = MemoryStore()
    functional = _functional()
    source = ListSource(first, delay_s=0.02, on_ack=_ack_checker(store, functional, first))
    sink = ListSink()
    service = Service(functional, source, [sink], store=store, telemetry=None, snapshot_every_s=0.1)
    summary = service.run(threading.Event())
    assert summary.snapshots >= 3  # a few on schedule (≥ 0.4 s of reading), and the final one
    assert summary.snapshot_failures == 0
    assert source.acknowledged and sorted(map(id, source.acknowledged)) == sorted(map(id, first))
    assert len(source.threads) == 1  # every source call on the loop's thread
    key = asset_key("EUR/USD")
    assert key == "asset=EUR^2FUSD" and len(store.history[key]) == min(summary.snapshots, 5)

    tail = ListSink()
    restarted = Service(_functional(), ListSource(second), [tail], store=store)
    summary = restarted.run(threading.Event())
    assert summary.restored == 12 and summary.snapshots == 1
    for asset in uninterrupted.states.assets:
        assert _identical(restarted.states.state_of(asset), uninterrupted.states.state_of(asset))
    expected = _joined(whole.visible[split:])
    got = _joined(tail.visible)
    assert got[0] == expected[0] and np.array_equal(got[2], expected[2]) and got[3:5] == expected[3:5]


def test_a_failing_snapshot_is_reported_retried_and_never_stops_the_loop():
    stream = _stream(5, 100, seed=4, nan_share=0.0)
    batches = _batches(stream, [10])
    store = MemoryStore(max_bytes=100)  # every snapshot is refused (too large)
    recorder = RecordingTelemetry()
    queue = TelemetryQueue([recorder], maxlen=10_000)
    source = ListSource(batches, delay_s=0.02)
    summary = Service(_functional(), source, [ListSink()], store=store, telemetry=queue,
                      snapshot_every_s=0.05).run(threading.Event())
    assert queue.close(5.0)
    assert summary.ticks == 500 and summary.snapshots == 0 and summary.snapshot_failures >= 2
    reports = [r for r in recorder.records if isinstance(r, SnapshotTelemetry)]
    assert len(reports) == summary.snapshot_failures
    assert all(not r.ok and "IntegrityError" in r.error and r.assets == 5 for r in reports)
    assert source.acknowledged == []  # nothing durable, nothing acknowledged


def _entry_ids(n: int) -> tuple[str, ...]:
    """Redis-style entry ids in stream order, several per millisecond, growing past a digit
    (``9-0`` < ``10-0``: ordered as integer pairs, not as strings)."""
    return tuple(f"{7 + i // 3}-{i % 3}" for i in range(n))


def _recut(stream, receipts, start: int, sizes):
    """Ticks ``start:`` of ``stream`` (with their ``receipts``) cut into batches of ``sizes``."""
    assets, stamps, values = stream
    out, k = [], 0
    while start < len(assets):
        stop = min(len(assets), start + sizes[k % len(sizes)])
        out.append(ObservationBatch(assets[start:stop], stamps[start:stop], values[start:stop], receipts[start:stop]))
        start, k = stop, k + 1
    return out


def test_redelivered_ticks_the_snapshots_hold_are_skipped_so_a_restart_continues_bit_identically():
    """A crash between a snapshot's write and its acknowledgement: the broker redelivers ticks
    the snapshot already holds (here from well before the cut, re-batched so that batches mix
    held and new ticks). They are skipped — not applied, not output — and counted; the rest
    continue the uninterrupted run bit for bit, each tick output once."""
    stream = _stream(12, 150, seed=8, nan_share=0.0)
    receipts = _entry_ids(len(stream[0]))
    cut = 900  # ticks applied (and snapshotted) before the crash
    whole = ListSink()
    uninterrupted = Service(_functional(), ListSource(_recut(stream, receipts, 0, [37, 64, 5])), [whole])
    uninterrupted.run(threading.Event())

    store = MemoryStore()
    first = Service(_functional(), ListSource(_recut((stream[0][:cut], stream[1][:cut], stream[2][:cut]),
                                                     receipts[:cut], 0, [37, 64, 5])), [ListSink()], store=store)
    assert first.run(threading.Event()).snapshots == 1
    payload = decode_payload(CONFIG, store.load(asset_key(stream[0][cut - 1])))
    assert payload["meta"]["receipt"] == receipts[cut - 1]  # the last tick it holds

    redelivered = _recut(stream, receipts, cut - 250, [100, 33])
    source = ListSource(redelivered)
    tail = ListSink()
    restarted = Service(_functional(), source, [tail], store=store)
    summary = restarted.run(threading.Event())
    assert summary.restored == 12 and summary.skipped == 250 and summary.ticks == len(receipts) - cut
    got, expected = _joined(tail.visible), _joined(whole.visible)
    assert got[5] == receipts[cut:]  # each tick after the cut once, in order; none before it
    assert got[0] == expected[0][cut:] and np.array_equal(got[1], expected[1][cut:])
    assert np.array_equal(got[2], expected[2][cut:]) and got[3:5] == (expected[3][cut:], expected[4][cut:])
    for asset in uninterrupted.states.assets:
        assert _identical(restarted.states.state_of(asset), uninterrupted.states.state_of(asset))
    assert sorted(map(id, source.acknowledged)) == sorted(map(id, redelivered))
    assert restarted.states.floors == {}  # every floor passed: later batches are not inspected


def test_without_receipts_or_without_a_recorded_receipt_nothing_is_skipped():
    stream = _stream(4, 40, seed=9, nan_share=0.0)
    receipts = _entry_ids(len(stream[0]))
    store = MemoryStore()
    Service(_functional(), ListSource(_recut(stream, receipts, 0, [50])), [ListSink()], store=store).run(
        threading.Event())
    again = _batches(stream, [30], receipts=False)  # a file source: no receipts, nothing compared
    summary = Service(_functional(), ListSource(again), [ListSink()], store=store).run(threading.Event())
    assert summary.skipped == 0 and summary.ticks == len(stream[0])

    plain = MemoryStore()  # snapshots without a receipt (a file source wrote them) load as before
    Service(_functional(), ListSource(_batches(stream, [50], receipts=False)), [ListSink()], store=plain).run(
        threading.Event())
    assert "receipt" not in decode_payload(CONFIG, plain.load(asset_key(stream[0][0])))["meta"]
    summary = Service(_functional(), ListSource(_recut(stream, receipts, 0, [50])), [ListSink()],
                      store=plain).run(threading.Event())
    assert summary.restored == 4 and summary.skipped == 0 and summary.ticks == len(stream[0])


@given(st.integers(0, 2**64), st.integers(0, 2**64), st.integers(0, 2**64), st.integers(0, 2**64))
def test_receipts_are_ordered_as_integer_pairs(a, b, c, d):
    assert (receipt_order(f"{a}-{b}") <= receipt_order(f"{c}-{d}")) == ((a, b) <= (c, d))


@pytest.mark.parametrize("receipt", [None, "", "5", "5-", "-5", "5-x", "a-1", "1-2-3", "١-٢", " 1-2", 17])
def test_receipts_that_are_not_entry_ids_have_no_order(receipt):
    assert receipt_order(receipt) is None


# -- 5. stop ------------------------------------------------------------------------------------------

def test_stop_mid_stream_applies_everything_read_once_and_writes_the_final_snapshot():
    stream = _stream(8, 200, seed=5)
    batches = _batches(stream, [13, 40])
    stop = threading.Event()
    store = MemoryStore()
    source = ListSource(batches, live=True, stop=stop, stop_after=9)
    sink = ListSink()
    service = Service(_functional(), source, [sink], store=store, snapshot_every_s=30.0)
    summary = service.run(stop)

    assert source.reads_after_stop == 0 and len(source.served) == 9
    assert summary.residual_observations == 0 and summary.batches == 9 and summary.snapshots == 1
    served = tuple(a for b in source.served for a in b.assets)
    got = _joined(sink.visible)
    assert got[0] == served and got[5] == tuple(x for b in source.served for x in b.receipts)
    assert summary.ticks == len(served)
    assert [id(b) for b in source.acknowledged] == [id(b) for b in source.served]  # each once
    for asset in set(served):
        state, restored = service.functional.load_states(store, asset_key(asset))
        assert restored and _identical(state, service.states.state_of(asset))


def test_a_stop_is_seen_promptly_while_a_live_source_is_idle():
    stop = threading.Event()
    source = ListSource([], live=True)
    timer = threading.Timer(0.3, stop.set)
    began = time.monotonic()
    timer.start()
    summary = Service(_functional(), source, [ListSink()], store=MemoryStore()).run(stop)
    assert time.monotonic() - began < 1.5
    assert summary.ticks == 0 and summary.snapshots == 0 and summary.residual_observations == 0


# -- 6. telemetry -------------------------------------------------------------------------------------

def test_telemetry_is_arrays_per_step_batch_with_parity_hashes_and_a_shutdown(stream):
    batches = _batches(stream, [400, 100])[:20]  # 5000 ticks
    recorder = RecordingTelemetry()
    queue = TelemetryQueue([recorder], maxlen=100_000)
    service = Service(_functional(), ListSource(batches), [ListSink()], store=MemoryStore(), telemetry=queue,
                      hash_interval_steps=1000)
    summary = service.run(threading.Event())
    assert queue.close(5.0)
    ticks = [r for r in recorder.records if isinstance(r, TickTelemetry)]
    assert sum(len(r.assets) for r in ticks) == summary.ticks
    for record in ticks:
        n = len(record.assets)
        assert record.timestamps_ns.shape == (n,) and record.modes.dtype == np.int32
        assert record.events.dtype == np.int64 and record.weights.shape == (n, 1)
        assert record.emergency.dtype == bool and record.degraded.dtype == bool and record.batch_seconds > 0
        assert len(set(record.assets)) == n  # one step_batch call: distinct assets
    hashes = [r for r in recorder.records if isinstance(r, ParityHashTelemetry)]
    assert [h.step for h in hashes] == list(range(1000, summary.ticks + 1, 1000))
    assert hashes[-1].digest == weights_digest(service.states.assets, service.states.last_outputs(), 1)
    assert isinstance(recorder.records[-1], ShutdownTelemetry) and recorder.records[-1].graceful
    assert [r.ok for r in recorder.records if isinstance(r, SnapshotTelemetry)] == [True]

    again = RecordingTelemetry()
    queue = TelemetryQueue([again], maxlen=100_000)
    Service(_functional(), ListSource(batches), [ListSink()], telemetry=queue).run(threading.Event())
    assert queue.close(5.0)
    assert [r for r in again.records if isinstance(r, ParityHashTelemetry)] == hashes  # a replica agrees


def test_a_blocked_telemetry_sink_never_blocks_the_replay_and_drops_are_counted(stream):
    batches = _batches(stream, [500])[:10]
    gate = threading.Event()
    blocked = RecordingTelemetry("blocked", gate)
    queue = TelemetryQueue([blocked], maxlen=4, batch_size=2)
    summary = Service(_functional(), ListSource(batches), [ListSink()], telemetry=queue).run(threading.Event())
    assert summary.ticks == 5000  # the replay finished with the sink blocked throughout
    offered = queue.offered()["blocked"]
    assert offered > 6
    assert queue.dropped()["blocked"] == offered - queue.pending()["blocked"]
    gate.set()
    assert queue.close(5.0)
    assert len(blocked.records) == offered - queue.dropped()["blocked"] <= 6


def test_malformed_records_reported_by_the_source_are_counted_and_offered():
    recorder = RecordingTelemetry()
    queue = TelemetryQueue([recorder], maxlen=10_000)
    batches = _batches(_stream(3, 20, seed=6), [6])
    holder: list[Service] = []

    def report(read: int) -> None:  # the composition root wires the source's on_event so
        for _ in range(read % 3):
            holder[0].note_malformed(MalformedObservationEvent("list", f"list:{read}", "not a number"))

    service = Service(_functional(), ListSource(batches, on_event=report), [ListSink()], telemetry=queue)
    holder.append(service)
    summary = service.run(threading.Event())
    assert queue.close(5.0)
    expected = sum(read % 3 for read in range(len(batches)))
    reports = [r.count for r in recorder.records if isinstance(r, MalformedTelemetry)]
    assert summary.malformed == expected == sum(reports) and all(count > 0 for count in reports)


# -- 7. compiled shapes -------------------------------------------------------------------------------

def test_compiled_shapes_are_bounded_by_the_buckets_and_a_second_replay_compiles_nothing(stream):
    """Rounds run at power-of-two sizes, so a replay compiles at most log2(capacity) + 1 step
    shapes; once every bucket has run, other batch sizes compile nothing (gather, scatter, the
    cold-state keys and init of new assets, the roughness reads included)."""
    def counts(functional):
        probes = (functional._step_batch, functional._read_batch, functional._read_rows, functional._init_batch)
        return [f._cache_size() for f in probes], compiled_shapes()

    functional = _functional()
    steps_before = functional._step_batch._cache_size()
    sizes = [1, 2, 4, 8, 16, 19, *range(20, 80), *range(1, 20)]  # new assets in groups of 1..19; rounds of 1..50
    first = _batches(stream, sizes)[:len(sizes)]
    Service(functional, ListSource(first), [ListSink()]).run(threading.Event())
    assert functional._step_batch._cache_size() - steps_before <= int(np.log2(MIN_CAPACITY)) + 1
    compiled = counts(functional)

    second = _batches(stream, [5, 13, 300, 97, 2])[:60]
    functional = _functional()
    Service(functional, ListSource(second), [ListSink()]).run(threading.Event())
    assert counts(functional) == compiled
