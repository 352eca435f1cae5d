"""``MemoryStore``: the in-memory fake of the ``StateStore`` port, for unit tests and notebooks."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from ...ports.state_store import DEFAULT_MAX_BLOB_BYTES, EventCallback
from ._common import DEFAULT_KEEP, check_batch, check_blob, check_key, newest_valid, positive


class MemoryStore:
    """Keeps the last ``keep`` blobs per key in a dict, with the same verification as the real stores.

    ``history[key]`` is the list of stored versions, oldest first; tests may tamper with it to
    simulate corruption.
    """

    def __init__(self, *, keep: int | None = None, on_event: EventCallback | None = None,
                 max_bytes: int | None = None) -> None:
        self.keep = positive(keep, DEFAULT_KEEP, "keep")
        self.max_bytes = positive(max_bytes, DEFAULT_MAX_BLOB_BYTES, "max_bytes")
        self.on_event = on_event
        self.history: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()

    def save(self, key: str, blob: bytes) -> None:
        """Append ``blob`` as the newest version of ``key`` under the store's lock (so concurrent saves
        each add their own), dropping versions past ``keep``; an invalid blob raises IntegrityError."""
        blob = check_blob(check_key(key), blob, self.max_bytes)
        with self._lock:
            versions = self.history.setdefault(key, [])
            versions.append(blob)
            del versions[:-self.keep]

    def load(self, key: str) -> bytes | None:
        """The newest version of ``key`` that verifies, or None."""
        with self._lock:
            versions = list(self.history.get(check_key(key), ()))
        candidates = ((f"memory:{key}#{i}", lambda b=blob: b)
                      for i, blob in reversed(list(enumerate(versions))))
        return newest_valid(key, candidates, max_bytes=self.max_bytes, on_event=self.on_event)

    def save_many(self, items: Mapping[str, bytes]) -> None:
        """``save`` each item; every key and blob is checked before any is stored."""
        for key, blob in check_batch(items, self.max_bytes).items():
            self.save(key, blob)

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``load`` for each key."""
        return {key: self.load(key) for key in keys}
