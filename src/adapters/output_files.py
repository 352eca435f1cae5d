"""Output files: written atomically when they are files, streamed when they are devices or pipes.

A target that does not exist, or is a regular file, is written to a temporary file in its
directory (a short fixed-length name, ``.usp-<16 hex digits>.tmp``) that is renamed over it on
success. An existing output is therefore never truncated or half-written: an error mid-run, a bad
input or an interrupted process leaves it as it was, and two processes writing one target each
rename a complete file (the last one wins; rows never interleave). The temporary file is created
and opened when the output is prepared, so an unwritable directory, a read-only target or a
missing permission fails before any work is done. It stays writable by its owner while it is
written and takes the replaced file's permissions only when it is committed.

A target that is a character device or a pipe (``/dev/null``, a terminal, a FIFO) is opened when
the output is prepared and written directly, as a stream: nothing is renamed over it, so the
device or pipe stays what it was. ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` and
``/proc/self/fd/N`` write to this process's own descriptor (shared with ``sys.stdout`` and
``sys.stderr``), whatever it is open on. A directory, a block device or a socket is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import stat
from pathlib import Path
from typing import IO

from ..domain import ConfigError

#: Paths naming one of this process's open descriptors (checked on the absolute path, unresolved).
_DESCRIPTOR_PATH = re.compile(r"/dev/(?:std(?P<std>in|out|err)|fd/(?P<fd>[0-9]+))|/proc/self/fd/(?P<proc>[0-9]+)")
_STANDARD = {"in": 0, "out": 1, "err": 2}
#: Write permission for anyone: a regular file with none of these bits is read-only and is not replaced.
_ANY_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (write errors such as ENOSPC name no file, others the temporary one)."""
    return exc if exc.errno is None else type(exc)(exc.errno, exc.strerror, str(path))


def _error(code: int, path: Path, detail: str = "") -> OSError:
    message = os.strerror(code) + (f" ({detail})" if detail else "")
    return OSError(code, message, str(path))  # (OSError picks the subclass of the errno: PermissionError, ...)


def _own_descriptor(path: str | Path) -> int | None:
    """The descriptor ``path`` names (``/dev/stdout``, ``/dev/fd/3``, ...), or None."""
    own = _DESCRIPTOR_PATH.fullmatch(os.path.abspath(path))
    if own is None:
        return None
    return int(own["fd"] or own["proc"] or _STANDARD[own["std"]])


def is_stream(path: str | Path) -> bool:
    """Whether an output at ``path`` is written as a stream (one of this process's descriptors, or an
    existing character device or pipe) rather than replaced by a renamed temporary file."""
    if _own_descriptor(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


class _TargetFileIO(io.FileIO):
    """A FileIO whose write errors name the output's target, not the temporary file."""

    target: Path

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise _named(exc, self.target) from None


class PendingOutput:
    """An output being written to ``target`` (see the module doc for the two ways).

    :meth:`open` gives the file to write; :meth:`commit` renames the temporary file over ``target``
    (following a symlink, so the file it points to is replaced; for a device or pipe it only
    ends the output); :meth:`discard` (or leaving the ``with`` block without committing) removes
    the temporary file. Missing parent directories are created. Every ``OSError`` names
    ``target``.

    Raises:
        OSError: the target is a directory (EISDIR), a component of its directory is a file
            (ENOTDIR), it is a read-only file (EACCES, also for root: it is not replaced), or it
            cannot be created, opened or written (the error of the system call).
        ConfigError: the target is a block device or a socket.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.temporary: Path | None = None
        self.committed = False
        self._final: Path | None = None
        self._descriptor: int | None = None
        try:
            self._prepare()
        except OSError as exc:
            self.discard()
            raise _named(exc, self.target) from None

    @property
    def streamed(self) -> bool:
        """True when the target is written directly (a device or a pipe), not through a temporary file."""
        return self.temporary is None

    def _prepare(self) -> None:
        own = _own_descriptor(self.target)
        if own is not None:
            self._descriptor = self._duplicate(own)
            return
        try:
            status = os.stat(self.target)
        except FileNotFoundError:
            status = None
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise _error(errno.EISDIR, self.target)
        if status is not None and (stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode)):
            # no O_CREAT, no O_TRUNC: the device or pipe is written as it is (a FIFO waits for its reader)
            self._descriptor = os.open(self.target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            return
        if status is not None and not stat.S_ISREG(status.st_mode):
            kind = "a block device" if stat.S_ISBLK(status.st_mode) else "a socket or other special file"
            raise ConfigError(f"{self.target} is {kind}: an output is written to a regular file (replaced "
                              "whole), a character device such as /dev/null, or a pipe")
        final = Path(os.path.realpath(self.target))
        if status is not None and (not status.st_mode & _ANY_WRITE or not os.access(final, os.W_OK)):
            raise _error(errno.EACCES, self.target, "the file is read-only; it is not replaced")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a component of the directory is a file
            raise _error(errno.ENOTDIR, self.target) from None
        self._final = final
        self.temporary, self._descriptor = self._create_temporary(final.parent, replacing=status is not None)

    def _duplicate(self, descriptor: int) -> int:
        """A duplicate of this process's ``descriptor``, which must be open for writing."""
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)  # EBADF when it is not open
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise _error(errno.EBADF, self.target, "the descriptor is open for reading only")
        return os.dup(descriptor)

    @staticmethod
    def _create_temporary(directory: Path, replacing: bool) -> tuple[Path, int]:
        # A new file gets the usual 0o666 less the umask; a replacement is private (0o600) until the
        # commit gives it the replaced file's permissions (which might not let it be written).
        mode = 0o600 if replacing else 0o666
        while True:
            candidate = directory / f".usp-{secrets.token_hex(8)}.tmp"
            try:
                return candidate, os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            except FileExistsError:
                continue

    def open(self, mode: str = "w") -> IO:
        """The output opened for writing: ``"w"`` (UTF-8 text, ``newline=""``) or ``"wb"``.

        Closing the returned file flushes it; it does not commit the output.
        """
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        if self._descriptor is None:
            raise ValueError(f"the output {self.target} is already committed or discarded")
        raw = _TargetFileIO(os.dup(self._descriptor), "w", closefd=True)
        raw.target = self.target
        buffered = io.BufferedWriter(raw)
        return buffered if mode == "wb" else io.TextIOWrapper(buffered, encoding="utf-8", newline="")

    def commit(self) -> None:
        """Finish the output: flush the temporary file to disk, give it the permissions of the file it
        replaces, and rename it over the target (a device or pipe: only close it)."""
        if self.committed:
            return
        try:
            if self.temporary is not None:
                assert self._descriptor is not None and self._final is not None
                os.fsync(self._descriptor)
                with contextlib.suppress(FileNotFoundError):  # nothing to replace (any more): keep its mode
                    os.fchmod(self._descriptor, stat.S_IMODE(os.stat(self._final).st_mode))
                os.close(self._descriptor)
                self._descriptor = None
                os.replace(self.temporary, self._final)
            elif self._descriptor is not None:
                os.close(self._descriptor)
                self._descriptor = None
        except OSError as exc:
            self.discard()
            raise _named(exc, self.target) from None
        self.committed = True

    def discard(self) -> None:
        """Close the output and remove the temporary file (the target is left as it was; what was
        already streamed to a device or pipe stays written)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        if not self.committed and self.temporary is not None:
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> PendingOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


__all__ = ["PendingOutput", "is_stream"]
