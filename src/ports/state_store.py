"""``StateStore``: where predictor snapshots live, whichever backend is plugged in.

A store keeps opaque, *self-verifying* blobs: the snapshot payload followed by the 64-character
lowercase SHA-256 hex digest of that payload (the framing :func:`seal` writes and
:func:`verify_blob` checks). Every store keeps the last few versions of each key and, on load,
returns the newest version that verifies, falling back past corrupt ones (each reported as a
:class:`CorruptedSnapshotEvent`), or ``None`` when none verifies (a cold start). Loading never
retries: it walks a finite list of versions once.

Concurrent saves of one key, from threads or processes, never overwrite each other: each save
claims a version of its own (how, per store: ``docs/persistence.md``), or raises. A save that
starts after another one returned gets a newer version.

Stores report what went wrong through an optional ``on_event`` callback (and the ``usp.store``
logger), and raise the typed errors below at the edge; ``None`` from ``load`` always means "no
valid snapshot", never "the backend was unreachable".
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

import attrs

from ..domain import USPError

DIGEST_HEX_LEN = 64
#: The digest every snapshot is sealed with (``[security] snapshot_integrity_hash_algorithm``).
DIGEST_ALGORITHM = "sha256"
DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
_HEX = frozenset(b"0123456789abcdef")


class SnapshotKeyError(USPError, ValueError):
    """A snapshot key or path is refused (bad characters, a path separator, a ``..`` component).

    Raised before anything is read or written. A ``ValueError``, as bad input to a call is
    elsewhere (``ConfigError``, ``TimestampError``), and a ``USPError``, as USP raises it on purpose.
    """


class SnapshotWriteError(USPError, OSError):
    """A snapshot could not be written; the store's earlier snapshots are untouched."""


class InsufficientStorageError(SnapshotWriteError):
    """Not enough free space for a snapshot (precheck of 2x its size, or ENOSPC while writing)."""


class SnapshotReadError(USPError, OSError):
    """The backend could not be read at all (unreachable, permission denied): not a cold start."""


@attrs.frozen
class CorruptedSnapshotEvent:
    """A stored version failed verification (digest, truncation, size) and was skipped."""

    key: str
    location: str
    reason: str


@attrs.frozen
class InsufficientStorageEvent:
    """A write was refused or failed for lack of space; ``free_bytes`` is None when unknown."""

    key: str
    location: str
    required_bytes: int
    free_bytes: int | None


@attrs.frozen
class SnapshotWriteFailedEvent:
    """A write failed for another reason (I/O error, backend unreachable)."""

    key: str
    location: str
    error: str
    errno: int | None = None


StoreEvent = CorruptedSnapshotEvent | InsufficientStorageEvent | SnapshotWriteFailedEvent
EventCallback = Callable[[StoreEvent], None]


def seal(payload: bytes) -> bytes:
    """Frame ``payload`` as a blob: the payload followed by its SHA-256 lowercase hex digest."""
    return bytes(payload) + hashlib.sha256(payload).hexdigest().encode("ascii")


def blob_problem(blob: bytes, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> str | None:
    """Why ``blob`` fails verification (length limits, digest format, digest mismatch), or None.

    Only the length and the digest are looked at: nothing of the payload is parsed.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        return f"a snapshot blob must be bytes, not {type(blob).__name__}"
    size = len(blob)
    if size > max_bytes:
        return f"snapshot of {size} bytes exceeds the limit of {max_bytes} bytes"
    if size <= DIGEST_HEX_LEN:
        return f"snapshot of {size} bytes is too short to hold a payload and its SHA-256 digest"
    view = memoryview(blob)
    stored = bytes(view[-DIGEST_HEX_LEN:])
    if not _HEX.issuperset(stored):
        return "snapshot does not end with a SHA-256 hex digest (truncated or not a USP snapshot)"
    computed = hashlib.sha256(view[:-DIGEST_HEX_LEN]).hexdigest().encode("ascii")
    if not hmac.compare_digest(computed, stored):
        return "snapshot SHA-256 digest mismatch (corrupted, truncated or tampered)"
    return None


def verify_blob(blob: bytes, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> bool:
    """True when ``blob`` is within the size limit and its trailing digest matches its payload."""
    return blob_problem(blob, max_bytes=max_bytes) is None


@runtime_checkable
class StateStore(Protocol):
    """Versioned, verified snapshot storage keyed by asset (or predictor) name.

    Keys are 1–200 characters from ``A-Z a-z 0-9 _ . - = @ + ^ :``, not starting with a dot, so a
    key is one plain name: no separator, no ``..``, no NUL, never absolute. Any other key is
    refused with :class:`SnapshotKeyError` before the backend is touched. A blob that does not
    verify is refused by ``save`` with :class:`usp.domain.IntegrityError`.
    """

    def save(self, key: str, blob: bytes) -> None:
        """Store ``blob`` as a new version of ``key`` of its own, keeping the last few versions.

        :raises InsufficientStorageError: not enough space (nothing was written).
        :raises SnapshotWriteError: the write failed; earlier versions are untouched.
        """
        ...

    def load(self, key: str) -> bytes | None:
        """The newest version of ``key`` that verifies, or ``None`` (cold start) when none does.

        :raises SnapshotReadError: the backend could not be read at all.
        """
        ...

    def save_many(self, items: Mapping[str, bytes]) -> None:
        """``save`` for many keys in one batch (pipelined or concurrent where the backend allows)."""
        ...

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``load`` for many keys in one batch: every requested key maps to a blob or ``None``."""
        ...


__all__ = [
    "DEFAULT_MAX_BLOB_BYTES", "DIGEST_ALGORITHM", "DIGEST_HEX_LEN", "CorruptedSnapshotEvent", "EventCallback",
    "InsufficientStorageError", "InsufficientStorageEvent", "SnapshotKeyError", "SnapshotReadError",
    "SnapshotWriteError", "SnapshotWriteFailedEvent", "StateStore", "StoreEvent", "blob_problem", "seal", "verify_blob",
]
