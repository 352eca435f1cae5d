"""Snapshot stores implementing :class:`usp.ports.state_store.StateStore`.

``MemoryStore`` (the in-memory fake), ``FileStore`` (crash-safe files), ``RedisStore`` (redis-py,
pipelined batches) and ``S3Store`` (boto3, versioned objects). Redis and boto3 are imported only
when their store is built. See ``docs/persistence.md``.
"""

from ._common import DEFAULT_KEEP, KEY_PATTERN, check_key
from ._file import FileStore
from ._memory import MemoryStore
from ._redis import RedisStore
from ._s3 import S3Store

__all__ = ["DEFAULT_KEEP", "KEY_PATTERN", "FileStore", "MemoryStore", "RedisStore", "S3Store", "check_key"]
