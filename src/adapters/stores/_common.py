"""What every store shares: key and blob checks, event reporting, the newest-valid walk."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping

from ...domain import IntegrityError
from ...ports.state_store import (
    DEFAULT_MAX_BLOB_BYTES,
    CorruptedSnapshotEvent,
    EventCallback,
    InsufficientStorageEvent,
    SnapshotKeyError,
    StoreEvent,
    blob_problem,
)

DEFAULT_KEEP = 5
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-=@+^:][A-Za-z0-9_.\-=@+^:]{0,199}")
log = logging.getLogger("usp.store")


class Unreadable(Exception):
    """A stored version exists but cannot be read (treated like a corrupt one: skipped, reported)."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise :class:`SnapshotKeyError` naming the rule.

    A valid key is one plain name (no separator, NUL, ``..`` or leading dot, never absolute), so
    ``<root>/<key>`` of a file store and ``<prefix><key>/`` of S3 stay inside their store.
    """
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise SnapshotKeyError(f"invalid snapshot key {key!r}: use 1-200 characters from "
                               "A-Z a-z 0-9 _ . - = @ + ^ : and do not start with a dot")
    return key


def check_blob(key: str, blob: bytes, max_bytes: int) -> bytes:
    """Return ``blob`` as bytes if it verifies, else raise ``IntegrityError`` (nothing is stored)."""
    problem = blob_problem(blob, max_bytes=max_bytes)
    if problem is not None:
        raise IntegrityError(f"refusing to save snapshot {key!r}: {problem}")
    return bytes(blob)


def check_batch(items: Mapping[str, bytes], max_bytes: int) -> dict[str, bytes]:
    """``items`` with every key and blob checked, before any is stored (the first bad one raises)."""
    return {check_key(key): check_blob(key, blob, max_bytes) for key, blob in items.items()}


def positive(value: int | None, default: int, name: str) -> int:
    """``value`` (or ``default`` when None) checked to be a positive integer."""
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def emit(on_event: EventCallback | None, event: StoreEvent) -> None:
    """Log ``event`` on ``usp.store`` and pass it to the callback (whose errors are only logged)."""
    level = logging.WARNING if isinstance(event, CorruptedSnapshotEvent) else logging.ERROR
    log.log(level, "%s: %s", type(event).__name__, event)
    if on_event is not None:
        try:
            on_event(event)
        except Exception:
            log.exception("snapshot event callback failed for %s", type(event).__name__)


def newest_valid(key: str, candidates: Iterable[tuple[str, Callable[[], bytes | None]]], *,
                 max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
                 on_event: EventCallback | None = None) -> bytes | None:
    """The first candidate (newest first) whose blob verifies; each bad one is reported and skipped.

    A fetch returning ``None`` means the version vanished meanwhile (pruned): it is skipped
    silently. The walk visits each candidate once, so it always ends.
    """
    for location, fetch in candidates:
        try:
            blob = fetch()
        except Unreadable as exc:
            emit(on_event, CorruptedSnapshotEvent(key=key, location=location, reason=str(exc)))
            continue
        if blob is None:
            continue
        problem = blob_problem(blob, max_bytes=max_bytes)
        if problem is None:
            return blob
        emit(on_event, CorruptedSnapshotEvent(key=key, location=location, reason=problem))
    return None


def no_space(key: str, location: str, required: int, free: int | None) -> InsufficientStorageEvent:
    return InsufficientStorageEvent(key=key, location=location, required_bytes=required, free_bytes=free)
