"""Output files written atomically: a temporary file next to the target, renamed over it on success.

An existing output is therefore never truncated or half-written: an error mid-run, a bad input
or an interrupted process leaves it as it was, and two processes writing one target each
rename a complete file (the last one wins; rows never interleave). The temporary file is
created when the output is prepared, so an unwritable directory fails before any work is done.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from pathlib import Path
from typing import IO


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (write errors such as ENOSPC name no file, others the temporary one)."""
    return exc if exc.errno is None else type(exc)(exc.errno, exc.strerror, str(path))


class _TargetFileIO(io.FileIO):
    """A FileIO whose write errors name the output's target, not the temporary file."""

    target: Path

    def write(self, data) -> int:  # type: ignore[override]
        try:
            return super().write(data)
        except OSError as exc:
            raise _named(exc, self.target) from None


class PendingOutput:
    """An output being written: a temporary file in ``target``'s directory.

    :meth:`commit` renames it over ``target`` (following a symlink, so the file it points to is
    replaced); :meth:`discard` (or leaving the ``with`` block without committing) removes it.
    Missing parent directories are created. Every ``OSError`` names ``target``.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self._final = Path(os.path.realpath(self.target))
        if self._final.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.target))
        try:
            self._final.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a component of the directory is a file
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.target)) from None
        except OSError as exc:
            raise _named(exc, self.target) from None
        try:
            self.temporary = self._create_temporary()
        except OSError as exc:
            raise _named(exc, self.target) from None
        self.committed = False

    def _create_temporary(self) -> Path:
        while True:
            candidate = self._final.parent / f".{self._final.name}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
            except FileExistsError:
                continue
            try:
                if self._final.exists():  # keep the permissions of the file being replaced
                    os.chmod(candidate, stat.S_IMODE(self._final.stat().st_mode))
            except OSError:
                candidate.unlink(missing_ok=True)
                raise
            return candidate

    def open(self, mode: str = "w") -> IO:
        """The temporary file opened for writing: ``"w"`` (UTF-8 text, ``newline=""``) or ``"wb"``."""
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        raw = _TargetFileIO(self.temporary, "w")
        raw.target = self.target
        buffered = io.BufferedWriter(raw)
        return buffered if mode == "wb" else io.TextIOWrapper(buffered, encoding="utf-8", newline="")

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it over the target."""
        try:
            descriptor = os.open(self.temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(self.temporary, self._final)
        except OSError as exc:
            self.discard()
            raise _named(exc, self.target) from None
        self.committed = True

    def discard(self) -> None:
        """Remove the temporary file (the target is left as it was)."""
        if not self.committed:
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> PendingOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


__all__ = ["PendingOutput"]
