"""``RedisStore``: snapshots in Redis (redis-py), one list per key, newest first.

Environment (each overridden by the matching constructor argument):

* ``USP_REDIS_URL`` — connection URL, default ``redis://localhost:6379/0``; ``rediss://`` for TLS;
  it may carry ``user:password@``.
* ``USP_REDIS_USERNAME`` / ``USP_REDIS_PASSWORD`` — credentials, used when the URL has none.
* ``USP_REDIS_PREFIX`` — key prefix, default ``usp:snapshot:`` (the list of ``BTC`` is
  ``usp:snapshot:BTC``).
* ``USP_REDIS_TIMEOUT_S`` — socket connect/read timeout in seconds, default 5.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ...ports.state_store import (
    DEFAULT_MAX_BLOB_BYTES,
    EventCallback,
    InsufficientStorageError,
    SnapshotReadError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
)
from ._common import DEFAULT_KEEP, check_batch, check_key, emit, newest_valid, no_space, positive


def _client_from_env(url: str | None, timeout_s: float | None) -> Any:
    import redis  # optional dependency: only needed when this store is chosen

    options: dict[str, Any] = {}
    for name, env in (("username", "USP_REDIS_USERNAME"), ("password", "USP_REDIS_PASSWORD")):
        if os.environ.get(env):
            options[name] = os.environ[env]  # from_url lets credentials in the URL win
    timeout = float(timeout_s if timeout_s is not None else os.environ.get("USP_REDIS_TIMEOUT_S", "5"))
    return redis.Redis.from_url(url or os.environ.get("USP_REDIS_URL", "redis://localhost:6379/0"),
                                socket_timeout=timeout, socket_connect_timeout=timeout, **options)


class RedisStore:
    """Each key is a Redis list ``<prefix><key>`` of blobs, newest first, trimmed to ``keep``.

    A save is ``LPUSH`` + ``LTRIM`` in one MULTI/EXEC transaction, which Redis runs without
    interleaving any other client's commands: each save adds an element of its own at the head
    (its position in the list is its version), and the trim drops only elements behind the newest
    ``keep``. Concurrent writers therefore never overwrite each other, and no version number needs
    claiming.

    ``save_many`` writes every key in one MULTI/EXEC pipeline (all or nothing); ``load_many``
    reads the newest version of every key in one pipeline, then older versions in a second one only
    for the keys whose newest failed verification. ``client`` (a ``redis.Redis`` returning bytes)
    replaces the connection made from the environment.
    """

    def __init__(self, url: str | None = None, *, prefix: str | None = None, keep: int | None = None,
                 client: Any = None, on_event: EventCallback | None = None, max_bytes: int | None = None,
                 timeout_s: float | None = None) -> None:
        self.client = client if client is not None else _client_from_env(url, timeout_s)
        self.prefix = prefix if prefix is not None else os.environ.get("USP_REDIS_PREFIX", "usp:snapshot:")
        self.keep = positive(keep, DEFAULT_KEEP, "keep")
        self.max_bytes = positive(max_bytes, DEFAULT_MAX_BLOB_BYTES, "max_bytes")
        self.on_event = on_event

    def save(self, key: str, blob: bytes) -> None:
        """Push ``blob`` as the newest version of ``key`` and trim the list to ``keep``."""
        self.save_many({key: blob})

    def load(self, key: str) -> bytes | None:
        """The newest version of ``key`` that verifies, else None."""
        return self.load_many([key])[key]

    def save_many(self, items: Mapping[str, bytes]) -> None:
        """Save every item in one atomic pipeline.

        :raises InsufficientStorageError: Redis refused the write for lack of memory (``OOM``,
            ``maxmemory`` reached with a no-eviction policy).
        :raises SnapshotWriteError: any other Redis error; nothing of the batch was applied.
        """
        import redis

        checked = check_batch(items, self.max_bytes)
        if not checked:
            return
        pipe = self.client.pipeline(transaction=True)
        for key, blob in checked.items():
            pipe.lpush(self.prefix + key, blob)
            pipe.ltrim(self.prefix + key, 0, self.keep - 1)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            out_of_memory = isinstance(exc, redis.exceptions.OutOfMemoryError)
            for key, blob in checked.items():
                location = f"redis:{self.prefix}{key}"
                emit(self.on_event, no_space(key, location, len(blob), None) if out_of_memory else
                     SnapshotWriteFailedEvent(key=key, location=location, error=str(exc)))
            kind = InsufficientStorageError if out_of_memory else SnapshotWriteError
            raise kind(None, f"saving {len(checked)} snapshot(s) to Redis failed: {exc}") from exc

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Load every key with pipelined reads; each maps to its newest valid blob or None.

        :raises SnapshotReadError: Redis could not be reached or answered with an error.
        """
        import redis

        keys = list(dict.fromkeys(check_key(k) for k in keys))
        try:
            newest = self._pipelined(keys, lambda pipe, name: pipe.lindex(name, 0))
            out = {}
            for key, blob in zip(keys, newest, strict=True):
                candidates = [] if blob is None else [(f"redis:{self.prefix}{key}[0]", lambda b=blob: b)]
                out[key] = newest_valid(key, candidates, max_bytes=self.max_bytes, on_event=self.on_event)
            retry = [k for k, b in zip(keys, newest, strict=True) if b is not None and out[k] is None]
            if retry and self.keep > 1:
                older = self._pipelined(retry, lambda pipe, name: pipe.lrange(name, 1, self.keep - 1))
                for key, blobs in zip(retry, older, strict=True):
                    candidates = [(f"redis:{self.prefix}{key}[{i}]", lambda b=b: b)
                                  for i, b in enumerate(blobs, start=1)]
                    out[key] = newest_valid(key, candidates, max_bytes=self.max_bytes, on_event=self.on_event)
        except redis.RedisError as exc:
            raise SnapshotReadError(None, f"loading {len(keys)} snapshot(s) from Redis failed: "
                                          f"{exc}") from exc
        return out

    def _pipelined(self, keys: list[str], command: Any) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            command(pipe, self.prefix + key)
        return pipe.execute()
