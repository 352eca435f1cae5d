"""The dependency-injection container: it picks the state store adapter from configuration
(``composition.py``, the composition root, asks it for the store of ``[io] storage_kind``).

``config.storage.kind`` picks the :class:`~usp.ports.state_store.StateStore` implementation:
``"memory"`` | ``"file"`` | ``"redis"`` | ``"s3"``. Options left unset fall back to each store's
environment variables and defaults (docs/persistence.md)::

    container = Container()
    container.config.from_dict({"storage": {"kind": "file", "path": "snapshots"}})
    store = container.state_store()          # one FileStore per container (singleton)

Tests replace a provider with ``container.state_store.override(providers.Object(fake))``.

:class:`ServeContainer` picks the adapters of ``usp serve`` from its flags and the config: the
observation source and the prediction sinks (from their specs), the telemetry sinks (logging
always, Prometheus when a metrics port is given) and the bounded telemetry queue
(``[io] telemetry_buffer_maxlen``) in front of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


# -- `usp serve` ---------------------------------------------------------------------------------
# The factories import their adapters when called, so that importing USP (which imports this
# module) never loads prometheus_client, the HTTP server or the broker clients.

def _open_source(spec: str, follow: bool, stdin: Any, on_event: Callable[[Any], None] | None) -> Any:
    from .adapters.endpoints import open_source

    return open_source(spec, follow=bool(follow), stdin=stdin, on_event=on_event)


def _open_sinks(specs: Sequence[str], stdout: Any, source: str | None) -> list[Any]:
    """One sink per spec, in order (none may be the ``source`` spec's file or stream); if one
    cannot be opened, those already open are closed."""
    from .adapters.endpoints import open_sink

    opened: list[Any] = []
    try:
        for spec in specs:
            opened.append(open_sink(spec, stdout=stdout, source=source))
    except BaseException:
        for sink in reversed(opened):
            sink.close()
        raise
    return opened


def _logging_telemetry() -> Any:
    from .adapters.log_telemetry import LoggingTelemetry

    return LoggingTelemetry()


def _prometheus_telemetry(per_asset_weights: Sequence[str] | None) -> Any:
    from .adapters.prometheus import PrometheusTelemetry

    return PrometheusTelemetry(per_asset_weights=tuple(per_asset_weights or ()))


def _telemetry_sinks(metrics_port: int | None, logging_sink: Any, prometheus: Callable[[], Any]) -> list[Any]:
    """Logging always; Prometheus only when a metrics port is given (``prometheus`` is its provider)."""
    return [logging_sink] + ([prometheus()] if metrics_port is not None else [])


def _telemetry_queue(sinks: Sequence[Any], maxlen: int) -> Any:
    from .application.telemetry_queue import TelemetryQueue

    return TelemetryQueue(sinks, maxlen)


class ServeContainer(containers.DeclarativeContainer):
    """The adapters of ``usp serve``, chosen from its flags and the config (``composition.
    build_service`` fills ``config`` and asks for them in a safe order).

    ``config`` keys: ``source`` (a source spec), ``follow`` (bool), ``sinks`` (list of sink
    specs), ``metrics_port`` (int, or None for no Prometheus endpoint), ``metrics_assets`` (asset
    ids whose kernel weights get a per-asset series), ``telemetry_buffer_maxlen`` (int, from
    ``[io]``). Specs are those of ``usp.adapters.endpoints``: a ``.csv``/``.jsonl`` path, ``-``,
    or ``redis://HOST:PORT/DB?stream=NAME[&group=NAME]``.
    """

    config = providers.Configuration()
    #: binary streams standing for stdin and stdout (None: the process's own)
    stdin: providers.Object[Any] = providers.Object(None)
    stdout: providers.Object[Any] = providers.Object(None)
    #: callback receiving MalformedObservationEvent from the source
    source_events: providers.Object[Any] = providers.Object(None)

    source = providers.Singleton(_open_source, spec=config.source, follow=config.follow, stdin=stdin,
                                 on_event=source_events)
    sinks = providers.Singleton(_open_sinks, specs=config.sinks, stdout=stdout, source=config.source)
    logging_telemetry = providers.Singleton(_logging_telemetry)
    prometheus_telemetry = providers.Singleton(_prometheus_telemetry, per_asset_weights=config.metrics_assets)
    telemetry_sinks = providers.Singleton(_telemetry_sinks, metrics_port=config.metrics_port,
                                          logging_sink=logging_telemetry, prometheus=prometheus_telemetry.provider)
    telemetry_queue = providers.Singleton(_telemetry_queue, sinks=telemetry_sinks,
                                          maxlen=config.telemetry_buffer_maxlen)
