"""TelemetryQueue: bounded per sink, never blocking, drops counted exactly, close drains."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.application.telemetry_queue import AssetTable, TelemetryQueue
from usp.ports.telemetry import MalformedTelemetry, TelemetrySink, TickTelemetry


class RecordingSink:
    """Keeps every record it is handed, and the size of each list it was handed."""

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.records: list = []
        self.batches: list[int] = []

    def publish(self, records) -> None:
        assert isinstance(records, list)
        self.batches.append(len(records))
        self.records.extend(records)


class BlockedSink(RecordingSink):
    """Blocks inside ``publish`` until ``release`` is set; ``entered`` tells the worker is in."""

    def __init__(self, name: str = "blocked") -> None:
        super().__init__(name)
        self.entered = threading.Event()
        self.release = threading.Event()

    def publish(self, records) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the sink"
        super().publish(records)


class FailingSink(RecordingSink):
    """Raises on records whose count is odd; keeps the others."""

    def publish(self, records) -> None:
        if any(r.count % 2 for r in records):
            raise RuntimeError("odd record")
        super().publish(records)


def _records(n: int, start: int = 0) -> list[MalformedTelemetry]:
    return [MalformedTelemetry(count=start + i) for i in range(n)]


def _wait_idle(queue: TelemetryQueue, name: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while queue.pending()[name]:
        assert time.monotonic() < deadline, f"sink {name} never drained"
        time.sleep(0.001)


def test_sinks_satisfy_the_port():
    assert isinstance(RecordingSink(), TelemetrySink) and isinstance(BlockedSink(), TelemetrySink)


def test_records_reach_every_sink_in_order_as_lists():
    a, b = RecordingSink("a"), RecordingSink("b")
    queue = TelemetryQueue([a, b], maxlen=1000, batch_size=7)
    records = _records(300)
    for record in records:
        queue.offer(record)
    assert queue.close(10.0)
    assert a.records == records and b.records == records
    assert max(a.batches) <= 7 and sum(a.batches) == 300
    assert queue.dropped() == {"a": 0, "b": 0} and queue.dropped_total() == 0
    assert queue.delivered() == {"a": 300, "b": 300} and queue.pending() == {"a": 0, "b": 0}
    assert queue.names == ("a", "b")


def test_a_blocked_sink_drops_exactly_what_does_not_fit_and_others_keep_receiving():
    maxlen, more = 5, 12
    blocked, fast = BlockedSink(), RecordingSink()
    queue = TelemetryQueue([blocked, fast], maxlen=maxlen)
    records = _records(1 + more)
    queue.offer(records[0])
    assert blocked.entered.wait(10)  # the worker has taken record 0 and is stuck publishing it
    for record in records[1:]:
        queue.offer(record)
        _wait_idle(queue, "recording")  # the fast sink drains between offers: it never drops
    assert queue.dropped() == {"blocked": more - maxlen, "recording": 0}
    assert queue.dropped_total() == more - maxlen
    assert fast.records == records
    assert queue.pending()["blocked"] == 1 + maxlen  # one being published, maxlen queued
    assert queue.close(0.2) is False  # still blocked
    blocked.release.set()
    assert queue.close(10.0) is True
    assert blocked.records == records[:1 + maxlen]  # the first maxlen after the taken one
    assert queue.delivered() == {"blocked": 1 + maxlen, "recording": 1 + more}
    for name in queue.names:
        assert queue.delivered()[name] + queue.dropped()[name] == queue.offered()[name] == 1 + more


def test_concurrent_offers_to_a_blocked_sink_count_every_drop():
    maxlen, threads, each = 50, 4, 200
    blocked = BlockedSink()
    queue = TelemetryQueue([blocked], maxlen=maxlen)
    queue.offer(MalformedTelemetry(-1))
    assert blocked.entered.wait(10)
    barrier = threading.Barrier(threads)

    def offer_many(k: int) -> None:
        barrier.wait()
        for record in _records(each, start=k * each):
            queue.offer(record)

    workers = [threading.Thread(target=offer_many, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert queue.dropped_total() == threads * each - maxlen
    blocked.release.set()
    assert queue.close(10.0)
    assert len(blocked.records) == 1 + maxlen
    for k in range(threads):  # each thread's records arrive in its own order
        mine = [r.count for r in blocked.records[1:] if k * each <= r.count < (k + 1) * each]
        assert mine == sorted(mine)


def test_offers_after_close_are_dropped_and_counted():
    sink = RecordingSink()
    queue = TelemetryQueue([sink], maxlen=10)
    queue.offer(MalformedTelemetry(1))
    assert queue.close(5.0)
    queue.offer(MalformedTelemetry(2))
    assert sink.records == [MalformedTelemetry(1)] and queue.dropped() == {"recording": 1}


def test_a_raising_sink_is_logged_and_its_worker_carries_on(caplog):
    sink = FailingSink("failing")
    queue = TelemetryQueue([sink], maxlen=100, batch_size=1)
    with caplog.at_level(logging.ERROR, logger="usp.telemetry"):
        for record in _records(6):
            queue.offer(record)
        assert queue.close(5.0)
    assert [r.count for r in sink.records] == [0, 2, 4]
    assert queue.failed() == {"failing": 3} and queue.delivered() == {"failing": 3}
    failures = [r for r in caplog.records if r.name == "usp.telemetry" and "failed to publish" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)


def test_drops_are_logged_a_bounded_number_of_times(caplog):
    blocked = BlockedSink()
    queue = TelemetryQueue([blocked], maxlen=1)
    with caplog.at_level(logging.WARNING, logger="usp.telemetry"):
        queue.offer(MalformedTelemetry(0))
        assert blocked.entered.wait(10)
        for record in _records(1 + 150):
            queue.offer(record)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 3 and "100 records dropped" in lines[-1]  # at 1, 10 and 100 drops
    blocked.release.set()
    assert queue.close(10.0)


@pytest.mark.parametrize("kwargs", [{"maxlen": 0}, {"maxlen": 5, "batch_size": 0}])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(ValueError, match=">= 1"):
        TelemetryQueue([RecordingSink()], **kwargs)


def test_sink_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        TelemetryQueue([RecordingSink("x"), RecordingSink("x")], maxlen=5)


@given(maxlen=st.integers(1, 8), batch_size=st.integers(1, 5),
       plan=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 12)), max_size=8),
       threads=st.integers(1, 3))
def test_every_record_is_delivered_or_counted_as_dropped(maxlen, batch_size, plan, threads):
    """Whatever the sizes, the blocking pattern and the offering threads: after close, per sink,
    delivered + dropped == offered, and what a sink got is a subsequence of what was offered."""
    gate = threading.Event()

    class GatedSink(RecordingSink):
        def publish(self, records) -> None:
            assert gate.wait(30)
            super().publish(records)

    sinks = [GatedSink("gated"), RecordingSink("free")]
    queue = TelemetryQueue(sinks, maxlen=maxlen, batch_size=batch_size)
    offered: list[MalformedTelemetry] = []
    lock = threading.Lock()
    serial = iter(range(10**6))
    for open_gate, count in plan:
        (gate.set if open_gate else gate.clear)()

        def offer_some(count: int = count) -> None:
            for _ in range(count):
                with lock:
                    record = MalformedTelemetry(next(serial))
                    offered.append(record)
                    queue.offer(record)

        workers = [threading.Thread(target=offer_some) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    gate.set()
    assert queue.close(30.0)
    order = {id(r): i for i, r in enumerate(offered)}
    for sink in sinks:
        assert queue.delivered()[sink.name] + queue.dropped()[sink.name] == len(offered)
        assert queue.offered()[sink.name] == len(offered) and queue.failed()[sink.name] == 0
        positions = [order[id(r)] for r in sink.records]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert len(sink.records) == queue.delivered()[sink.name]


def _tick(assets, modes, emergency, degraded, weights, names=("A", "D")) -> TickTelemetry:
    n = len(assets)
    return TickTelemetry(tuple(assets), np.arange(n, dtype=np.int64), np.asarray(modes, np.int32),
                         np.zeros(n, np.int64), np.asarray(weights, np.float64), tuple(names),
                         np.asarray(emergency, bool), np.asarray(degraded, bool), 0.001)


def test_asset_table_keeps_the_last_row_per_asset_and_reports_transitions():
    table = AssetTable()
    first = table.update(_tick(["x", "y", "x"], [1, 0, 2], [False, True, True], [False, False, False],
                               [[0.5, 0.5], [0.1, 0.9], [0.3, 0.7]]))
    assert first.assets == ("x", "y")
    assert first.emergency_before.tolist() == [False, False] and first.emergency_after.tolist() == [True, True]
    assert table.slots == {"x": 0, "y": 1} and table.modes.tolist() == [2, 0]
    np.testing.assert_array_equal(table.weights, [[0.3, 0.7], [0.1, 0.9]])
    second = table.update(_tick(["z", "x"], [0, 0], [False, False], [True, False], [[1, 0], [0, 1]]))
    assert second.assets == ("z", "x")
    assert second.emergency_before.tolist() == [False, True] and second.emergency_after.tolist() == [False, False]
    assert second.degraded_after.tolist() == [True, False]
    assert table.modes.tolist() == [0, 0, 0] and table.emergency.tolist() == [False, True, False]
    empty = table.update(_tick([], [], [], [], np.zeros((0, 2))))
    assert empty.assets == () and len(table) == 3


def test_asset_table_grows_and_forgets_weights_of_another_kernel_layout():
    table = AssetTable()
    names = [f"asset{i}" for i in range(150)]
    table.update(_tick(names, np.zeros(150), np.zeros(150), np.zeros(150), np.full((150, 2), 0.5)))
    assert len(table) == 150 and table.weights.shape == (150, 2)
    table.update(_tick(["asset3"], [1], [False], [False], [[0.2, 0.3, 0.5]], names=("A", "D", "M")))
    assert table.kernel_names == ("A", "D", "M")
    assert np.isnan(table.weights[0]).all() and table.weights[3].tolist() == [0.2, 0.3, 0.5]
