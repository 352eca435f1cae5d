"""FileStore under hostile conditions: SIGKILL mid-write, full disks, I/O errors, piles of rot."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from usp.adapters.stores import FileStore
from usp.application.snapshot import decode_snapshot, encode_snapshot
from usp.ports.state_store import (
    CorruptedSnapshotEvent,
    InsufficientStorageError,
    InsufficientStorageEvent,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
)


def blob(n: int, size: int = 64) -> bytes:
    return encode_snapshot({
        "schema_version": "1.0", "timestamp": n, "config": {},
        "global": {"tick": np.asarray(n, np.int64), "signal": np.full(size, float(n))},
        "telemetry": {"kurtosis": 3.0, "dgm_entropy": 0.0, "adaptive_threshold": 5.0},
        "flags": {"degraded_inference": False, "emergency": False, "regime_change": False,
                  "mode_collapse": False},
        "kernels": {},
    })


def tick(data: bytes) -> int:
    return int(decode_snapshot(data, expected_schema="1.0")["global"]["tick"])


# -- SIGKILL at random moments ----------------------------------------------------------------------
# A zygote imports USP once, then forks one writer per trial; each writer continues the tick count
# from the newest valid snapshot and saves snapshots of random sizes (in short writes) as fast as it
# can until the test kills it with SIGKILL after a random few milliseconds.
ZYGOTE = r"""
import os, random, sys
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from test_store_crash import blob, tick
from usp.adapters.stores import FileStore

store = FileStore(sys.argv[1])
for line in sys.stdin:
    command, value = line.split()
    if command == "reap":
        os.waitpid(int(value), 0)
        print("reaped", flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        # a slow disk: every write call stores at most 4 KiB (a legal short write), so kills land
        # inside files being written, not only between whole-file writes
        real_write = os.write
        os.write = lambda fd, data: real_write(fd, bytes(memoryview(data)[:4096]))
        rng = random.Random(int(value))
        newest = store.load("asset")
        n = tick(newest) if newest is not None else 0
        while True:
            n += 1
            store.save("asset", blob(n, rng.choice([8, 1_000, 20_000, 200_000])))
    print(pid, flush=True)
"""


def test_sigkill_during_writes_never_loses_the_last_valid_snapshot(tmp_path):
    root = tmp_path / "store"
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(root), __file__], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    events: list = []
    store = FileStore(root, on_event=events.append)
    rng = random.Random(20260221)
    newest_tick, trials_with_progress, leftovers = None, 0, 0
    try:
        for trial in range(60):
            zygote.stdin.write(f"fork {trial}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.012) if rng.random() < 0.7 else rng.uniform(0.012, 0.04))
            os.kill(pid, signal.SIGKILL)
            zygote.stdin.write(f"reap {pid}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "reaped"

            started = time.monotonic()
            loaded = store.load("asset")
            assert time.monotonic() - started < 2.0  # bounded: one pass over at most a few files
            if loaded is None:
                assert newest_tick is None, f"trial {trial}: snapshots existed but none loads"
                continue
            current = tick(loaded)
            assert newest_tick is None or current >= newest_tick, "the store went back in time"
            trials_with_progress += newest_tick is None or current > newest_tick
            newest_tick = current
            leftovers = len(list((root / "asset").glob(".tmp-*")))
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
        zygote.stdout.close()
    assert events == []  # atomic renames: no version was ever seen half-written
    assert newest_tick is not None and trials_with_progress >= 3
    assert leftovers >= 1  # some kills did land in the middle of a write
    # kills between a rename and the pruning leave extra versions; the next complete save prunes them
    store.save("asset", blob(newest_tick + 1))
    assert len(list((root / "asset").glob("*.snap"))) == store.keep
    print(f"60 kills: newest tick {newest_tick}, {trials_with_progress} trials advanced, "
          f"{leftovers} stray temp files ignored")


def test_load_of_a_pile_of_rot_ends_in_one_pass(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    for version in range(1, 301):
        (folder / f"{version:012d}.snap").write_bytes(os.urandom(version))
    events: list = []
    assert FileStore(tmp_path, on_event=events.append).load("k") is None
    assert len(events) == 300 and all(isinstance(e, CorruptedSnapshotEvent) for e in events)
    assert events[0].location.endswith("000000000300.snap")  # newest first


# -- full disk and I/O errors ---------------------------------------------------------------------
@pytest.fixture
def store_with_history(tmp_path):
    events: list = []
    store = FileStore(tmp_path, on_event=events.append)
    for n in (1, 2):
        store.save("k", blob(n))
    before = {p.name: p.read_bytes() for p in (tmp_path / "k").iterdir()}
    return store, events, tmp_path / "k", before


def assert_untouched(store, folder: Path, before: dict) -> None:
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp file left either
    assert tick(store.load("k")) == 2


def test_free_space_precheck_refuses_before_writing(store_with_history, monkeypatch):
    store, events, folder, before = store_with_history
    size = len(blob(3))
    usage = shutil.disk_usage(folder)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2 * size - 1))
    with pytest.raises(InsufficientStorageError, match=r"only \d+ bytes are free") as info:
        store.save("k", blob(3))
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, SnapshotWriteError)
    assert events == [InsufficientStorageEvent(key="k", location=str(folder), required_bytes=size,
                                               free_bytes=2 * size - 1)]
    assert_untouched(store, folder, before)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2 * size))
    store.save("k", blob(3))
    assert tick(store.load("k")) == 3


def failing(real, code: int, after_bytes: int | None = None):
    """A stand-in for os.write / os.fsync / os.link that fails with ``code``."""
    def fake(*args):
        if after_bytes and len(args) == 2 and isinstance(args[1], memoryview | bytes):
            real(args[0], bytes(args[1][:after_bytes]))  # a partial write lands first
        raise OSError(code, os.strerror(code))
    return fake


@pytest.mark.parametrize("where, code", [("write", errno.ENOSPC), ("fsync", errno.ENOSPC),
                                         ("write", errno.EDQUOT), ("write", errno.EIO),
                                         ("fsync", errno.EIO), ("link", errno.EIO)])
def test_errors_while_writing_are_typed_and_leave_history_intact(store_with_history, monkeypatch,
                                                                 where, code):
    store, events, folder, before = store_with_history
    monkeypatch.setattr(os, where, failing(getattr(os, where), code, after_bytes=100))
    with pytest.raises(SnapshotWriteError) as info:
        store.save("k", blob(3, size=5_000))
    monkeypatch.undo()
    no_space = code in (errno.ENOSPC, errno.EDQUOT)
    assert isinstance(info.value, InsufficientStorageError) == no_space
    assert info.value.errno == code and str(folder) in str(info.value)
    assert len(events) == 1
    assert isinstance(events[0], InsufficientStorageEvent if no_space else SnapshotWriteFailedEvent)
    assert_untouched(store, folder, before)
    store.save("k", blob(3))  # the disk recovered: numbering continues
    assert tick(store.load("k")) == 3 and (folder / "000000000003.snap").exists()


def test_unwritable_directory_is_a_write_error(tmp_path):
    (tmp_path / "k").write_text("not a directory")
    events: list = []
    with pytest.raises(SnapshotWriteError):
        FileStore(tmp_path, on_event=events.append).save("k", blob(1))
    assert isinstance(events[0], SnapshotWriteFailedEvent)
