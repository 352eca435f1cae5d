"""Concurrent saves to one key: every save claims its own version, in every store (real Redis and S3).

Two threads save 100 small snapshots each to the same key (``keep`` = 200, so retention deletes
nothing). Each save must either raise or leave its own version, readable and digest-valid: the
versions found afterwards are exactly the blobs whose ``save`` returned, once each. Each writer's
versions are ordered as it saved them, so the newest is some writer's last save.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Callable

import numpy as np
import pytest
import redis
from usp import PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.adapters.stores import FileStore, MemoryStore, RedisStore, S3Store, _file
from usp.ports.state_store import (
    DIGEST_HEX_LEN,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
    StateStore,
    seal,
    verify_blob,
)

from .services import redis_url, s3_client, s3_endpoint

__all__ = ["redis_url", "s3_endpoint"]  # session fixtures used below

WRITERS, SAVES = 2, 100
BUCKET = "usp-concurrency"


def payload(writer: int, n: int) -> bytes:
    return seal(f"writer {writer} save {n:03d}".encode())


def identity(blob: bytes) -> tuple[int, int]:
    words = blob[:-DIGEST_HEX_LEN].split()
    return int(words[1]), int(words[3])


def race(save: Callable[[int, int], object], writers: int = WRITERS, saves: int = SAVES):
    """Run ``save(writer, n)`` for n in 0..saves-1 on ``writers`` threads released together.

    Returns ``(results, errors)``: what each returning call gave, keyed by (writer, n), and the
    exceptions raised.
    """
    start = threading.Barrier(writers)
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []

    def run(writer: int) -> None:
        start.wait()
        for n in range(saves):
            try:
                results[writer, n] = save(writer, n)
            except Exception as exc:  # collected: the test says which ones are acceptable
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    return results, errors


# -- every stored version of a key, oldest first, read straight from the backend -------------------
def file_versions(store: FileStore, key: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((store.root / key).glob("*.snap"))]


def memory_versions(store: MemoryStore, key: str) -> list[bytes]:
    return list(store.history.get(key, ()))


def redis_versions(store: RedisStore, key: str) -> list[bytes]:
    return list(reversed(store.client.lrange(store.prefix + key, 0, -1)))


def s3_versions(store: S3Store, key: str) -> list[bytes]:
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}{key}/")
    names = sorted(item["Key"] for item in listing.get("Contents", ()))  # fixed-width names: version order
    return [store.client.get_object(Bucket=store.bucket, Key=name)["Body"].read() for name in names]


@pytest.fixture(params=["memory", "file", "redis", "s3"])
def stores(request, tmp_path) -> tuple[Callable[..., StateStore], Callable[[StateStore, str], list[bytes]]]:
    """A factory of store instances sharing one backend, and the reader of a key's versions."""
    if request.param == "memory":
        shared: dict[str, list[bytes]] = {}

        def memory(**options) -> MemoryStore:
            store = MemoryStore(**options)
            store.history = shared
            return store
        return memory, memory_versions
    if request.param == "file":
        return (lambda **options: FileStore(tmp_path / "snapshots", **options)), file_versions
    if request.param == "redis":
        client, prefix = redis.Redis.from_url(request.getfixturevalue("redis_url")), f"c{uuid.uuid4().hex[:8]}:"
        return (lambda **options: RedisStore(client=client, prefix=prefix, **options)), redis_versions
    client, prefix = s3_client(request.getfixturevalue("s3_endpoint")), f"c{uuid.uuid4().hex[:8]}/"
    client.create_bucket(Bucket=BUCKET)
    return (lambda **options: S3Store(BUCKET, prefix=prefix, client=client, **options)), s3_versions


def assert_each_save_left_its_own_version(saved: list[bytes], stored: list[bytes]) -> None:
    assert all(verify_blob(blob) for blob in stored)
    assert sorted(stored) == sorted(saved), (
        f"{len(saved)} saves returned, {len(stored)} versions stored, "
        f"{len(set(saved) - set(stored))} missing, {len(stored) - len(set(stored))} duplicated")
    for writer in range(WRITERS):  # one writer's saves are versioned in the order it made them
        mine = [n for w, n in map(identity, stored) if w == writer]
        assert mine == sorted(mine)


@pytest.mark.parametrize("instances", ["one instance", "one instance per writer"])
def test_two_writers_on_one_key_each_leave_their_own_version(stores, instances):
    make, versions = stores
    shared = make(keep=WRITERS * SAVES)
    own = [make(keep=WRITERS * SAVES) for _ in range(WRITERS)]
    pick = (lambda w: shared) if instances == "one instance" else own.__getitem__
    results, errors = race(lambda w, n: pick(w).save("k", payload(w, n)))
    assert all(isinstance(e, SnapshotWriteError) for e in errors), errors  # a conflict is reported, typed
    assert errors == []  # and with two writers none is even needed
    stored = versions(shared, "k")
    assert_each_save_left_its_own_version([payload(w, n) for w, n in results], stored)
    newest = shared.load("k")
    assert newest == stored[-1] and identity(newest)[1] == SAVES - 1


def test_retention_under_concurrent_writers_keeps_the_newest(stores):
    make, versions = stores
    keep = 5
    store = make(keep=keep)
    _, errors = race(lambda w, n: store.save("k", payload(w, n)), saves=30)
    assert errors == []
    stored = versions(store, "k")
    # concurrent prunes may each have missed the other's newest version, never deleted it
    assert keep <= len(stored) <= keep + WRITERS - 1
    assert identity(store.load("k"))[1] == 29
    store.save("k", payload(9, 0))  # one writer alone: retention is exact again
    assert versions(store, "k") == [*stored, payload(9, 0)][-keep:]


def test_a_file_save_that_finds_every_version_taken_reports_the_conflict(tmp_path, monkeypatch):
    """Other writers claiming ``CLAIM_ATTEMPTS`` numbers in a row: the save raises (EEXIST), typed and
    reported, stores nothing, and leaves no temporary file."""
    events: list[object] = []
    store = FileStore(tmp_path, on_event=events.append)
    store.save("k", payload(0, 0))
    claimed: list[str] = []

    def taken(source, target, *args, **kwargs):  # another writer links every number first
        claimed.append(os.path.basename(target))
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))

    monkeypatch.setattr(_file.os, "link", taken)
    with pytest.raises(SnapshotWriteError, match="version numbers in a row were claimed") as raised:
        store.save("k", payload(1, 0))
    monkeypatch.undo()
    assert raised.value.errno == errno.EEXIST
    assert len(claimed) == _file.CLAIM_ATTEMPTS and set(claimed) == {"000000000002.snap"}  # listed afresh each time
    assert sorted(os.listdir(tmp_path / "k")) == ["000000000001.snap"]  # nothing stored, no temporary file left
    assert store.load("k") == payload(0, 0)
    assert [(type(e), e.errno) for e in events] == [(SnapshotWriteFailedEvent, errno.EEXIST)]


# -- through the predictor API ----------------------------------------------------------------------
SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, kurtosis_window=32, kernel_a_rkhs_points=16,
                        enabled_kernels=("A",))


def test_two_threads_saving_through_the_predictor_api_lose_no_snapshot(tmp_path):
    predictors = [UniversalPredictor(SMALL, ReplayClock()) for _ in range(WRITERS)]
    for w, p in enumerate(predictors):  # two different states
        for i in range(5 + w):
            p.step(ProcessState(float(np.sin(i + w)), 1_700_000_000_000_000_000 + i * 10_000_000))
    stores = [FileStore(tmp_path, keep=WRITERS * SAVES) for _ in range(WRITERS)]
    results, errors = race(lambda w, n: predictors[w].save_snapshot("asset", store=stores[w]))
    assert errors == []
    files = sorted((tmp_path / "asset").glob("*.snap"))
    blobs = [path.read_bytes() for path in files]
    assert len({path.name for path in files}) == len(files) == WRITERS * SAVES
    assert all(verify_blob(blob) for blob in blobs)
    receipts = sorted(r.digest for r in results.values())
    assert sorted(blob[-DIGEST_HEX_LEN:].decode() for blob in blobs) == receipts
    restored = UniversalPredictor(SMALL, ReplayClock())
    assert restored.load_snapshot(tmp_path / "asset")
    for p in predictors:
        p.close()


def test_a_save_after_another_returned_is_the_newest_across_instances(stores):
    """Two instances (two processes' view of one backend), one writing while the other is idle."""
    make, versions = stores
    first, second = make(), make()
    schedule = [first, *[second] * 7, first, first, second]
    for n, store in enumerate(schedule):
        store.save("k", payload(int(store is second), n))
        assert identity(make().load("k")) == (int(store is second), n)  # a third instance reads
    assert [identity(b)[1] for b in versions(first, "k")] == list(range(len(schedule)))[-5:]
