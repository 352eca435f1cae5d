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


#: Bytes of an asset id's UTF-8 form kept verbatim in :func:`asset_key` (every other byte is escaped).
_VERBATIM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-=@+:")
#: Longest key a store accepts.
MAX_KEY_LENGTH = 200
_SHORT_PREFIX, _LONG_PREFIX = "asset=", "asset:"
#: Escaped characters kept in front of the digest of an id too long for a plain key.
_LONG_HEAD = MAX_KEY_LENGTH - len(_LONG_PREFIX) - 1 - 2 * hashlib.sha256().digest_size


def _escape(asset_id: str) -> str:
    """Upper-case letters, digits and ``_ . - = @ + :`` kept; every other UTF-8 byte (lower-case
    letters, ``^`` and ``/`` included) written ``^XX`` with upper-case hex digits."""
    data = asset_id.encode("utf-8", "surrogatepass")
    return "".join(chr(byte) if byte in _VERBATIM else f"^{byte:02X}" for byte in data)


def asset_key(asset_id: str) -> str:
    """The store key of an asset: deterministic, injective, and always a valid store key.

    ``asset=`` followed by the escaped UTF-8 bytes of the id (upper-case ASCII letters, digits
    and ``_ . - = @ + :`` kept, every other byte ``^XX``, so ``EUR/USD`` -> ``asset=EUR^2FUSD``
    and ``^`` -> ``asset=^5E``). The escape is a prefix code, so distinct ids give distinct keys;
    a key holds no lower-case letter after its prefix, so keys stay distinct on a case-insensitive
    file system too; no key holds a separator or starts with a dot, so none leaves its store.

    An id whose key would exceed 200 characters gets ``asset:``, the first escaped characters (up
    to 129, cut at a whole escape) and ``:`` and the upper-case SHA-256 hex digest of its UTF-8
    bytes: distinct from every short key by its prefix, and from other long keys unless SHA-256
    collides.

    :raises SnapshotKeyError: ``asset_id`` is not a ``str``.
    """
    if not isinstance(asset_id, str):
        raise SnapshotKeyError(f"an asset id is a str, got {type(asset_id).__name__}")
    escaped = _escape(asset_id)
    if len(_SHORT_PREFIX) + len(escaped) <= MAX_KEY_LENGTH:
        return _SHORT_PREFIX + escaped
    head = escaped[:_LONG_HEAD]
    caret = head.rfind("^", max(0, len(head) - 2))
    if caret >= 0:  # an escape cut short: drop its remains
        head = head[:caret]
    digest = hashlib.sha256(asset_id.encode("utf-8", "surrogatepass")).hexdigest().upper()
    return f"{_LONG_PREFIX}{head}:{digest}"


__all__ = [
    "DEFAULT_MAX_BLOB_BYTES", "DIGEST_ALGORITHM", "DIGEST_HEX_LEN", "MAX_KEY_LENGTH", "CorruptedSnapshotEvent",
    "EventCallback", "InsufficientStorageError", "InsufficientStorageEvent", "SnapshotKeyError", "SnapshotReadError",
    "SnapshotWriteError", "SnapshotWriteFailedEvent", "StateStore", "StoreEvent", "asset_key", "blob_problem", "seal",
    "verify_blob",
]
