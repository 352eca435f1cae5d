"""Scale-out on Redis Streams (``usp serve --cluster``, docs/scale-out.md): shards by CRC-32, a lease
with a fencing token per shard, atomic commits, rebalancing, and per-worker metrics.

Everything runs against a real redis-server (tests/services.py); the workers of the scenarios are
real ``usp serve --cluster`` processes, killed with SIGKILL, paused with SIGSTOP, joined mid-run,
and scraped over HTTP. The reference of every scenario is one process replaying the same ticks:
``Service`` over the whole data set on a replay clock. Each cluster run must end with every
asset's state equal to the reference's (to 1e-12) and every (asset, tick) output exactly once, in
the asset's order, with the reference's numbers.

Data: random walks of different scales, all assets ticking on one 10 ms grid, in time order.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import zlib
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from usp import FunctionalPredictor, PredictorConfig, ShardedTickProducer
from usp.adapters.clocks import ReplayClock
from usp.adapters.redis_cluster import (
    ClusterKeys,
    RedisShards,
    parse_cluster_url,
    record_fields,
    shard_of,
)
from usp.adapters.sinks import format_timestamp
from usp.application.cluster import LeaseLost, ShardProgress, ShardWorker, assign
from usp.application.service import Service
from usp.application.snapshot_payload import decode_payload, state_to_payload
from usp.domain import ConfigError
from usp.domain._config import FIELDS
from usp.ports.ingestion import ObservationBatch
from usp.ports.prediction_sink import PredictionRecords
from usp.ports.state_store import asset_key

from .services import redis_url
from .test_cli_serve import Serving, scrape, wait_until

__all__ = ["redis_url"]  # the session fixture used below

CONFIG = PredictorConfig(window_size=32, wtmm_buffer_size=32, wtmm_refresh_steps=8, kurtosis_window=16,
                         kernel_a_order=4, enabled_kernels=("A",))
T0, DT = 1_800_000_000_000_000_000, 10_000_000
SHARDS = 8
LEASE_MS = 1000  # short leases: takeovers within about a second


# -- data and the single-process reference ---------------------------------------------------------
def asset_names(count: int) -> list[str]:
    return ["EUR/USD", "ÄÖÜ €", "a b", *(f"X{i:03d}" for i in range(count - 3))]


@pytest.fixture(scope="module")
def client(redis_url) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


class Ticks:
    """``assets`` × ``ticks`` random walks in time order, and what one process makes of them."""

    def __init__(self, assets: int, ticks: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.names = asset_names(assets)
        scales = 10.0 ** rng.uniform(-2, 3, assets)
        paths = (np.cumsum(rng.standard_normal((ticks, assets)), axis=0) + 100.0) * scales
        self.assets = [self.names[i % assets] for i in range(assets * ticks)]
        self.stamps = np.repeat(T0 + DT * np.arange(ticks, dtype=np.int64), assets)
        self.values = paths.reshape(-1)
        self.total = assets * ticks
        self._reference: tuple[Service, dict[str, list[tuple[str, float]]]] | None = None

    def csv(self) -> str:
        return "asset,timestamp,value\n" + "".join(f"{a},{t},{v!r}\n" for a, t, v in zip(
            self.assets, self.stamps.tolist(), self.values.tolist(), strict=True))

    def reference(self) -> tuple[Service, dict[str, list[tuple[str, float]]]]:
        """``Service`` over every tick, in one process, on a replay clock: its states, and each
        asset's outputs ``(timestamp, prediction)`` in order."""
        if self._reference is None:
            outputs: dict[str, list[tuple[str, float]]] = {}

            class Collect:
                name = "collect"

                def write(self, records: PredictionRecords) -> None:
                    for asset, stamp, prediction in zip(records.assets, records.timestamps_ns.tolist(),
                                                        records.prediction.tolist(), strict=True):
                        outputs.setdefault(asset, []).append((format_timestamp(stamp), prediction))

                def flush(self) -> None: ...

                def close(self) -> None: ...

            service = Service(FunctionalPredictor(CONFIG, clock=ReplayClock()), _Replay(self), [Collect()])
            service.run(threading.Event())
            self._reference = service, outputs
        return self._reference


class _Replay:
    """An ``ObservationSource`` over a :class:`Ticks` (not live: ``read`` returns None at the end)."""

    live = False
    name = "ticks"

    def __init__(self, ticks: Ticks) -> None:
        self.ticks, self.at = ticks, 0

    def read(self, max_rows: int, timeout_s: float) -> ObservationBatch | None:
        if self.at >= self.ticks.total:
            return None
        rows = slice(self.at, min(self.ticks.total, self.at + max_rows))
        self.at = rows.stop
        return ObservationBatch(tuple(self.ticks.assets[rows]), self.ticks.stamps[rows], self.ticks.values[rows])

    def acknowledge(self, batches) -> None: ...

    def close(self) -> None: ...


# -- reading the cluster back ----------------------------------------------------------------------
def whole_stream(client: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of a stream, ``(id, fields)``, read in one packed reply."""
    packed = client.eval("return cmsgpack.pack(redis.call('XRANGE', KEYS[1], '-', '+'))", 1, key)
    entries = msgpack.unpackb(packed, raw=True) if packed else []
    return [(i.decode(), {f.decode(): v.decode() for f, v in zip(flat[::2], flat[1::2], strict=True)})
            for i, flat in entries or []]


def applied(client: redis.Redis, keys: ClusterKeys) -> int:
    return sum(int(client.hget(keys.offset(k), "applied") or 0) for k in range(SHARDS))


def drained(client: redis.Redis, keys: ClusterKeys, total: int) -> bool:
    return all(int(client.hget(keys.offset(k), "applied") or 0) == client.xlen(keys.ticks(k))
               for k in range(SHARDS)) and applied(client, keys) == total


def lease_holders(client: redis.Redis, keys: ClusterKeys) -> dict[int, str]:
    holders = {}
    for k in range(SHARDS):
        value = client.get(keys.lease(k))
        if value is not None:
            holders[k] = value.decode().split(" ", 1)[1]
    return holders


def assert_exactly_once(client: redis.Redis, keys: ClusterKeys, stream: str, ticks: Ticks) -> None:
    """Every (asset, tick) output once, in the asset's order, from its own entry, with the
    reference's prediction (1e-12); every asset's committed state is the reference's (1e-12)."""
    inputs: dict[str, list[tuple[str, str]]] = {}
    outputs: dict[str, list[tuple[str, str, float]]] = {}
    for k in range(SHARDS):
        for entry, fields in whole_stream(client, keys.ticks(k)):
            inputs.setdefault(fields["asset"], []).append((entry, format_timestamp(int(fields["timestamp"]))))
        for _, fields in whole_stream(client, ClusterKeys.outputs(stream, k)):
            assert shard_of(fields["asset"], SHARDS) == k
            outputs.setdefault(fields["asset"], []).append((fields["source_id"], fields["timestamp"],
                                                           float(fields["prediction"])))
    assert sum(map(len, outputs.values())) == ticks.total
    service, reference = ticks.reference()
    assert set(outputs) == set(reference) == set(ticks.names)
    for asset, rows in outputs.items():
        assert [(entry, stamp) for entry, stamp, _ in rows] == inputs[asset], asset  # once each, in order
        assert [stamp for stamp, _ in reference[asset]] == [stamp for _, stamp, _ in rows], asset
        np.testing.assert_allclose([p for _, _, p in rows], [p for _, p in reference[asset]], rtol=1e-12,
                                   atol=1e-300, err_msg=asset)
    names = service.functional.kernel_names
    for asset in ticks.names:
        blob = client.hget(keys.states(shard_of(asset, SHARDS)), asset_key(asset))
        assert blob is not None, asset
        got = decode_payload(CONFIG, blob)
        want = state_to_payload(CONFIG, names, service.states.state_of(asset))
        assert got["meta"]["receipt"] == inputs[asset][-1][0]  # the entry of its last tick
        blocks = [(name, got["global"][name], array) for name, array in want["global"].items()]
        blocks += [(f"{kernel}{name}", got["kernels"][kernel][name], array)
                   for kernel in names for name, array in want["kernels"][kernel].items()]
        for name, stored, expected in blocks:
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(stored, expected, rtol=1e-12, atol=1e-300, err_msg=f"{asset} {name}")
            else:
                np.testing.assert_array_equal(stored, expected, err_msg=f"{asset} {name}")


# -- the workers -----------------------------------------------------------------------------------
def write_config(path) -> str:
    sections: dict[str, list[str]] = {}
    defaults = PredictorConfig()
    for name in FIELDS:
        value = getattr(CONFIG, name)
        if value != getattr(defaults, name):
            sections.setdefault(FIELDS[name].metadata["section"], []).append(
                f"{name} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    return str(path)


class Worker(Serving):
    """``usp serve --cluster`` in a subprocess, with its worker id and metrics port."""

    def __init__(self, url: str, prefix: str, stream: str, config: str, cwd, *extra: str) -> None:
        super().__init__("--cluster", f"{url}?prefix={prefix}&lease_ms={LEASE_MS}", "--shards", str(SHARDS),
                         "--sink", f"{url}?stream={stream}", "--config", config, "--metrics-port", "0",
                         "--max-batch", "1024", *extra, cwd=cwd)

    def started(self) -> Worker:
        found = self.wait_for_line(r"usp: worker (\S+) joining .*metrics on http://localhost:(\d+)/metrics")
        self.id, self.port = found.group(1), int(found.group(2))
        return self


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGCONT)
        worker.kill()


def launch(workers: list[Worker], *args, **kw) -> Worker:
    worker = Worker(*args, **kw)
    workers.append(worker)
    return worker


def stop_all(survivors: list[Worker]) -> None:
    for worker in survivors:
        worker.signal(signal.SIGTERM)
    for worker in survivors:
        assert worker.wait() == 0, worker.stderr
        assert "stopped by SIGTERM" in worker.stderr


# -- partitioning and assignment -------------------------------------------------------------------
def test_the_shard_of_an_asset_is_crc32_of_its_utf8_id_mod_p():
    """The documented hash, pinned: a publisher in any language finds the same shard."""
    assert [shard_of(a, 8) for a in ("EUR/USD", "ÄÖÜ €", "btc")] == [
        zlib.crc32(b"EUR/USD") % 8, zlib.crc32("ÄÖÜ €".encode()) % 8, zlib.crc32(b"btc") % 8]
    assert zlib.crc32(b"EUR/USD") == 0xE7CE5862 and shard_of("EUR/USD", 8) == 2


@given(st.text(min_size=1, max_size=40), st.integers(1, 64))
def test_shard_of_is_a_stable_shard_in_range(asset, shards):
    assert 0 <= shard_of(asset, shards) < shards
    assert shard_of(asset, shards) == shard_of(str(asset), shards)


@given(st.lists(st.text(alphabet="abcxyz:0123456789", min_size=1, max_size=8), max_size=12), st.integers(1, 32))
def test_assignment_gives_each_shard_to_exactly_one_live_worker_evenly(workers, shards):
    """Each shard has one owner among the live workers; loads differ by at most one; the result
    does not depend on the order the live set was read in."""
    plan = assign(workers, shards)
    assert set(plan) == set(workers)
    owners = [w for w, mine in plan.items() for _ in mine]
    assert sorted(k for mine in plan.values() for k in mine) == (list(range(shards)) if workers else [])
    assert len(owners) == (shards if workers else 0)
    if workers:
        loads = [len(mine) for mine in plan.values()]
        assert max(loads) - min(loads) <= 1
    assert assign(list(reversed(workers)), shards) == plan


def test_the_producer_puts_each_tick_in_its_shard_in_order_and_refuses_another_shard_count(client, redis_url):
    ticks = Ticks(assets=12, ticks=30, seed=1)
    keys = ClusterKeys("prod")
    with ShardedTickProducer(f"{redis_url}?prefix=prod", SHARDS) as producer:
        homes = producer.publish(ticks.assets, ticks.stamps, ticks.values)
    assert homes.tolist() == [shard_of(a, SHARDS) for a in ticks.assets]
    for k in range(SHARDS):
        entries = whole_stream(client, keys.ticks(k))
        mine = [i for i, home in enumerate(homes.tolist()) if home == k]
        assert [(f["asset"], int(f["timestamp"]), float(f["value"])) for _, f in entries] == [
            (ticks.assets[i], int(ticks.stamps[i]), float(ticks.values[i])) for i in mine]
    assert client.hget(keys.meta, "shards") == str(SHARDS).encode()
    with pytest.raises(ConfigError, match="has 8 shards"):
        ShardedTickProducer(f"{redis_url}?prefix=prod", 4)


# -- leases, fencing, the commit -------------------------------------------------------------------
def empty_records() -> PredictionRecords:
    nothing = np.zeros(0)
    return PredictionRecords((), np.zeros(0, np.int64), nothing, nothing, nothing, (), (), ())


def test_a_worker_whose_lease_expired_cannot_commit_and_writes_nothing(client, redis_url):
    """Fencing: A's lease expires (A paused), B acquires the shard with a newer token; A's commit
    is refused as a whole (no state, no output, no offset), A's renewal and release fail and
    leave B's lease alone, and B commits."""
    endpoint = parse_cluster_url(f"{redis_url}?prefix=fence&lease_ms=200")
    shards = RedisShards(endpoint, 4, "fence-out")
    keys = endpoint.keys
    try:
        lease_a = shards.acquire(2, "A")
        assert lease_a is not None and lease_a.endswith(" A")
        assert shards.acquire(2, "B") is None  # held
        assert shards.renew(2, lease_a)
        time.sleep(0.35)  # A is paused past its TTL
        lease_b = shards.acquire(2, "B")
        assert lease_b is not None and int(lease_b.split()[0]) > int(lease_a.split()[0])
        records = PredictionRecords(("a",), np.array([T0], np.int64), np.ones(1), np.zeros(1), np.full(1, 2.0),
                                    ("inference",), ((),), ("5-0",))
        with pytest.raises(LeaseLost, match="no longer held"):
            shards.commit(2, lease_a, "0-0", ShardProgress("5-0", 1, T0), {"asset=a": b"x" * 80}, records)
        assert client.exists(keys.states(2), keys.offset(2), ClusterKeys.outputs("fence-out", 2)) == 0
        assert not shards.renew(2, lease_a)
        shards.release(2, lease_a)
        assert client.get(keys.lease(2)).decode() == lease_b
        shards.commit(2, lease_b, "0-0", ShardProgress("5-0", 1, T0), {"asset=a": b"x" * 80}, records)
        assert shards.progress(2) == ShardProgress("5-0", 1, T0)
        [(_, fields)] = whole_stream(client, ClusterKeys.outputs("fence-out", 2))
        assert fields == dict(zip(("asset", "timestamp", "prediction", "lower", "upper", "mode", "events",
                                   "source_id"), record_fields(records)[0], strict=True))
        assert fields["source_id"] == "5-0" and fields["events"] == "[]"
        with pytest.raises(LeaseLost, match="committed up to 5-0"):  # an owner resuming from a stale offset
            shards.commit(2, lease_b, "0-0", ShardProgress("6-0", 2, T0), {}, empty_records())
    finally:
        shards.close()


def test_a_worker_skips_unreadable_entries_and_moves_past_them(client, redis_url):
    """Entries without a field, with a bad value, or of an asset of another shard are skipped
    (reported) and the offset moves past them; the readable ticks are applied and committed."""
    url = f"{redis_url}?prefix=bad&lease_ms=1000"
    keys = ClusterKeys("bad")
    home = shard_of("a", 2)
    other = next(a for a in ("b", "c", "d", "e") if shard_of(a, 2) != home)
    stream = keys.ticks(home)
    client.xadd(stream, {"asset": "a", "timestamp": str(T0), "value": "1.5"})
    client.xadd(stream, {"asset": "a", "timestamp": str(T0 + DT)})
    client.xadd(stream, {"asset": "a", "timestamp": str(T0 + DT), "value": "one"})
    client.xadd(stream, {"asset": other, "timestamp": str(T0 + DT), "value": "1.0"})
    last = client.xadd(stream, {"asset": "a", "timestamp": str(T0 + 2 * DT), "value": "1.25"}).decode()
    reported = []
    shards = RedisShards(parse_cluster_url(url), 2, "bad-out", on_event=reported.append)
    worker = ShardWorker(shards, FunctionalPredictor(CONFIG, clock=ReplayClock()), clock=ReplayClock, worker_id="w")
    stop = threading.Event()
    thread = threading.Thread(target=lambda: worker.run(stop))
    thread.start()
    try:
        wait_until(lambda: shards.progress(home).entry_id == last, timeout=120, what="the commit")
    finally:
        stop.set()
        thread.join()
    try:
        assert shards.progress(home) == ShardProgress(last, 5, T0 + 2 * DT)
    finally:
        shards.close()
    assert len(reported) == 3 and f"belongs to shard {1 - home}" in reported[-1].reason
    assert [f["timestamp"] for _, f in whole_stream(client, ClusterKeys.outputs("bad-out", home))] == [
        format_timestamp(T0), format_timestamp(T0 + 2 * DT)]
    assert client.zcard(keys.workers) == 0 and client.exists(keys.lease(0), keys.lease(1)) == 0  # left, released


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "redis://127.0.0.1:1/0"], "--cluster needs --shards"),
    (["--source", "t.csv", "--shards", "2"], "--shards goes with --cluster"),
    (["--cluster", "redis://127.0.0.1:1/0", "--shards", "2", "--sink", "o.jsonl"], "Redis stream on the cluster"),
    (["--cluster", "redis://127.0.0.1:1/0", "--shards", "2", "--sink", "redis://127.0.0.1:1/1?stream=o"],
     "Redis stream on the cluster"),
    (["--cluster", "redis://127.0.0.1:1/0", "--shards", "2", "--sink", "redis://127.0.0.1:1/0?stream=o",
      "--snapshot-every", "5"], "--snapshot-every does not go with --cluster"),
    (["--cluster", "redis://127.0.0.1:1/0?lease_ms=5", "--shards", "2", "--sink", "redis://127.0.0.1:1/0?stream=o"],
     "lease_ms='5'"),
    (["--cluster", "redis://127.0.0.1:1/0?prefix={x}", "--shards", "2", "--sink", "redis://127.0.0.1:1/0?stream=o"],
     "without braces"),
])
def test_bad_cluster_flags_are_one_line_errors(capsys, args, message):
    from usp.cli import main

    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("usp: error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_a_worker_with_another_shard_count_or_config_is_refused(capsys, client, redis_url, tmp_path):
    from usp.cli import main

    with ShardedTickProducer(f"{redis_url}?prefix=refuse", SHARDS):
        pass
    sink = ["--sink", f"{redis_url}?stream=refuse-out"]
    assert main(["serve", "--cluster", f"{redis_url}?prefix=refuse", "--shards", "4", *sink]) == 2
    assert "has 8 shards (key refuse:cluster); --shards 4 differs" in capsys.readouterr().err
    with ShardedTickProducer(f"{redis_url}?prefix=refuse2", SHARDS):
        pass
    client.hset("refuse2:cluster", "config", "0" * 64)  # a worker with another config joined first
    config = write_config(tmp_path / "c.toml")
    assert main(["serve", "--config", config, "--cluster", f"{redis_url}?prefix=refuse2", "--shards", "8", *sink]) == 2
    assert "runs another predictor config" in capsys.readouterr().err


def test_usp_publish_sends_a_csv_to_the_shards(tmp_path, client, redis_url):
    from usp.cli import main

    ticks = Ticks(assets=10, ticks=20, seed=2)
    (tmp_path / "ticks.csv").write_text(ticks.csv() + "a,not a time,1.0\n", encoding="utf-8")
    assert main(["publish", str(tmp_path / "ticks.csv"), "--to", f"{redis_url}?prefix=pub", "--shards", "8"]) == 0
    keys = ClusterKeys("pub")
    published = {k: [(f["asset"], int(f["timestamp"]), float(f["value"])) for _, f in whole_stream(client,
                                                                                                  keys.ticks(k))]
                 for k in range(SHARDS)}
    assert sum(map(len, published.values())) == ticks.total
    for k, rows in published.items():
        assert rows == [(a, int(t), float(v)) for a, t, v in zip(ticks.assets, ticks.stamps, ticks.values,
                                                                 strict=True) if shard_of(a, SHARDS) == k]


# -- the scenarios: real worker processes ----------------------------------------------------------
def kill_one(seed: int, size: tuple[int, int], tmp_path, client, redis_url, workers) -> None:
    """Two workers; one SIGKILLed at a random point (by ``seed``); the survivor drains."""
    ticks = Ticks(*size, seed=seed)
    prefix, stream = f"kill{seed}", f"kill{seed}-out"
    keys = ClusterKeys(prefix)
    with ShardedTickProducer(f"{redis_url}?prefix={prefix}", SHARDS) as producer:
        producer.publish(ticks.assets, ticks.stamps, ticks.values)
    config = write_config(tmp_path / "c.toml")
    pair = [launch(workers, redis_url, prefix, stream, config, tmp_path).started() for _ in range(2)]
    chance = random.Random(seed)
    victim, survivor = chance.sample(pair, 2)
    at = int(ticks.total * chance.uniform(0.15, 0.7))
    wait_until(lambda: applied(client, keys) >= at and victim.id in lease_holders(client, keys).values(),
               timeout=240, what=f"{at} ticks applied, the victim holding shards", serving=victim)
    victim.signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert applied(client, keys) < ticks.total  # killed mid-run
    wait_until(lambda: drained(client, keys, ticks.total), timeout=240, what="the survivor draining",
               serving=survivor)
    assert set(lease_holders(client, keys).values()) == {survivor.id}
    stop_all([survivor])
    assert_exactly_once(client, keys, stream, ticks)


def test_sigkill_of_one_of_two_workers_loses_and_repeats_nothing(tmp_path, client, redis_url, workers):
    """200 assets × 2,000 ticks in 8 shards, 2 workers, one SIGKILLed at a random point: the
    survivor takes its shards over; states and outputs are the single process's, each once."""
    kill_one(0, (200, 2000), tmp_path, client, redis_url, workers)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_other_random_points(seed, tmp_path, client, redis_url, workers):
    kill_one(seed, (40, 400), tmp_path, client, redis_url, workers)


def publish_part(redis_url: str, prefix: str, ticks: Ticks, rows: slice) -> None:
    with ShardedTickProducer(f"{redis_url}?prefix={prefix}", SHARDS) as producer:
        producer.publish(ticks.assets[rows], ticks.stamps[rows], ticks.values[rows])


def test_a_paused_worker_cannot_commit_after_it_resumes_and_its_shards_are_taken_over(tmp_path, client, redis_url,
                                                                                       workers):
    """SIGSTOP past the lease TTL: the other worker takes the paused one's shards over and
    commits them (the second half of the ticks is published meanwhile); after SIGCONT the paused
    worker's leases are found lost (its commit fenced, or its renewal refused:
    ``usp_cluster_lease_losses_total`` on its /metrics) and it writes nothing of what it held;
    the run ends exactly once."""
    ticks = Ticks(40, 1000, seed=7)
    prefix, stream = "pause", "pause-out"
    keys = ClusterKeys(prefix)
    half = ticks.total // 2
    publish_part(redis_url, prefix, ticks, slice(0, half))
    config = write_config(tmp_path / "c.toml")
    paused, other = (launch(workers, redis_url, prefix, stream, config, tmp_path).started() for _ in range(2))
    wait_until(lambda: len(set(lease_holders(client, keys).values())) == 2 and applied(client, keys) > 0,
               timeout=240, what="both workers holding shards", serving=paused)
    held = {k for k, owner in lease_holders(client, keys).items() if owner == paused.id}
    metrics = scrape(paused.port)
    losses = metrics["usp_cluster_lease_losses_total{reason=expired}"] + metrics[
        "usp_cluster_lease_losses_total{reason=fenced}"]
    paused.signal(signal.SIGSTOP)
    try:
        publish_part(redis_url, prefix, ticks, slice(half, None))
        before = {k: client.hget(keys.offset(k), "id") for k in held}
        wait_until(lambda: held <= {k for k, owner in lease_holders(client, keys).items() if owner == other.id}
                   and any(client.hget(keys.offset(k), "id") != before[k] for k in held),
                   timeout=60, what="the other worker taking the shards over and committing", serving=other)
    finally:
        paused.signal(signal.SIGCONT)

    def losses_now() -> float:
        metrics = scrape(paused.port)
        return metrics["usp_cluster_lease_losses_total{reason=expired}"] + metrics[
            "usp_cluster_lease_losses_total{reason=fenced}"]

    wait_until(lambda: losses_now() >= losses + len(held), timeout=30, what="the resumed worker finding its leases "
               "lost", serving=paused)
    assert "lease lost" in paused.stderr or "commit refused" in paused.stderr
    wait_until(lambda: drained(client, keys, ticks.total), timeout=240, what="draining", serving=other)
    stop_all([paused, other])
    assert_exactly_once(client, keys, stream, ticks)


def test_a_third_worker_joining_mid_run_takes_shards_without_loss_or_duplication(tmp_path, client, redis_url,
                                                                                  workers):
    """Two workers, then a third while ticks keep coming: shards move to it (released after their
    commits, acquired from the committed offsets); its /metrics shows its shards, renewals,
    commit latency and lag."""
    ticks = Ticks(40, 1200, seed=11)
    prefix, stream = "join", "join-out"
    keys = ClusterKeys(prefix)
    half = ticks.total // 2
    publish_part(redis_url, prefix, ticks, slice(0, half))
    config = write_config(tmp_path / "c.toml")
    first = [launch(workers, redis_url, prefix, stream, config, tmp_path).started() for _ in range(2)]
    wait_until(lambda: applied(client, keys) > 0, timeout=240, what="some ticks", serving=first[0])
    third = launch(workers, redis_url, prefix, stream, config, tmp_path)
    publish_part(redis_url, prefix, ticks, slice(half, None))
    third.started()
    wait_until(lambda: third.id in lease_holders(client, keys).values(), timeout=120, what="the third holding shards",
               serving=third)
    resumed = third.wait_for_line(r"shard \d+ acquired .* \((\d+) applied\)")
    assert int(resumed.group(1)) > 0  # from a shard's committed offset, not its start
    wait_until(lambda: scrape(third.port).get("usp_cluster_commit_seconds_count", 0) > 0, timeout=60,
               what="a commit of the third", serving=third)
    metrics = scrape(third.port)
    assert 1 <= metrics["usp_cluster_shards_owned"] <= 3
    assert metrics["usp_cluster_lease_renewals_total"] >= 1
    assert any(name.startswith("usp_cluster_lag_entries{shard=") for name in metrics)
    assert metrics["usp_ticks_total"] > 0
    wait_until(lambda: drained(client, keys, ticks.total), timeout=240, what="draining", serving=third)
    stop_all([*first, third])
    assert "released (reassigned)" in first[0].stderr + first[1].stderr
    assert_exactly_once(client, keys, stream, ticks)
