"""The persistent compilation cache never holds a partial entry: USP writes each one to a
temporary file and renames it into place (``usp._jax_setup.atomic_cache_writes``), so a process
killed mid-write, or a reader racing a writer, cannot meet a truncated executable."""

from __future__ import annotations

import pathlib

import pytest
from jax._src.lru_cache import LRUCache
from usp import _jax_setup


def test_usp_installs_the_atomic_writer():
    assert _jax_setup.atomic_cache_writes() is True
    assert getattr(LRUCache.put, "usp_atomic", False)


def test_an_entry_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    cache = LRUCache(str(tmp_path), max_size=-1)
    cache.put("whole", b"x" * 1000)
    assert cache.get("whole") == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole-cache"]

    real_write = pathlib.Path.write_bytes

    def dies_halfway(self, data):  # the writer is killed after half the bytes
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_bytes", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        cache.put("cut", b"y" * 1000)
    monkeypatch.undo()
    assert cache.get("cut") is None  # no truncated entry for a reader to load
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole-cache"]  # nor a stray temporary file
    cache.put("cut", b"y" * 1000)
    assert cache.get("cut") == b"y" * 1000

