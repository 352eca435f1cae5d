"""Store keys are single plain names: no key can escape its store (file root, Redis prefix, S3 prefix).

Every store refuses path-like and malformed keys with ``SnapshotKeyError`` before touching its
backend (real Redis and S3 servers here), and every key it accepts lands exactly at
``<root>/<key>`` / ``<prefix><key>``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usp.adapters.stores import KEY_PATTERN, FileStore, MemoryStore, RedisStore, S3Store, check_key
from usp.domain import USPError
from usp.ports.state_store import SnapshotKeyError, seal

from .services import redis_url, s3_client, s3_endpoint

__all__ = ["redis_url", "s3_endpoint"]  # session fixtures used below

BLOB = seal(b"a small snapshot")
BUCKET = "usp-keys"
HOSTILE = ["..", ".", "../x", "../../etc/passwd", "a/b", "a/../b", "/etc/passwd", "/", "a\x00b", "\x00",
           "C:\\x", "a\\..\\b", "..\\x", "", " ", "a b", "a\nb", "x\n", ".hidden", "é", "x" * 201, "~", "$HOME",
           "*", "a?", "%2e%2e", "a/", None, 7, b"bytes", Path("p")]


class Backend:
    """A store of one kind on a fresh namespace, and everything that namespace holds."""

    def __init__(self, kind: str, request, root: Path) -> None:
        self.kind, self.root = kind, root
        if kind == "memory":
            self.store = MemoryStore()
        elif kind == "file":
            self.store = FileStore(root)
        elif kind == "redis":
            self.client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            self.store = RedisStore(client=self.client, prefix=f"k{uuid.uuid4().hex[:8]}:")
        else:
            self.client = s3_client(request.getfixturevalue("s3_endpoint"))
            self.client.create_bucket(Bucket=BUCKET)
            self.store = S3Store(BUCKET, prefix=f"k{uuid.uuid4().hex[:8]}/", client=self.client)

    def contents(self) -> list[str]:
        """Every name stored, relative to the store's namespace."""
        if self.kind == "memory":
            return sorted(self.store.history)
        if self.kind == "file":
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if not p.is_dir())
        if self.kind == "redis":
            return sorted(k.decode()[len(self.store.prefix):] for k in self.client.keys(self.store.prefix + "*"))
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.store.prefix)
        return sorted(o["Key"][len(self.store.prefix):] for o in listing.get("Contents", ()))

    def owner(self, name: str) -> str:
        """The key a stored name belongs to: the name itself, or the folder a version sits in."""
        if self.kind in ("memory", "redis"):
            return name
        folder, version = name.split("/")  # exactly one level: <key>/<version>.snap
        assert version.endswith(".snap")
        return folder


@pytest.fixture(params=["memory", "file", "redis", "s3"])
def backend(request, tmp_path) -> Backend:
    return Backend(request.param, request, tmp_path / "store")


def test_hostile_keys_are_refused_by_every_store_and_nothing_is_stored(backend):
    store = backend.store
    for key in HOSTILE:
        for call in (lambda k: store.save(k, BLOB), store.load, lambda k: store.save_many({k: BLOB}),
                     lambda k: store.load_many([k]), lambda k: store.save_many({"fine": BLOB, k: BLOB})):
            with pytest.raises(SnapshotKeyError, match="invalid snapshot key") as info:
                call(key)
            assert isinstance(info.value, ValueError) and isinstance(info.value, USPError)
    assert backend.contents() == []  # not even the valid key of a batch holding a bad one


@given(key=st.one_of(st.text(max_size=12),
                     st.lists(st.sampled_from(["..", ".", "/", "\\", "\x00", "a", "B7", "-", ":", "=", "é"]),
                              max_size=6).map("".join)))
def test_check_key_accepts_only_single_plain_names(key):
    root = Path("/srv/snapshots")
    try:
        assert check_key(key) == key
    except SnapshotKeyError:
        assert not KEY_PATTERN.fullmatch(key)
        return
    assert 1 <= len(key) <= 200 and key not in (".", "..") and not key.startswith(".")
    assert not {"/", "\\", "\x00"} & set(key) and not os.path.isabs(key)
    assert (root / key).parent == root and os.path.normpath(root / key) == str(root / key)


@pytest.fixture(params=["memory", "file", "redis", "s3"])
def kind(request) -> str:
    return request.param


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])  # fresh store per example
@given(keys=st.lists(st.one_of(st.sampled_from(HOSTILE[:20]),
                               st.from_regex(KEY_PATTERN, fullmatch=True).filter(lambda k: len(k) <= 40)),
                     min_size=1, max_size=4))
def test_accepted_keys_land_at_their_own_name_refused_ones_store_nothing(kind, request, keys):
    with tempfile.TemporaryDirectory() as tmp:
        backend = Backend(kind, request, Path(tmp) / "store")
        saved = set()
        for key in keys:
            try:
                check_key(key)
            except SnapshotKeyError:
                with pytest.raises(SnapshotKeyError):
                    backend.store.save(key, BLOB)
                continue
            backend.store.save(key, BLOB)
            saved.add(key)
            assert backend.store.load(key) == BLOB
        assert {backend.owner(name) for name in backend.contents()} == saved
