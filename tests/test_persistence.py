"""Predictor persistence: hot start in a fresh process, fallback past corrupt
snapshots, full disk, batches of 1000 assets through Redis and memory, non-blocking saves,
schema and config checks, the emergency dump."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import attrs
import jax
import numpy as np
import pytest
from usp import FunctionalPredictor, IntegrityError, PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.adapters.stores import FileStore, MemoryStore, RedisStore
from usp.application.snapshot import decode_snapshot, pytree_to_blocks
from usp.application.snapshot_payload import ADDED_GLOBAL_BLOCKS, payload_to_state, state_to_payload
from usp.application.snapshot_session import STORAGE_EVENT_HISTORY
from usp.application.snapshot_writer import MAX_PENDING_KEYS
from usp.domain._core import Out
from usp.domain._roughness import koopman_modes
from usp.ports.state_store import (
    CorruptedSnapshotEvent,
    InsufficientStorageError,
    InsufficientStorageEvent,
    SnapshotKeyError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
)

from .services import redis_url

__all__ = ["redis_url"]  # session fixture used below

SMALL = {"window_size": 64, "wtmm_buffer_size": 64, "kurtosis_window": 32, "kernel_a_rkhs_points": 16,
         "enabled_kernels": ("A", "D")}
CONFIG = PredictorConfig(**SMALL)
T0, DT = 1_700_000_000_000_000_000, 10_000_000  # 10 ms between ticks: below the Nyquist limit


def stream(n: int, seed: int = 7) -> np.ndarray:
    """A random walk with a level shift two thirds of the way (exercises the CUSUM state)."""
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.standard_normal(n)) * 0.1
    values[2 * n // 3:] += 1.0
    return values


def predictor(config: PredictorConfig = CONFIG) -> UniversalPredictor:
    return UniversalPredictor(config, ReplayClock())


def run(p: UniversalPredictor, values: np.ndarray, start: int) -> np.ndarray:
    """Feed ``values`` as ticks ``start, start+1, ...``; the output vectors, one row per tick."""
    return np.stack([p.step_raw(ProcessState(float(v), T0 + (start + i) * DT))[0]
                     for i, v in enumerate(values)])


def assert_same_state(a, b) -> None:
    left, right = pytree_to_blocks(a), pytree_to_blocks(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert left[name].tobytes() == right[name].tobytes(), name


HOT_START = """
import json, sys
import numpy as np
from usp import PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock

folder, small, t0, dt, start = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:6])
small = {k: tuple(v) if isinstance(v, list) else v for k, v in small.items()}
p = UniversalPredictor(PredictorConfig(**small), ReplayClock())
assert p.load_snapshot(folder + "/asset.snap"), "no snapshot"
values = np.load(folder + "/values.npy", allow_pickle=False)
rows = [p.step_raw(ProcessState(float(v), t0 + (start + i) * dt))[0] for i, v in enumerate(values)]
np.save(folder + "/outputs.npy", np.stack(rows), allow_pickle=False)
"""


def test_hot_start_in_a_fresh_process_repeats_the_next_500_predictions(tmp_path):
    t, after = 200, 500
    values = stream(t + after)
    p = predictor()
    run(p, values[:t], 0)
    p.save_snapshot(tmp_path / "asset.snap")  # FileStore(tmp_path), key "asset.snap"
    expected = run(p, values[t:], t)
    np.save(tmp_path / "values.npy", values[t:], allow_pickle=False)
    subprocess.run([sys.executable, "-c", HOT_START, str(tmp_path), json.dumps(SMALL), str(T0), str(DT),
                    str(t)], check=True, timeout=300, capture_output=True)
    got = np.load(tmp_path / "outputs.npy", allow_pickle=False)
    assert got.shape == expected.shape == (after, Out.length(len(p.kernel_names), koopman_modes(p.config)))
    assert np.isfinite(expected[:, Out.PREDICTION]).all()
    assert np.array_equal(np.isnan(got), np.isnan(expected))  # (some telemetry entries may be NaN)
    assert np.nanmax(np.abs(got - expected)) < 1e-12      # the spec's bound ...
    assert got.tobytes() == expected.tobytes()            # ... and in fact bit-identical


def test_corrupt_newest_falls_back_and_none_valid_is_a_cold_start(tmp_path, caplog):
    path = tmp_path / "asset"
    values = stream(160)
    p = predictor()
    run(p, values[:100], 0)
    p.save_snapshot(path)
    saved = p.state
    expected = run(p, values[100:130], 100)
    p.save_snapshot(path)
    newest = path / "000000000002.snap"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))

    q = predictor()
    assert q.load_snapshot(path) is True
    assert_same_state(q.state, saved)
    assert np.array_equal(run(q, values[100:130], 100), expected, equal_nan=True)
    assert [type(e) for e in q.storage_events] == [CorruptedSnapshotEvent]
    assert q.storage_events[0].location == str(newest) and "digest" in q.storage_events[0].reason

    (path / "000000000001.snap").write_bytes(b"\x00" * 300)  # nothing valid is left
    cold = predictor()
    before = cold.state
    with caplog.at_level(logging.WARNING, logger="usp.persistence"):
        assert cold.load_snapshot(path) is False
    assert "cold start" in caplog.text
    assert cold.state is before and len(cold.storage_events) == 2
    assert np.isfinite(run(cold, values[:20], 0)[:, Out.PREDICTION]).all()


class NonVerifyingStore(MemoryStore):
    """A third-party store that hands back whatever it holds, without checking digests."""

    def load(self, key: str) -> bytes | None:
        versions = self.history.get(key)
        return versions[-1] if versions else None


def test_digest_mismatch_from_a_store_is_an_integrity_error():
    p = predictor()
    run(p, stream(70), 0)
    store = NonVerifyingStore()
    p.save_snapshot("asset", store=store)
    blob = store.history["asset"][-1]
    store.history["asset"][-1] = blob[:-70] + b"x" * 6 + blob[-64:]
    q = predictor()
    with pytest.raises(IntegrityError, match="digest"):
        q.load_snapshot("asset", store=store)
    assert isinstance(q.storage_events[-1], CorruptedSnapshotEvent)


def enospc(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_reports_keeps_earlier_snapshots_and_keeps_predicting(tmp_path, monkeypatch):
    path = tmp_path / "asset"
    values = stream(160)
    p = predictor()
    run(p, values[:100], 0)
    p.save_snapshot(path)
    saved = p.state
    run(p, values[100:120], 100)

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(InsufficientStorageError):
        p.save_snapshot(path)
    future = p.save_snapshot_nonblocking(path)
    with pytest.raises(InsufficientStorageError):
        future.result(timeout=60)
    monkeypatch.undo()

    assert [type(e) for e in p.storage_events] == [InsufficientStorageEvent] * 2
    assert np.isfinite(run(p, values[120:160], 120)[:, Out.PREDICTION]).all()  # still in memory
    assert sorted(os.listdir(path)) == ["000000000001.snap"]                 # no torn file left
    q = predictor()
    assert q.load_snapshot(path) and not q.storage_events
    assert_same_state(q.state, saved)
    p.close()


@pytest.fixture(params=["memory", "redis"])
def batch_store(request):
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex}:")


@pytest.fixture(scope="module")
def warm_batch():
    fp = FunctionalPredictor(CONFIG)
    rng = np.random.default_rng(3)
    states, _ = fp.fit_history(fp.init_state(1000), np.cumsum(rng.standard_normal((1000, 40)), axis=1))
    return fp, states


def test_batch_of_1000_assets_round_trips(batch_store, warm_batch):
    fp, states = warm_batch
    keys = [f"ASSET{i:04d}" for i in range(1000)]
    fp.save_states(batch_store, keys, states)
    loaded, restored = fp.load_states(batch_store, keys)
    assert restored.dtype == bool and restored.all()
    assert_same_state(loaded, states)
    assert loaded.window.sharding == states.window.sharding

    single, found = fp.load_states(batch_store, "ASSET0007")
    assert found is True
    assert_same_state(single, jax.tree_util.tree_map(lambda leaf: leaf[7], states))
    row = decode_snapshot(batch_store.load("ASSET0007"), expected_schema="1.0")
    assert row["global"][".window"].tobytes() == np.asarray(states.window[7]).tobytes()


def test_batch_load_keeps_template_rows_for_missing_keys():
    fp = FunctionalPredictor(CONFIG)
    store = MemoryStore()
    states, _ = fp.fit_history(fp.init_state(3), np.cumsum(np.ones((3, 20)), axis=1))
    fp.save_states(store, ["a", "b", "c"], states)
    fp.save_states(store, "solo", fp.load_states(store, "b")[0])
    template = fp.init_state(3)
    loaded, restored = fp.load_states(store, ["a", "missing", "solo"], template)
    assert restored.tolist() == [True, False, True]
    blocks, cold, warm = pytree_to_blocks(loaded), pytree_to_blocks(template), pytree_to_blocks(states)
    for name in blocks:
        assert blocks[name][0].tobytes() == warm[name][0].tobytes()
        assert blocks[name][1].tobytes() == cold[name][1].tobytes()
        assert blocks[name][2].tobytes() == warm[name][1].tobytes()
    with pytest.raises(ValueError, match="2 keys"):
        fp.save_states(store, ["a", "b"], states)
    with pytest.raises(ValueError, match="one asset's state"):
        fp.save_states(store, "a", states)
    assert fp.load_states(store, "nothing")[1] is False


class GatedStore(MemoryStore):
    """Writes wait until the test opens the gate: a store as slow as we like."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()
        self.writes = 0

    def save(self, key: str, blob: bytes) -> None:
        self.entered.set()
        assert self.gate.wait(timeout=60), "gate never opened"
        super().save(key, blob)
        self.writes += 1


def test_nonblocking_saves_never_wait_coalesce_and_the_last_one_loads():
    values = stream(260)
    store = GatedStore()
    with predictor() as p:
        run(p, values[:60], 0)
        futures = []
        for i, value in enumerate(values[60:], 60):
            run(p, np.array([value]), i)
            futures.append(p.save_snapshot_nonblocking("asset", store=store))
            assert store.entered.wait(timeout=60)  # (so that the first write holds one request)
        assert not futures[0].done()   # the first write is still held: no tick waited for it
        distinct = list(dict.fromkeys(futures))
        assert len(distinct) == 2      # one running, one waiting that took every later request
        store.gate.set()
    assert all(f.done() and f.exception() is None for f in futures)
    receipts = [f.result() for f in distinct]
    assert [r.requests for r in receipts] == [1, 199] and store.writes == 2
    q = predictor()
    assert q.load_snapshot("asset", store=store)
    assert_same_state(q.state, p.state)


def test_nonblocking_file_snapshots_every_tick_complete(tmp_path):
    values = stream(160)
    p = predictor()
    run(p, values[:60], 0)
    futures = []
    for i, value in enumerate(values[60:], 60):
        run(p, np.array([value]), i)
        futures.append(p.save_snapshot_nonblocking(tmp_path / "asset"))
    assert p.close(timeout=120)
    assert all(f.exception() is None for f in futures)
    assert sum(f.result().requests for f in dict.fromkeys(futures)) == len(futures)
    q = predictor()
    assert q.load_snapshot(tmp_path / "asset")
    assert_same_state(q.state, p.state)
    p.save_snapshot_nonblocking(tmp_path / "asset").result(timeout=60)  # a new writer after close
    p.close()


def test_nonblocking_queue_is_bounded_and_a_refusal_does_not_stop_the_predictor():
    store = GatedStore()
    p = predictor()
    futures = [p.save_snapshot_nonblocking(f"k{i}", store=store) for i in range(MAX_PENDING_KEYS)]
    refused = p.save_snapshot_nonblocking("one-too-many", store=store)
    assert refused.done() and isinstance(refused.exception(), SnapshotWriteError)
    assert refused.exception().errno == errno.EBUSY
    assert isinstance(p.storage_events[-1], SnapshotWriteFailedEvent)
    assert np.isfinite(run(p, stream(20), 0)[:, Out.PREDICTION]).all()
    store.gate.set()
    assert p.close(timeout=60) and all(f.exception() is None for f in futures)
    assert p.storage_events.maxlen == STORAGE_EVENT_HISTORY


def test_schema_mismatch_is_a_value_error(tmp_path):
    p = predictor()
    run(p, stream(70), 0)
    p.save_snapshot(tmp_path / "asset")
    q = predictor(attrs.evolve(CONFIG, schema_version="2.0"))
    with pytest.raises(ValueError, match=r"Schema version mismatch: snapshot=1\.0, current=2\.0"):
        q.load_snapshot(tmp_path / "asset")


@pytest.mark.parametrize("change", [{"kurtosis_window": 48}, {"enabled_kernels": ("A",)},
                                    {"kernel_a_order": 4}])
def test_incompatible_config_is_a_value_error_naming_the_key(tmp_path, change):
    store = MemoryStore()
    p = predictor()
    run(p, stream(70), 0)
    p.save_snapshot("asset", store=store)
    name = next(iter(change))
    other = attrs.evolve(CONFIG, **change)
    q = UniversalPredictor(other, ReplayClock())
    with pytest.raises(ValueError, match=rf"incompatible configuration \({name}: snapshot="):
        q.load_snapshot("asset", store=store)
    fp = FunctionalPredictor(other)
    with pytest.raises(ValueError, match=name):
        fp.load_states(store, "asset")


def test_payload_telemetry_and_flags_come_from_the_state():
    p = predictor()
    out = run(p, stream(120), 0)[-1]
    payload = state_to_payload(p.config, p.kernel_names, p.state)
    assert payload["telemetry"]["kurtosis"] == out[Out.KURTOSIS]
    assert payload["telemetry"]["adaptive_threshold"] == out[Out.THRESHOLD]
    assert np.isnan(payload["telemetry"]["dgm_entropy"])  # no DGM kernel: not applicable
    assert payload["flags"]["emergency"] == bool(out[Out.EMERGENCY])
    assert list(payload["kernels"]) == ["A", "D"] and ".kernels[0].forecasts" not in payload["global"]
    assert payload["meta"]["kernel_names"] == list(p.kernel_names) == ["A", "D"]


def test_emergency_dump_is_a_verified_msgpack_snapshot(tmp_path, caplog):
    p = predictor()
    out = run(p, stream(90), 0)[-1]
    with caplog.at_level(logging.CRITICAL, logger="usp.persistence"):
        path = p.save_emergency_dump(tmp_path / "dumps", "BTC-USD")
    assert re.fullmatch(r"BTC-USD_emergency_\d{8}T\d{12}Z\.msgpack", path.name)
    assert str(path) in caplog.text and os.listdir(path.parent) == [path.name]
    dump = decode_snapshot(path.read_bytes(), expected_schema="1.0")
    assert dump["meta"]["asset_id"] == "BTC-USD" and dump["meta"]["reason"] == "emergency"
    assert dump["meta"]["holder_exponent"] == out[Out.HOLDER]
    assert dump["meta"]["weights"] == out[Out.SIZE:Out.SIZE + len(p.kernel_names)].tolist()
    assert dump["global"][".window"].tobytes() == np.asarray(p.state.window).tobytes()
    with pytest.raises(ValueError, match="invalid snapshot key"):
        p.save_emergency_dump(tmp_path, "../escape")


@pytest.mark.parametrize("path", ["../../x", "snaps/../../x", "snaps/..", "{tmp}/a/../b", "a/./../b"])
def test_snapshot_paths_climbing_out_with_dotdot_are_refused(tmp_path, monkeypatch, path):
    workdir = tmp_path / "one" / "two"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    p = predictor(attrs.evolve(CONFIG, snapshot_path=str(workdir / "snaps")))
    run(p, stream(70), 0)
    path = path.format(tmp=tmp_path)  # absolute, but still inside tmp_path were it obeyed
    for target in (path, Path(path)):
        for call in (p.save_snapshot, p.save_snapshot_nonblocking, p.load_snapshot):
            with pytest.raises(SnapshotKeyError, match=r"'\.\.' component") as info:
                call(target)  # refused before anything runs: the non-blocking save raises at once too
            assert isinstance(info.value, ValueError)
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == [] and not p.storage_events
    receipt = p.save_snapshot("snaps/BTC")  # the path form without '..' is unchanged
    assert (workdir / "snaps" / "BTC" / "000000000001.snap").is_file() and receipt.key == "BTC"
    p.close()


def test_untrusted_asset_ids_as_store_keys_never_leave_the_store(tmp_path):
    p = predictor()
    run(p, stream(70), 0)
    store = FileStore(tmp_path / "root", on_event=p.record_storage_event)
    for asset_id in ("../x", "..", "a/b", "/etc/x", "a\x00b", ".hidden"):
        with pytest.raises(SnapshotKeyError, match="invalid snapshot key"):
            p.save_snapshot(asset_id, store=store)
        with pytest.raises(SnapshotKeyError, match="invalid snapshot key"):
            p.load_snapshot(asset_id, store=store)
    assert list(tmp_path.rglob("*")) == []
    p.save_snapshot("BTC-USD", store=store)
    assert [f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*.snap")] == ["root/BTC-USD/000000000001.snap"]
    p.close()


def test_default_store_is_a_file_store_under_the_snapshot_path(tmp_path):
    p = predictor(attrs.evolve(CONFIG, snapshot_path=str(tmp_path / "snaps")))
    run(p, stream(70), 0)
    receipt = p.save_snapshot("ETH")
    assert (tmp_path / "snaps" / "ETH" / "000000000001.snap").is_file() and receipt.key == "ETH"
    store = FileStore(tmp_path / "snaps", on_event=p.record_storage_event)
    blob = store.load("ETH")
    assert blob is not None and blob[-64:].decode() == receipt.digest and len(blob) == receipt.size_bytes


def test_storage_kind_in_config_selects_the_store_through_the_container(tmp_path, monkeypatch):
    from usp.adapters.stores import MemoryStore as Memory
    from usp.container import store_for_config

    memory_config = attrs.evolve(CONFIG, storage_kind="memory")
    assert isinstance(store_for_config(memory_config), Memory)
    p = predictor(memory_config)
    run(p, stream(70), 0)
    receipt = p.save_snapshot("asset-1")
    assert receipt.key == "asset-1"
    assert p.load_snapshot("asset-1") is True
    assert not (Path(CONFIG.snapshot_path) / "asset-1").exists()  # nothing went to the file store


def test_a_snapshot_written_before_the_detector_fields_still_loads():
    """A snapshot from before the change detector's level and robust scales and the outlier
    streak existed lacks their blocks (ADDED_GLOBAL_BLOCKS): it loads with those fields cold,
    every other leaf as saved, and the predictor carries on from it (the detector re-arms)."""
    p = predictor()
    run(p, stream(200), 0)
    payload = state_to_payload(p.config, p.kernel_names, p.state)
    payload["config"]["enabled_kernels"] = list(p.config.enabled_kernels)  # as MessagePack returns it
    old = {**payload, "global": {k: v for k, v in payload["global"].items() if k not in ADDED_GLOBAL_BLOCKS}}
    assert len(old["global"]) == len(payload["global"]) - len(ADDED_GLOBAL_BLOCKS)
    functional = FunctionalPredictor(CONFIG, clock=ReplayClock())
    template = functional.init_state()
    restored = payload_to_state(CONFIG, template, old)
    saved, loaded, cold = (pytree_to_blocks(jax.tree_util.tree_map(np.asarray, s))
                           for s in (p.state, restored, template))
    for name in saved:
        assert np.array_equal(loaded[name], cold[name] if name in ADDED_GLOBAL_BLOCKS else saved[name],
                              equal_nan=True), name
    state = restored
    for i, value in enumerate(stream(400)[200:]):
        state, result = functional.step(state, ProcessState(float(value), T0 + (200 + i) * DT))
        assert np.isfinite(result.reference_prediction)
    assert int(state.monitor.scale_count) == 200
