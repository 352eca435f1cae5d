"""PrometheusTelemetry: exact metric names and values, scraped over real HTTP from ``serve(0)``.

The tick records are built from a real ``FunctionalPredictor.step_batch`` run on four assets
chosen to raise every kind of event: a random walk with a huge jump (outlier), NaN and 1e101
values (non-finite, magnitude), white noise (emergency mode: the Hölder exponent falls below
the threshold), and an asset whose timestamps go backwards and then lag the others (out of
order, then stale: degraded inference mode).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import usp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from usp import ColumnarBatch, EventCode, PredictorConfig
from usp.adapters.clocks import ReplayClock
from usp.adapters.prometheus import STEP_BUCKETS, PrometheusTelemetry
from usp.application.telemetry_queue import TelemetryQueue
from usp.domain._core import Out
from usp.ports.telemetry import (
    DeviceMemoryTelemetry,
    MalformedTelemetry,
    ParityHashTelemetry,
    ShutdownTelemetry,
    SnapshotTelemetry,
    TelemetrySink,
    TickTelemetry,
)

ASSETS = ("walk", "noise", "bad", "late")
CONFIG = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         kernel_a_order=4, enabled_kernels=("A", "D"), holder_threshold=0.45,
                         staleness_ttl_ns=100_000_000)
T0 = 1_800_000_000_000_000_000
STEP_NS = 10_000_000
STEPS = 230


@functools.cache
def predictor_records() -> tuple[TickTelemetry, ...]:
    """One TickTelemetry per step_batch call of a real predictor (4 assets x STEPS ticks)."""
    functional = usp.FunctionalPredictor(CONFIG, clock=ReplayClock())
    states = functional.init_state(len(ASSETS))
    rng = np.random.default_rng(7)
    values = np.cumsum(rng.standard_normal((STEPS, len(ASSETS))), axis=0)
    values[:, 1] = rng.standard_normal(STEPS)           # "noise": rough, trips the breaker
    values[150, 0] = values[149, 0] + 1e4                 # "walk": an outlier
    values[[30, 120], 2] = np.nan                         # "bad": non-finite ...
    values[[40, 130], 2] = 1e101                          # ... and too large
    records = []
    for t in range(STEPS):
        stamps = T0 + t * STEP_NS + np.arange(len(ASSETS), dtype=np.int64)
        if t in (100, 101):
            stamps[3] = T0                                # "late": out of order
        elif t >= 180:
            stamps[3] = T0 + 180 * STEP_NS + t            # "late": lags the replay clock: stale
        start = time.perf_counter()
        states, out = functional.step_batch(states, ColumnarBatch(values[t], stamps))
        seconds = time.perf_counter() - start
        records.append(TickTelemetry(ASSETS, out.timestamps_ns, out.operating_mode, out.events, out.weights,
                                     out.kernel_names, out.outputs[:, Out.EMERGENCY] > 0.5,
                                     out.outputs[:, Out.DEGRADED] > 0.5, seconds))
    return tuple(records)


def scrape(port: int) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """(type per family name, value per (sample name, labels)) of ``/metrics`` over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def telemetry():
    sink = PrometheusTelemetry(per_asset_weights=("noise",))
    port = sink.serve(0, "127.0.0.1")
    yield sink, port
    sink.close()


def test_it_satisfies_the_port_and_uses_its_own_registry():
    sink = PrometheusTelemetry()
    assert isinstance(sink, TelemetrySink) and sink.name == "prometheus"
    assert isinstance(sink.registry, CollectorRegistry)
    assert PrometheusTelemetry().registry is not sink.registry  # two sinks never collide
    registry = CollectorRegistry()
    assert PrometheusTelemetry(registry=registry).registry is registry


def test_tick_metrics_match_the_predictor_outputs(telemetry):
    sink, port = telemetry
    records = predictor_records()
    sink.publish(records[:100])
    sink.publish(records[100:])
    types, samples = scrape(port)

    events = [int(e) for r in records for e in r.events]  # reference: one tick at a time
    def ticks_with(bit: EventCode) -> int:
        return sum(1 for e in events if e & bit)

    assert value(samples, "usp_ticks_total") == STEPS * len(ASSETS)
    expected = {"non_finite": ticks_with(EventCode.REJECTED_NON_FINITE),
                "magnitude": ticks_with(EventCode.REJECTED_MAGNITUDE),
                "outlier": ticks_with(EventCode.REJECTED_OUTLIER),
                "out_of_order": ticks_with(EventCode.REJECTED_OUT_OF_ORDER), "malformed": 0}
    assert expected["non_finite"] == 2 and expected["magnitude"] == 2 and expected["out_of_order"] == 2
    assert expected["outlier"] >= 1
    for reason, count in expected.items():
        assert value(samples, "usp_ticks_rejected_total", reason=reason) == count
    assert value(samples, "usp_regime_changes_total") == ticks_with(EventCode.REGIME_CHANGED) > 0

    last = records[-1]
    for code, mode in enumerate(("inference", "calibration", "diagnostic")):
        assert value(samples, "usp_assets", mode=mode) == sum(int(m) == code for m in last.modes)
    assert value(samples, "usp_assets_emergency") == int(last.emergency.sum()) >= 1
    assert value(samples, "usp_assets_degraded") == int(last.degraded.sum()) >= 1
    assert last.emergency[ASSETS.index("noise")] and last.degraded[ASSETS.index("late")]
    for k, kernel in enumerate(last.kernel_names):
        assert value(samples, "usp_kernel_weight", kernel=kernel) == pytest.approx(
            sum(float(w[k]) for w in last.weights) / len(ASSETS), abs=1e-12)
        assert value(samples, "usp_asset_kernel_weight", asset="noise", kernel=kernel) == float(
            last.weights[ASSETS.index("noise"), k])
    assert not any(name == "usp_asset_kernel_weight" and dict(labels)["asset"] != "noise"
                   for name, labels in samples)

    batch = [r.batch_seconds for r in records]
    steps = [s / len(ASSETS) for s in batch]
    for name, observed in (("usp_batch_seconds", batch), ("usp_step_seconds", steps)):
        assert types[name] == "histogram"
        assert value(samples, f"{name}_count") == STEPS
        assert value(samples, f"{name}_sum") == pytest.approx(sum(observed), rel=1e-9)
        for bound in STEP_BUCKETS:
            assert value(samples, f"{name}_bucket", le=str(bound)) == sum(x <= bound for x in observed)
        assert value(samples, f"{name}_bucket", le="+Inf") == STEPS

    jitter = sorted(abs(b - a) for a, b in itertools.pairwise(steps))  # nearest rank, by hand
    for q in (0.95, 0.99):
        assert value(samples, "usp_jitter_seconds", quantile=str(q)) == jitter[math.ceil(q * len(jitter)) - 1]
    assert types["usp_ticks"] == "counter" and types["usp_assets"] == "gauge"
    assert types["usp_jitter_seconds"] == "gauge" and types["usp_kernel_weight"] == "gauge"


def test_the_jitter_window_rolls():
    sink = PrometheusTelemetry(jitter_window=3)
    port = sink.serve(0, "127.0.0.1")
    try:
        base = predictor_records()[0]
        for seconds in (0.004, 0.008, 0.004, 0.0048, 0.0052, 0.0044):  # 4 assets: steps of 1, 2, 1, 1.2 ... ms
            sink.publish([TickTelemetry(base.assets, base.timestamps_ns, base.modes, base.events, base.weights,
                                        base.kernel_names, base.emergency, base.degraded, seconds)])
        _, samples = scrape(port)
        # the last three jitters: |1.2-1|, |1.3-1.2|, |1.1-1.3| ms; both quantiles take the largest
        assert value(samples, "usp_jitter_seconds", quantile="0.95") == pytest.approx(0.0002, abs=1e-15)
        assert value(samples, "usp_jitter_seconds", quantile="0.99") == pytest.approx(0.0002, abs=1e-15)
    finally:
        sink.close()


def test_service_records_and_drops(telemetry):
    sink, port = telemetry
    types, samples = scrape(port)
    assert not any(name == "usp_jitter_seconds" for name, _ in samples)  # no steps yet: no jitter
    assert not any(name == "usp_kernel_weight" for name, _ in samples)
    assert value(samples, "usp_assets", mode="inference") == 0 and value(samples, "usp_telemetry_dropped_total") == 0
    for reason in ("non_finite", "magnitude", "outlier", "out_of_order", "malformed"):
        assert value(samples, "usp_ticks_rejected_total", reason=reason) == 0
    drops = [0]
    sink.watch_drops(lambda: drops[0])
    drops[0] = 17
    sink.publish([
        MalformedTelemetry(3), MalformedTelemetry(2),
        SnapshotTelemetry(assets=4, seconds=0.02, ok=True), SnapshotTelemetry(assets=4, seconds=0.5, ok=True),
        SnapshotTelemetry(assets=4, seconds=3.0, ok=False, error="disk full"),
        ParityHashTelemetry(step=1000, digest="a" * 64), ParityHashTelemetry(step=2000, digest="b" * 64),
        DeviceMemoryTelemetry("gpu:0", used_bytes=3 << 30, total_bytes=80 << 30),
        DeviceMemoryTelemetry("gpu:1", used_bytes=1 << 30, total_bytes=80 << 30),
        DeviceMemoryTelemetry("gpu:0", used_bytes=5 << 30, total_bytes=80 << 30),
        ShutdownTelemetry(graceful=True, seconds=1.5, residual_observations=0),
        ShutdownTelemetry(graceful=False, seconds=26.0, residual_observations=40),
    ])
    types, samples = scrape(port)
    assert value(samples, "usp_ticks_rejected_total", reason="malformed") == 5
    assert value(samples, "usp_ticks_total") == 0
    assert value(samples, "usp_snapshot_writes_total") == 2 and value(samples, "usp_snapshot_failures_total") == 1
    assert value(samples, "usp_snapshot_seconds_count") == 3
    assert value(samples, "usp_snapshot_seconds_sum") == pytest.approx(3.52)
    assert value(samples, "usp_snapshot_seconds_bucket", le="0.025") == 1
    assert value(samples, "usp_parity_hash_info", digest="b" * 64, step="2000") == 1
    assert [labels for name, labels in samples if name == "usp_parity_hash_info"] == [
        frozenset({("digest", "b" * 64), ("step", "2000")})]  # only the latest
    assert value(samples, "usp_device_memory_used_bytes", device="gpu:0") == 5 << 30
    assert value(samples, "usp_device_memory_used_bytes", device="gpu:1") == 1 << 30
    assert value(samples, "usp_device_memory_total_bytes", device="gpu:0") == 80 << 30
    assert value(samples, "predictor_graceful_shutdowns_total") == 1
    assert value(samples, "predictor_shutdown_duration_seconds_count") == 2
    assert value(samples, "predictor_shutdown_duration_seconds_bucket", le="2.0") == 1
    assert value(samples, "predictor_shutdown_duration_seconds_bucket", le="30.0") == 2
    assert value(samples, "predictor_shutdown_residual_observations_bucket", le="0.0") == 1
    assert value(samples, "predictor_shutdown_residual_observations_bucket", le="50.0") == 2
    assert value(samples, "predictor_shutdown_residual_observations_sum") == 40
    assert value(samples, "usp_telemetry_dropped_total") == 17
    assert types["usp_telemetry_dropped"] == "counter" and types["usp_snapshot_seconds"] == "histogram"
    assert types["predictor_graceful_shutdowns"] == "counter"
    assert types["predictor_shutdown_duration_seconds"] == "histogram"
    assert types["usp_device_memory_used_bytes"] == "gauge"


def test_the_drop_counter_equals_the_records_a_blocked_sink_could_not_take(telemetry):
    """Through the queue: a blocked sink for the whole run; Prometheus gets every record and
    reports exactly the drops of the blocked one."""
    sink, port = telemetry
    maxlen = 16

    class Blocked:
        name = "blocked"

        def __init__(self) -> None:
            self.entered, self.release = threading.Event(), threading.Event()

        def publish(self, records) -> None:
            self.entered.set()
            assert self.release.wait(30)

    blocked = Blocked()
    queue = TelemetryQueue([sink, blocked], maxlen=maxlen)
    sink.watch_drops(queue.dropped_total)
    records = predictor_records()
    queue.offer(records[0])
    assert blocked.entered.wait(10)
    for record in records[1:]:
        queue.offer(record)
        deadline = time.monotonic() + 10
        while queue.pending()["prometheus"]:  # paced so that the Prometheus lane never overflows
            assert time.monotonic() < deadline
            time.sleep(0.0005)
    _, samples = scrape(port)
    assert queue.dropped() == {"prometheus": 0, "blocked": len(records) - 1 - maxlen}
    assert value(samples, "usp_telemetry_dropped_total") == len(records) - 1 - maxlen
    assert value(samples, "usp_ticks_total") == STEPS * len(ASSETS)
    blocked.release.set()
    assert queue.close(10.0)


def test_serving_twice_is_refused_and_close_stops_the_endpoint():
    sink = PrometheusTelemetry()
    port = sink.serve(0, "127.0.0.1")
    assert port > 0
    with pytest.raises(RuntimeError, match="already"):
        sink.serve(0, "127.0.0.1")
    sink.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    sink.close()  # idempotent


def test_an_unknown_record_is_a_type_error_after_the_known_ones():
    sink = PrometheusTelemetry()
    with pytest.raises(TypeError, match="not a telemetry record: str"):
        sink.publish([MalformedTelemetry(4), "tick"])  # type: ignore[list-item]
    samples = {s.labels.get("reason"): s.value for f in sink.registry.collect() for s in f.samples
               if s.name == "usp_ticks_rejected_total"}
    assert samples["malformed"] == 4


def test_step_buckets_span_a_microsecond_to_ten_seconds():
    assert STEP_BUCKETS[0] == 1e-6 and STEP_BUCKETS[-1] == 10.0
    assert list(STEP_BUCKETS) == sorted(set(STEP_BUCKETS))
