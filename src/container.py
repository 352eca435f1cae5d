"""The dependency-injection container: it picks the state store adapter from configuration
(``composition.py``, the composition root, asks it for the store of ``[io] storage_kind``).

``config.storage.kind`` picks the :class:`~usp.ports.state_store.StateStore` implementation:
``"memory"`` | ``"file"`` | ``"redis"`` | ``"s3"``. Options left unset fall back to each store's
environment variables and defaults (docs/persistence.md)::

    container = Container()
    container.config.from_dict({"storage": {"kind": "file", "path": "snapshots"}})
    store = container.state_store()          # one FileStore per container (singleton)

Tests replace a provider with ``container.state_store.override(providers.Object(fake))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dependency_injector import containers, providers

from .adapters.stores import FileStore, MemoryStore, RedisStore, S3Store


class Container(containers.DeclarativeContainer):
    """Adapters chosen from configuration (``storage``: kind, path, url, bucket, prefix, …)."""

    config = providers.Configuration()
    #: callback receiving CorruptedSnapshotEvent / InsufficientStorageEvent / SnapshotWriteFailedEvent
    store_events: providers.Object[Any] = providers.Object(None)

    state_store = providers.Selector(
        config.storage.kind,
        memory=providers.Singleton(MemoryStore, keep=config.storage.keep, on_event=store_events),
        file=providers.Singleton(FileStore, root=config.storage.path, keep=config.storage.keep,
                                 on_event=store_events),
        redis=providers.Singleton(RedisStore, url=config.storage.url, prefix=config.storage.prefix,
                                  keep=config.storage.keep, on_event=store_events),
        s3=providers.Singleton(S3Store, bucket=config.storage.bucket, prefix=config.storage.prefix,
                               endpoint_url=config.storage.endpoint_url, region_name=config.storage.region,
                               keep=config.storage.keep, on_event=store_events),
    )


def store_for_config(config: Any, on_event: Callable[[Any], None] | None = None) -> Any:
    """The state store that ``config.storage_kind`` selects (``[io]`` of config.toml).

    The file store is rooted at ``config.snapshot_path``; Redis and S3 take their connection
    settings from the environment (``USP_REDIS_*``, ``USP_S3_*``; docs/persistence.md).
    """
    container = Container()
    container.config.from_dict({"storage": {"kind": config.storage_kind, "path": config.snapshot_path}})
    container.store_events.override(providers.Object(on_event))
    return container.state_store()
