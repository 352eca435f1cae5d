"""StateStore conformance: every store (memory, file, real Redis, real S3 over HTTP) behaves alike."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from dependency_injector import providers
from hypothesis import given
from hypothesis import strategies as st
from usp.adapters.stores import FileStore, MemoryStore, RedisStore, S3Store
from usp.application.snapshot import decode_snapshot, encode_snapshot
from usp.container import Container
from usp.domain import IntegrityError
from usp.ports.state_store import (
    CorruptedSnapshotEvent,
    InsufficientStorageError,
    InsufficientStorageEvent,
    SnapshotReadError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
    StateStore,
    seal,
    verify_blob,
)

from .services import redis_server, redis_url, s3_client, s3_endpoint

__all__ = ["redis_url", "s3_endpoint"]  # session fixtures used below


def blob(n: int, size: int = 64) -> bytes:
    """Snapshot number ``n`` (its tick counter says which one it is)."""
    return encode_snapshot({
        "schema_version": "1.0", "timestamp": n, "config": {"n": n},
        "global": {"tick": np.asarray(n, np.int64), "signal": np.full(size, float(n))},
        "telemetry": {"kurtosis": 3.0, "dgm_entropy": 0.0, "adaptive_threshold": 5.0},
        "flags": {"degraded_inference": False, "emergency": False, "regime_change": False,
                  "mode_collapse": False},
        "kernels": {"A": {"w": np.arange(4.0)}},
    })


def tick(data: bytes | None) -> int | None:
    return None if data is None else int(decode_snapshot(data, expected_schema="1.0")["global"]["tick"])


def flip(data: bytes, bit: int = 100) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# -- one backend per store, with a way to tamper with what it holds ------------------------------
class MemoryBackend:
    def __init__(self) -> None:
        self.history: dict[str, list[bytes]] = {}

    def make(self, **options) -> MemoryStore:
        store = MemoryStore(**options)
        store.history = self.history  # every store of this backend shares the same memory
        return store

    def tamper(self, key: str, index: int, data: bytes) -> None:
        self.history[key][-1 - index] = data

    def count(self, key: str) -> int:
        return len(self.history.get(key, ()))


class FileBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    def make(self, **options) -> FileStore:
        return FileStore(self.root, **options)

    def files(self, key: str) -> list[Path]:
        return sorted((self.root / key).glob("*.snap"), reverse=True)

    def tamper(self, key: str, index: int, data: bytes) -> None:
        self.files(key)[index].write_bytes(data)

    def count(self, key: str) -> int:
        return len(self.files(key))


class RedisBackend:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"

    def make(self, **options) -> RedisStore:
        return RedisStore(client=self.client, prefix=self.prefix, **options)

    def tamper(self, key: str, index: int, data: bytes) -> None:
        self.client.lset(self.prefix + key, index, data)

    def count(self, key: str) -> int:
        return self.client.llen(self.prefix + key)


def s3_names(where: S3Backend | S3Store, key: str) -> list[str]:
    """The object names of ``key``'s versions, newest first (fixed-width names sort by version)."""
    listing = where.client.list_objects_v2(Bucket=where.bucket, Prefix=f"{where.prefix}{key}/")
    return sorted((o["Key"] for o in listing.get("Contents", ())), reverse=True)


class S3Backend:
    bucket = "usp-test"

    def __init__(self, endpoint: str) -> None:
        self.client = s3_client(endpoint)
        self.prefix = f"t{uuid.uuid4().hex[:8]}/"

    def make(self, **options) -> S3Store:
        return S3Store(self.bucket, prefix=self.prefix, client=self.client, **options)

    def names(self, key: str) -> list[str]:
        return s3_names(self, key)

    def tamper(self, key: str, index: int, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.names(key)[index], Body=data)

    def count(self, key: str) -> int:
        return len(self.names(key))


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    s3_client(s3_endpoint).create_bucket(Bucket=S3Backend.bucket)
    return S3Backend.bucket


@pytest.fixture(params=["memory", "file", "redis", "s3"])
def backend(request, tmp_path):
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "file":
        return FileBackend(tmp_path / "snapshots")
    if request.param == "redis":
        return RedisBackend(request.getfixturevalue("redis_url"))
    request.getfixturevalue("s3_bucket")
    return S3Backend(request.getfixturevalue("s3_endpoint"))


# -- conformance ------------------------------------------------------------------------------------
def test_newest_wins_and_unknown_keys_are_cold_starts(backend):
    store = backend.make()
    assert isinstance(store, StateStore)
    assert store.load("BTC-USD") is None
    for n in (1, 2, 3):
        store.save("BTC-USD", blob(n))
    assert tick(store.load("BTC-USD")) == 3
    assert tick(backend.make().load("BTC-USD")) == 3  # a fresh instance sees the same state
    assert store.load("ETH-USD") is None


def test_keeps_the_last_five_versions(backend):
    store = backend.make()
    for n in range(1, 9):
        store.save("k", blob(n))
    assert backend.count("k") == 5
    assert tick(store.load("k")) == 8
    for index in range(4):
        backend.tamper("k", index, b"garbage")
    assert tick(store.load("k")) == 4  # the oldest kept version


def test_corrupt_newest_falls_back_and_reports(backend):
    events = []
    store = backend.make(on_event=events.append)
    for n in (1, 2, 3):
        store.save("asset", blob(n))
    backend.tamper("asset", 0, flip(blob(3)))
    assert tick(store.load("asset")) == 2
    assert len(events) == 1 and isinstance(events[0], CorruptedSnapshotEvent)
    assert events[0].key == "asset" and "digest" in events[0].reason
    backend.tamper("asset", 1, blob(2)[:-1])  # truncated
    assert tick(store.load("asset")) == 1
    backend.tamper("asset", 2, b"")
    assert store.load("asset") is None  # nothing valid left: cold start
    assert len(events) == 1 + 2 + 3
    store.save("asset", blob(4))  # and the store recovers on the next save
    assert tick(store.load("asset")) == 4


def test_invalid_blobs_and_keys_are_refused(backend):
    store = backend.make()
    store.save("a", blob(1))
    for bad in (flip(blob(2)), blob(2)[:-5], b"", b"x" * 64):
        with pytest.raises(IntegrityError, match="refusing to save"):
            store.save("a", bad)
    assert tick(store.load("a")) == 1 and backend.count("a") == 1
    for key in ("", ".hidden", "../escape", "a/b", "a b", "x" * 201, None):
        with pytest.raises(ValueError, match="invalid snapshot key"):
            store.save(key, blob(1))
        with pytest.raises(ValueError, match="invalid snapshot key"):
            store.load(key)


def test_batches(backend):
    store = backend.make()
    items = {f"asset-{i:03d}": blob(i) for i in range(20)}
    store.save_many(items)
    store.save_many({})
    loaded = store.load_many([*items, "missing"])
    assert loaded.pop("missing") is None
    assert {k: tick(v) for k, v in loaded.items()} == {k: i for i, k in enumerate(items)}
    backend.tamper("asset-007", 0, b"rot")
    store.save_many({"asset-003": blob(100)})
    loaded = store.load_many(["asset-007", "asset-003"])
    assert loaded["asset-007"] is None and tick(loaded["asset-003"]) == 100
    assert store.load_many([]) == {}


def test_oversized_snapshots_are_refused(backend):
    store = backend.make(max_bytes=2000)
    store.save("s", blob(1))
    with pytest.raises(IntegrityError, match="exceeds the limit"):
        store.save("s", blob(2, size=1000))
    assert tick(store.load("s")) == 1


# -- P: bit rot and truncation of the newest snapshot (memory and file stores) -------------------
damage = st.one_of(st.builds(lambda b: ("flip", b), st.integers(0, 8 * len(blob(0)) - 1)),
                   st.builds(lambda n: ("cut", n), st.integers(0, len(blob(0)) - 1)))


def damaged(data: bytes, how: tuple[str, int]) -> bytes:
    kind, where = how
    return flip(data, where) if kind == "flip" else data[:where]


@pytest.mark.parametrize("kind", ["memory", "file"])
@given(how=damage, earlier=st.integers(0, 3))
def test_damaged_newest_is_rejected_and_the_previous_valid_one_loads(kind, how, earlier):
    with tempfile.TemporaryDirectory() as root:
        backend = MemoryBackend() if kind == "memory" else FileBackend(Path(root))
        events = []
        store = backend.make(on_event=events.append)
        for n in range(earlier + 1):
            store.save("x", blob(n))
        bad = damaged(blob(earlier), how)
        assert not verify_blob(bad)
        backend.tamper("x", 0, bad)
        assert tick(store.load("x")) == (earlier - 1 if earlier else None)
        assert [type(e) for e in events] == [CorruptedSnapshotEvent]


# -- file store specifics ---------------------------------------------------------------------------
def test_file_layout_ignores_stray_files(tmp_path):
    store = FileStore(tmp_path)
    store.save("k", blob(1))
    folder = tmp_path / "k"
    (folder / ".tmp-crashed.part").write_bytes(b"half a snap")
    (folder / "999999999999.snap.part").write_bytes(b"x")
    (folder / "notes.txt").write_text("hello")
    assert tick(store.load("k")) == 1
    store.save("k", blob(2))
    assert sorted(p.name for p in folder.glob("*.snap")) == ["000000000001.snap", "000000000002.snap"]
    assert (folder / ".tmp-crashed.part").exists()  # too recent to be swept
    os.utime(folder / ".tmp-crashed.part", (0, 0))
    store.save("k", blob(3))
    assert not (folder / ".tmp-crashed.part").exists() and (folder / "notes.txt").exists()


def test_file_versions_are_never_reused(tmp_path):
    store = FileStore(tmp_path, keep=2)
    for n in range(1, 5):
        store.save("k", blob(n))
    (tmp_path / "k" / "000000000004.snap").write_bytes(b"rot")
    store.save("k", blob(5))
    names = sorted(p.name for p in (tmp_path / "k").glob("*.snap"))
    assert names == ["000000000004.snap", "000000000005.snap"]


def test_file_store_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("USP_SNAPSHOT_DIR", str(tmp_path / "env-root"))
    FileStore().save("k", blob(1))
    assert (tmp_path / "env-root" / "k" / "000000000001.snap").read_bytes() == blob(1)


def test_unreadable_file_store_is_an_error_not_a_cold_start(tmp_path):
    (tmp_path / "k").write_text("a file where the key's directory should be")
    with pytest.raises(SnapshotReadError):
        FileStore(tmp_path).load("k")


# -- Redis specifics --------------------------------------------------------------------------------
class CountingClient:
    """Wraps a redis client and counts pipelines (= round trips of a batch)."""

    def __init__(self, client) -> None:
        self.client, self.pipelines = client, 0

    def pipeline(self, **options):
        self.pipelines += 1
        return self.client.pipeline(**options)


def test_redis_round_trips_one_and_a_thousand_assets_pipelined(redis_url):
    client = CountingClient(redis.Redis.from_url(redis_url))
    store = RedisStore(client=client, prefix=f"big{uuid.uuid4().hex[:6]}:")
    store.save("solo", blob(7))
    assert tick(store.load("solo")) == 7
    items = {f"A{i:04d}": blob(i, size=256) for i in range(1000)}
    client.pipelines = 0
    store.save_many(items)
    assert client.pipelines == 1
    loaded = store.load_many(items)
    assert client.pipelines == 2
    assert all(loaded[k] == v for k, v in items.items())
    store.save_many({"A0500": blob(-1)})
    client.client.lset(f"{store.prefix}A0500", 0, flip(blob(-1)))
    client.pipelines = 0
    loaded = store.load_many(items)
    assert client.pipelines == 2  # newest of all, then older versions of the one damaged key
    assert tick(loaded["A0500"]) == 500 and tick(loaded["A0999"]) == 999


def test_redis_connection_and_credentials_from_environment(monkeypatch):
    with redis_server(requirepass="s3cret") as url:
        monkeypatch.setenv("USP_REDIS_URL", url)
        monkeypatch.setenv("USP_REDIS_PREFIX", "envtest:")
        with pytest.raises(SnapshotWriteError):
            RedisStore().save("k", blob(1))  # no password
        monkeypatch.setenv("USP_REDIS_PASSWORD", "s3cret")
        store = RedisStore()
        store.save("k", blob(1))
        assert tick(store.load("k")) == 1
        assert redis.Redis.from_url(url, password="s3cret").llen("envtest:k") == 1


def test_redis_unreachable_is_an_error_not_a_cold_start():
    from .services import free_port

    events = []
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", on_event=events.append, timeout_s=1)
    with pytest.raises(SnapshotWriteError, match="Redis failed"):
        store.save("k", blob(1))
    assert isinstance(events[0], SnapshotWriteFailedEvent)
    with pytest.raises(SnapshotReadError):
        store.load("k")


def test_redis_out_of_memory_is_insufficient_storage():
    with redis_server(maxmemory="3mb", **{"maxmemory-policy": "noeviction"}) as url:
        events = []
        store = RedisStore(url, on_event=events.append)
        with pytest.raises(InsufficientStorageError):
            for n in range(100):
                store.save(f"k{n}", blob(n, size=20_000))
        assert isinstance(events[-1], InsufficientStorageEvent)
        assert tick(store.load("k0")) == 0  # earlier snapshots intact


# -- S3 specifics -----------------------------------------------------------------------------------
def test_s3_round_trip_and_tampered_object_rejected(s3_endpoint, s3_bucket):
    client = s3_client(s3_endpoint)
    events = []
    store = S3Store(s3_bucket, prefix="tamper/", client=client, on_event=events.append)
    store.save("ES", blob(1))
    store.save("ES", blob(2))
    assert tick(store.load("ES")) == 2
    newest, oldest = s3_names(store, "ES")
    assert re.fullmatch(r"tamper/ES/000000000002-[0-9a-f]{16}\.snap", newest)
    client.put_object(Bucket=s3_bucket, Key=newest, Body=flip(blob(2), 4000))
    assert tick(store.load("ES")) == 1 and isinstance(events[-1], CorruptedSnapshotEvent)
    assert events[-1].location == f"s3://{s3_bucket}/{newest}"
    client.put_object(Bucket=s3_bucket, Key=oldest, Body=seal(b"x")[:-1])
    assert store.load("ES") is None


def test_s3_reads_names_without_a_nonce_as_the_oldest_of_their_number(s3_endpoint, s3_bucket):
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="legacy/k/000000000002.snap", Body=blob(2))
    store = S3Store(s3_bucket, prefix="legacy/", client=client, keep=2)
    assert tick(store.load("k")) == 2
    store.save("k", blob(3))
    assert tick(store.load("k")) == 3
    store.save("k", blob(4))  # the legacy version is the oldest: pruned
    assert [name[len("legacy/k/"):][:13] for name in s3_names(store, "k")] == ["000000000004-", "000000000003-"]


def test_s3_settings_from_environment_and_retention_across_instances(s3_endpoint, s3_bucket, monkeypatch):
    for name, value in {"USP_S3_BUCKET": s3_bucket, "USP_S3_PREFIX": "env/",
                        "USP_S3_ENDPOINT_URL": s3_endpoint, "USP_S3_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    first = S3Store()
    for n in range(1, 4):
        first.save("k", blob(n))
    second = S3Store()  # knows nothing: lists the bucket to continue the numbering
    for n in range(4, 8):
        second.save("k", blob(n))
    assert tick(first.load("k")) == 7
    listing = s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="env/k/")
    assert [o["Key"][len("env/k/"):][:12] for o in listing["Contents"]] == [f"{n:012d}" for n in range(3, 8)]


def test_s3_missing_bucket_is_a_write_and_read_error(s3_endpoint):
    events = []
    store = S3Store("no-such-bucket", client=s3_client(s3_endpoint), on_event=events.append)
    with pytest.raises(SnapshotWriteError, match="S3 failed"):
        store.save("k", blob(1))
    assert isinstance(events[0], SnapshotWriteFailedEvent)
    with pytest.raises(SnapshotReadError):
        store.load("k")
    with pytest.raises(ValueError, match="bucket"):
        S3Store(client=object())


# -- container --------------------------------------------------------------------------------------
def test_container_selects_the_store_by_kind(tmp_path, redis_url, s3_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    events = []
    settings = {"memory": {}, "file": {"path": str(tmp_path), "keep": 3}, "redis": {"url": redis_url},
                "s3": {"bucket": s3_bucket, "endpoint_url": s3_endpoint, "prefix": "container/"}}
    expected = {"memory": MemoryStore, "file": FileStore, "redis": RedisStore, "s3": S3Store}
    for kind, options in settings.items():
        container = Container()
        container.store_events.override(providers.Object(events.append))
        container.config.from_dict({"storage": {"kind": kind, **options}})
        store = container.state_store()
        assert type(store) is expected[kind] and store is container.state_store()
        store.save("c", blob(1))
        assert tick(store.load("c")) == 1
    configured = Container(config={"storage": {"kind": "file", "path": str(tmp_path), "keep": 3}})
    assert configured.state_store().keep == 3
    fake = MemoryStore()
    container = Container()
    container.state_store.override(providers.Object(fake))
    assert container.state_store() is fake
