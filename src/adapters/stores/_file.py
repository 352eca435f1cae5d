"""``FileStore``: crash-safe snapshots in a directory, one sub-directory per key.

Layout: ``<root>/<key>/<version:012d>.snap``, versions numbered 1, 2, 3 … A save writes the blob
to a temporary file created exclusively in the same directory (``.tmp-*.part``) and fsyncs it.
It then *claims* the next version by hard-linking that file under its name: ``link`` creates the
name only if it is absent, in one step, so two writers (threads or processes) never get the same
version. A writer that finds its number taken lists the directory again and takes the next one.
The directory is then fsynced and the temporary name removed. At every instant each ``.snap``
file is either absent or complete, even if the process is killed mid-write. Temporary files left
by a crash are ignored by ``load`` and removed by a later ``save`` once stale. The file system must
support hard links (every POSIX local file system and NFS do; FAT does not: saves then fail).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

from ...ports.state_store import (
    DEFAULT_MAX_BLOB_BYTES,
    EventCallback,
    InsufficientStorageError,
    SnapshotReadError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
)
from ._common import (
    DEFAULT_KEEP,
    Unreadable,
    check_batch,
    check_blob,
    check_key,
    emit,
    log,
    newest_valid,
    no_space,
    positive,
)

_VERSION = re.compile(r"(\d{12})\.snap")
_TMP_PREFIX, _TMP_SUFFIX = ".tmp-", ".part"
STALE_TMP_SECONDS = 600.0
CLAIM_ATTEMPTS = 100  # versions taken by other writers in a row before a save reports the conflict


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Snapshots as files under ``root`` (argument, else ``$USP_SNAPSHOT_DIR``, else ``snapshots``).

    Keeps the newest ``keep`` versions per key. Before writing, checks that the file system has at
    least ``free_space_factor`` × the blob size free. Any number of writers (threads, processes,
    store instances) may save one key at once: each save leaves a version of its own or raises.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, keep: int | None = None,
                 on_event: EventCallback | None = None, max_bytes: int | None = None,
                 free_space_factor: float = 2.0) -> None:
        self.root = Path(root if root is not None else os.environ.get("USP_SNAPSHOT_DIR", "snapshots"))
        self.keep = positive(keep, DEFAULT_KEEP, "keep")
        self.max_bytes = positive(max_bytes, DEFAULT_MAX_BLOB_BYTES, "max_bytes")
        self.free_space_factor = float(free_space_factor)
        self.on_event = on_event

    # -- port -------------------------------------------------------------------------------------
    def save(self, key: str, blob: bytes) -> None:
        """Write ``blob`` as a new version of ``key`` (atomically, under a number of its own), then prune.

        :raises InsufficientStorageError: free space below the factor × size, or ENOSPC/EDQUOT.
        :raises SnapshotWriteError: any other OS error, or ``CLAIM_ATTEMPTS`` version numbers in a
            row taken by other writers (errno EEXIST); earlier versions are untouched.
        """
        blob = check_blob(check_key(key), blob, self.max_bytes)
        folder = self.root / key
        target = folder / "<next>.snap"
        try:
            self._make_dir(folder)
            free = shutil.disk_usage(folder).free
            if free < self.free_space_factor * len(blob):
                emit(self.on_event, no_space(key, str(folder), len(blob), free))
                raise InsufficientStorageError(
                    errno.ENOSPC, f"snapshot {key!r} needs {len(blob)} bytes and the store keeps "
                    f"{self.free_space_factor:g}x that free, but only {free} bytes are free", str(folder))
            tmp = self._write_temp(folder, blob)
            try:
                target = self._claim(folder, tmp)
            finally:
                with contextlib.suppress(OSError):  # a leftover is swept once stale
                    os.unlink(tmp)
            _fsync_dir(folder)
        except SnapshotWriteError:
            raise
        except OSError as exc:
            raise self._failure(key, target, exc, len(blob)) from exc
        self._prune(folder)

    def load(self, key: str) -> bytes | None:
        """The newest version of ``key`` that verifies (older ones tried in turn), else None.

        :raises SnapshotReadError: the key's directory exists but cannot be listed.
        """
        folder = self.root / check_key(key)
        try:
            versions = self._versions(folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotReadError(exc.errno, f"cannot list snapshots of {key!r}: {exc}",
                                    str(folder)) from exc
        candidates = ((str(path), partial(self._read, path))
                      for path in (folder / f"{v:012d}.snap" for v in versions))
        return newest_valid(key, candidates, max_bytes=self.max_bytes, on_event=self.on_event)

    def save_many(self, items: Mapping[str, bytes]) -> None:
        """``save`` each item in turn, every key and blob checked first; stops at the first write
        failure (the keys before it are saved)."""
        for key, blob in check_batch(items, self.max_bytes).items():
            self.save(key, blob)

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``load`` for each key."""
        return {key: self.load(key) for key in keys}

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _versions(folder: Path) -> list[int]:
        """Version numbers present in ``folder``, newest first (temporary files ignored)."""
        found = (_VERSION.fullmatch(name) for name in os.listdir(folder))
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def _make_dir(self, folder: Path) -> None:
        """Create ``folder`` (and missing parents), fsyncing each parent so the entry is durable."""
        if folder.is_dir():
            return
        if folder.parent != folder:
            self._make_dir(folder.parent)
        try:
            folder.mkdir()
        except FileExistsError:
            return
        _fsync_dir(folder.parent)

    @staticmethod
    def _write_temp(folder: Path, blob: bytes) -> str:
        """A new temporary file in ``folder`` holding ``blob``, fsynced (removed again on failure)."""
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)
        try:
            try:
                _write_all(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _claim(self, folder: Path, tmp: str) -> Path:
        """Link ``tmp`` under the first version number above those listed; relist when it is taken.

        ``os.link`` fails with EEXIST instead of replacing, so a number is claimed by one writer.
        """
        for _ in range(CLAIM_ATTEMPTS):
            versions = self._versions(folder)
            target = folder / f"{(versions[0] if versions else 0) + 1:012d}.snap"
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, f"{CLAIM_ATTEMPTS} version numbers in a row were claimed by "
                                            "other writers first", str(folder))

    def _read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > self.max_bytes:
                    raise Unreadable(f"file of {size} bytes exceeds the limit of {self.max_bytes} bytes")
                return handle.read(self.max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unreadable(f"unreadable: {exc}") from exc

    def _failure(self, key: str, target: Path, exc: OSError, size: int) -> SnapshotWriteError:
        """Report ``exc`` as an event and return the typed error to raise."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = None
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(target.parent).free
            emit(self.on_event, no_space(key, str(target), size, free))
            return InsufficientStorageError(exc.errno, f"no space left writing snapshot {key!r}: {exc}",
                                            str(target))
        emit(self.on_event, SnapshotWriteFailedEvent(key=key, location=str(target), error=str(exc),
                                                     errno=exc.errno))
        return SnapshotWriteError(exc.errno, f"writing snapshot {key!r} failed: {exc}", str(target))

    def _prune(self, folder: Path) -> None:
        """Delete versions beyond the newest ``keep`` and stale temporary files (errors only logged).

        The directory is listed afresh, after this save's claim: a version another writer has just
        claimed is then among the newest, never deleted (unless ``keep`` newer ones exist).
        """
        try:
            for version in reversed(self._versions(folder)[self.keep:]):  # oldest first
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / f"{version:012d}.snap")
            now = time.time()
            for name in os.listdir(folder):
                if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - os.stat(folder / name).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(folder / name)
        except OSError as exc:
            log.warning("pruning old snapshots in %s failed: %s", folder, exc)
