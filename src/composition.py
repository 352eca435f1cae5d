"""The composition root: predictors built from a config, with the adapters and kernels it names.

The application layer (``usp.application``) takes every dependency as an argument. This module,
with ``container.py``, is where they are chosen, in this order:

1. **secrets**: only where they are used, when the store for bare snapshot keys is first built
   (the Redis and S3 stores read their connection settings and credentials from the
   environment): ``load_credentials(config.credentials_vault_path)`` sets the ``KEY=VALUE`` lines
   of that ``.env`` file that the environment does not already hold; a missing file is fine, a
   malformed one is a ``ConfigError`` naming its line. Building a predictor, ``usp.backtest`` and
   ``usp.testing.check_kernel`` never read it;
2. **kernels**: ``kernels`` if given, else the config's enabled kernels from the plugin manager
   (built-ins and installed entry points, or ``plugin_manager``);
3. **device**: ``jax.devices(config.jax_platform)[0]``: the state is put there, so every step
   runs there; a platform this machine lacks is a ``ConfigError`` naming ``jax_platform``;
4. **clock**: ``clock`` if given, else the system clock;
5. **snapshot stores** (``UniversalPredictor``): bare keys go to the store that
   ``[io] storage_kind`` selects through the container (a file store under ``snapshot_path`` by
   default), paths to a file store rooted at their directory.

``build_service`` assembles ``usp serve`` (the service core, ``usp.application.service``) from
a config and the command's flags: the source and sinks of their specs and the telemetry sinks
(through ``container.ServeContainer``), the bounded telemetry queue, the predictor on a replay
clock for a replayed file and on the system clock for a live source, the snapshot store of
``[io] storage_kind`` and the device memory monitor.

``FunctionalPredictor`` and ``UniversalPredictor`` here are the public constructors (exported as
``usp.FunctionalPredictor`` / ``usp.UniversalPredictor``): subclasses of the application classes
whose ``__init__`` fills in those defaults and passes everything explicitly.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import jax
from dependency_injector import providers

from .adapters.clocks import ReplayClock, SystemClock
from .adapters.secrets import load_credentials
from .adapters.stores import FileStore, check_key
from .application._load_shedding import LoadSheddingController
from .application.batching import BATCH_CHUNK
from .application.functional import FunctionalPredictor as ExplicitFunctionalPredictor
from .application.reloadable import ConfigReloadablePredictor as ExplicitConfigReloadablePredictor
from .application.snapshot_session import SnapshotStores
from .application.tuning import BayesianMetaOptimizer as ExplicitBayesianMetaOptimizer
from .application.tuning import WalkForward, default_storage, recent_rmse
from .application.universal import UniversalPredictor as ExplicitUniversalPredictor
from .container import ServeContainer, store_for_config
from .domain import ConfigError, KernelSpec, PredictorConfig
from .plugins.manager import resolve_kernels
from .ports import Clock
from .ports.ingestion import MalformedObservationEvent, ObservationSource
from .ports.prediction_sink import PredictionSink
from .ports.state_store import DIGEST_ALGORITHM
from .ports.telemetry import MalformedTelemetry


def platform_device(config: PredictorConfig) -> jax.Device:
    """The first device of ``config.jax_platform`` ("cpu", "gpu" or "tpu").

    Raises:
        ConfigError: JAX has no such backend on this machine (the message names ``jax_platform``).
    """
    try:
        return jax.devices(config.jax_platform)[0]
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"[core] jax_platform = {config.jax_platform!r}: no such JAX backend on this machine "
                          f"({reason}); set jax_platform = {jax.default_backend()!r}") from None


def check_runtime(config: PredictorConfig) -> None:
    """The process can honour the config's numeric and integrity keys.

    Raises:
        ConfigError: ``float_precision`` = 64 while JAX's x64 mode was switched off after USP set
            it, or a ``snapshot_integrity_hash_algorithm`` other than the stores' digest.
    """
    if config.float_precision == 64 and not jax.config.values.get("jax_enable_x64"):
        raise ConfigError("[core] float_precision = 64, but JAX's x64 mode is off in this process "
                          "(jax.config.update('jax_enable_x64', False) was called after importing usp)")
    if config.snapshot_integrity_hash_algorithm != DIGEST_ALGORITHM:
        raise ConfigError(f"[security] snapshot_integrity_hash_algorithm = "
                          f"{config.snapshot_integrity_hash_algorithm!r}: snapshots are sealed with "
                          f"{DIGEST_ALGORITHM!r}")


def configured_store(config: PredictorConfig, on_event: Any = None) -> Any:
    """The store of ``[io] storage_kind`` for bare snapshot keys, after the secrets of
    ``credentials_vault_path`` are in the environment (the stores read their settings there)."""
    load_credentials(config.credentials_vault_path)
    return store_for_config(config, on_event=on_event)


def snapshot_stores(config: PredictorConfig) -> SnapshotStores:
    """The stores of a predictor's snapshot session (rules in ``SnapshotSession``'s doc)."""
    return SnapshotStores(for_bare_keys=lambda on_event: configured_store(config, on_event),
                          for_directory=lambda root, on_event: FileStore(root, on_event=on_event),
                          check_key=check_key)


def _functional_dependencies(config: PredictorConfig | None, clock: Clock | None,
                             kernels: Iterable[KernelSpec] | None, plugin_manager: Any) -> dict[str, Any]:
    """The explicit arguments of the application's ``FunctionalPredictor`` for a config and defaults."""
    config = config or PredictorConfig()
    check_runtime(config)
    return {"config": config, "clock": SystemClock() if clock is None else clock,
            "kernels": tuple(kernels) if kernels is not None else resolve_kernels(config, plugin_manager),
            "device": platform_device(config)}


class FunctionalPredictor(ExplicitFunctionalPredictor):
    """Stateless predictor: ``(S_t, obs_t) -> (S_{t+1}, prediction)``; thousands of assets share
    one compiled graph (``step_batch`` vmaps the core over a leading asset axis).

    Args:
        config: the hyperparameters (defaults if None).
        clock: where "now" comes from for the staleness check (system clock by default).
        kernels: explicit kernel specs (default: the config's enabled kernels from the plugins).
        plugin_manager: a pluggy manager to resolve kernels from (default: built-ins + entry points).
        batch_chunk: assets per vmapped chunk in ``step_batch`` (see ``BATCH_CHUNK``).

    Raises:
        ConfigError: an unavailable ``jax_platform``, a malformed ``credentials_vault_path`` file,
            or an enabled kernel no plugin provides.
    """

    def __init__(self, config: PredictorConfig | None = None, *, clock: Clock | None = None,
                 kernels: Iterable[KernelSpec] | None = None, plugin_manager: Any = None,
                 batch_chunk: int = BATCH_CHUNK) -> None:
        super().__init__(**_functional_dependencies(config, clock, kernels, plugin_manager), batch_chunk=batch_chunk)


class UniversalPredictor(ExplicitUniversalPredictor):
    """Stateful predictor for one stream (the application's ``UniversalPredictor``), built from a
    config: arguments as :class:`FunctionalPredictor`'s, and ``load_shedding`` (True, or a
    controller) to switch kernel D's signature depth on measured latency. Snapshots named by a
    bare key go to the store of ``[io] storage_kind`` (a file store under ``snapshot_path`` by
    default)."""

    def __init__(self, config: PredictorConfig | None = None, clock: Clock | None = None, *,
                 kernels: Iterable[KernelSpec] | None = None, plugin_manager: Any = None,
                 load_shedding: LoadSheddingController | bool = False) -> None:
        functional = ExplicitFunctionalPredictor(**_functional_dependencies(config, clock, kernels,
                                                                                plugin_manager))
        super().__init__(functional, snapshot_stores(functional.config), load_shedding=load_shedding)


#: Snapshot period (s) of a live source when none is asked for: a broker source acknowledges its
#: entries only once a snapshot covers them, so a live service always snapshots on a schedule.
LIVE_SNAPSHOT_EVERY_S = 60.0
#: Seconds ``ServiceAssembly.finish`` waits, by default, for the telemetry sinks to drain.
TELEMETRY_DRAIN_S = 2.0


@attrs.define(eq=False)
class ServiceAssembly:
    """Everything ``usp serve`` runs, as :func:`build_service` wired it.

    Lifecycle: :meth:`run` (once), then :meth:`finish` (drain the telemetry, close the sinks and
    the source), then :meth:`close` (stop the ``/metrics`` endpoint). ``close`` alone does both.
    """

    service: Any                         #: usp.application.service.Service
    functional: ExplicitFunctionalPredictor
    source: ObservationSource
    sinks: tuple[PredictionSink, ...]
    store: Any                           #: the StateStore of [io] storage_kind (or the one given)
    telemetry: Any                       #: usp.application.telemetry_queue.TelemetryQueue
    prometheus: Any                      #: PrometheusTelemetry, or None without a metrics port
    metrics_port: int | None             #: the bound port of /metrics (None: no endpoint)
    monitor: Any                         #: DeviceMemoryMonitor (inactive on CPU-only hosts)
    snapshot_every_s: float | None       #: the snapshot period in force (None: final snapshot only)
    _finished: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def live(self) -> bool:
        """Whether the source is live (the predictor then runs on the system clock)."""
        return bool(self.source.live)

    def run(self, stop: threading.Event) -> Any:
        """Serve until the source ends or ``stop`` is set; returns the service's ``ServeSummary``.
        The device memory monitor runs meanwhile."""
        self.monitor.start()
        try:
            return self.service.run(stop)
        finally:
            self.monitor.stop()

    def finish(self, telemetry_timeout_s: float = TELEMETRY_DRAIN_S) -> bool:
        """Stop the monitor, let the telemetry sinks drain (at most ``telemetry_timeout_s``
        seconds), close the sinks (flushing them) and the source; idempotent. ``/metrics`` keeps
        serving until :meth:`close`. Returns whether the telemetry drained in time."""
        if self._finished:
            return True
        self._finished = True
        self.monitor.stop()
        drained = bool(self.telemetry.close(telemetry_timeout_s))
        with contextlib.ExitStack() as closing:  # every close runs, the first error is raised
            closing.callback(self.source.close)
            for sink in reversed(self.sinks):
                closing.callback(sink.close)
        return drained

    def close(self, telemetry_timeout_s: float = TELEMETRY_DRAIN_S) -> bool:
        """:meth:`finish`, then stop the ``/metrics`` endpoint; idempotent."""
        try:
            return self.finish(telemetry_timeout_s)
        finally:
            if not self._closed:
                self._closed = True
                if self.prometheus is not None:
                    self.prometheus.close()


def build_service(config: PredictorConfig, *, source: str, sinks: Sequence[str] = ("-",), follow: bool = False,
                  metrics_port: int | None = None, metrics_addr: str = "0.0.0.0",
                  metrics_assets: Sequence[str] = (), snapshot_every_s: float | None = None,
                  max_batch: int = 4096, store: Any = None, stdin: Any = None, stdout: Any = None,
                  device_memory_interval_s: float = 5.0, kernels: Iterable[KernelSpec] | None = None,
                  plugin_manager: Any = None, config_path: str | os.PathLike[str] | None = None,
                  reload_every_s: float | None = None) -> ServiceAssembly:
    """Wire ``usp serve``: everything is checked and opened here, nothing is read yet.

    Args:
        config: the predictor's config (``[io]``: the store and ``telemetry_buffer_maxlen``;
            ``[security]``: ``telemetry_hash_interval_steps``).
        source: a source spec (``usp.adapters.endpoints``); ``follow`` tails a file source.
        sinks: sink specs (``-`` is stdout as JSON lines; ``stdout`` replaces it, a binary stream).
        metrics_port: serve Prometheus ``/metrics`` on this port of ``metrics_addr`` (0: a free
            port, see :attr:`ServiceAssembly.metrics_port`); None: no Prometheus endpoint.
            Telemetry always goes to the ``logging`` sink (logger ``usp.telemetry``).
        metrics_assets: asset ids whose kernel weights also get a per-asset series.
        snapshot_every_s: seconds between snapshots of every asset's state; None: every
            :data:`LIVE_SNAPSHOT_EVERY_S` for a live source, and only the final snapshot for a
            replayed file. A final snapshot is always written when the service ends.
        max_batch: most ticks per micro-batch.
        store: the state store (default: ``[io] storage_kind``, as ``UniversalPredictor`` uses
            for bare keys; the ``.env`` of ``credentials_vault_path`` is loaded first).
        stdin: a binary stream for the ``-`` source (default ``sys.stdin.buffer``).
        device_memory_interval_s: period of the device memory monitor (GPU hosts only).
        kernels, plugin_manager: as :class:`FunctionalPredictor`'s.
        config_path, reload_every_s: follow the config file ``config`` was loaded from, looking
            at it every ``reload_every_s`` seconds (``usp.application.service.ConfigReload``);
            None: no reload.

    Raises:
        ConfigError: the config cannot run here (as :class:`FunctionalPredictor`), or a reload
            period without a config file.
        usp.adapters.endpoints.EndpointError: a bad source or sink spec.
        OSError: a file, a port or a broker that cannot be opened.
    """
    from .adapters.device_memory import DeviceMemoryMonitor
    from .application.reloadable import ConfigFileWatch
    from .application.service import ConfigReload, Service

    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    if snapshot_every_s is not None and not snapshot_every_s > 0:
        raise ConfigError(f"the snapshot period must be > 0 seconds, got {snapshot_every_s}")
    if reload_every_s is not None and (config_path is None or not reload_every_s > 0):
        raise ConfigError(f"a config reload needs the config file and a period > 0 seconds, got "
                          f"{config_path!r} every {reload_every_s}")
    dependencies = _functional_dependencies(config, None, kernels, plugin_manager)  # config errors first
    config = dependencies["config"]
    container = ServeContainer()
    container.config.from_dict({"source": source, "follow": bool(follow), "sinks": list(sinks),
                                "metrics_port": metrics_port, "metrics_assets": list(metrics_assets),
                                "telemetry_buffer_maxlen": config.telemetry_buffer_maxlen})
    container.stdin.override(providers.Object(stdin))
    container.stdout.override(providers.Object(stdout))
    with contextlib.ExitStack() as undo:  # on any failure, what was opened is closed again
        queue = container.telemetry_queue()
        undo.callback(queue.close, 0.0)
        prometheus, bound = None, None
        if metrics_port is not None:
            prometheus = container.prometheus_telemetry()
            prometheus.watch_drops(queue.dropped_total)
            undo.callback(prometheus.close)
            bound = int(prometheus.serve(metrics_port, metrics_addr))
        opened_sinks = tuple(container.sinks())
        for sink in opened_sinks:
            undo.callback(sink.close)

        counted: list[Any] = []  # the service, once built: it counts what the source skips

        def malformed(event: MalformedObservationEvent) -> None:
            if counted:
                counted[0].note_malformed(event)
            else:  # (a source reads nothing before the service runs; offered directly all the same)
                queue.offer(MalformedTelemetry(count=1))

        container.source_events.override(providers.Object(malformed))
        opened_source = container.source()
        undo.callback(opened_source.close)
        dependencies["clock"] = SystemClock() if opened_source.live else ReplayClock()
        functional = ExplicitFunctionalPredictor(**dependencies)
        state_store = configured_store(config) if store is None else store
        period = (snapshot_every_s if snapshot_every_s is not None
                  else LIVE_SNAPSHOT_EVERY_S if opened_source.live else None)
        reload = None
        if reload_every_s is not None:
            clock = dependencies["clock"]

            def rebuild(new_config: PredictorConfig) -> ExplicitFunctionalPredictor:
                return ExplicitFunctionalPredictor(**_functional_dependencies(new_config, clock, kernels,
                                                                              plugin_manager))

            reload = ConfigReload(ConfigFileWatch(config_path), rebuild, reload_every_s)  # type: ignore[arg-type]
        service = Service(functional, opened_source, list(opened_sinks), store=state_store, telemetry=queue,
                          snapshot_every_s=period, max_batch=max_batch,
                          hash_interval_steps=config.telemetry_hash_interval_steps, reload=reload)
        counted.append(service)
        # (its level changes are logged by the LoggingTelemetry sink, which gets every reading)
        monitor = DeviceMemoryMonitor(queue.offer, interval_s=device_memory_interval_s, log=False)
        undo.pop_all()
    return ServiceAssembly(service=service, functional=functional, source=opened_source, sinks=opened_sinks,
                           store=state_store, telemetry=queue, prometheus=prometheus, metrics_port=bound,
                           monitor=monitor, snapshot_every_s=period)


# -- usp serve --cluster (docs/scale-out.md) --------------------------------------------------------

@attrs.define(eq=False)
class ClusterAssembly:
    """Everything one worker of ``usp serve --cluster`` runs, as :func:`build_cluster_worker`
    wired it. Lifecycle as :class:`ServiceAssembly`: :meth:`run` once, :meth:`finish`, :meth:`close`."""

    worker: Any                          #: usp.application.cluster.ShardWorker
    functional: ExplicitFunctionalPredictor
    broker: Any                          #: usp.adapters.redis_cluster.RedisShards
    telemetry: Any                       #: TelemetryQueue
    prometheus: Any                      #: PrometheusTelemetry, or None without a metrics port
    metrics_port: int | None             #: the bound port of /metrics (None: no endpoint)
    monitor: Any                         #: DeviceMemoryMonitor
    _finished: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def run(self, stop: threading.Event) -> Any:
        """Work until ``stop`` is set; returns the worker's ``ClusterSummary``."""
        self.monitor.start()
        try:
            return self.worker.run(stop)
        finally:
            self.monitor.stop()

    def finish(self, telemetry_timeout_s: float = TELEMETRY_DRAIN_S) -> bool:
        """Let the telemetry drain and close the Redis connection; idempotent."""
        if self._finished:
            return True
        self._finished = True
        self.monitor.stop()
        try:
            return bool(self.telemetry.close(telemetry_timeout_s))
        finally:
            self.broker.close()

    def close(self, telemetry_timeout_s: float = TELEMETRY_DRAIN_S) -> bool:
        """:meth:`finish`, then stop the ``/metrics`` endpoint; idempotent."""
        try:
            return self.finish(telemetry_timeout_s)
        finally:
            if not self._closed:
                self._closed = True
                if self.prometheus is not None:
                    self.prometheus.close()


def default_worker_id() -> str:
    """``HOST:PID:RANDOM`` (6 hex digits): unique among the workers of a cluster."""
    import secrets
    import socket

    host = "".join(c for c in socket.gethostname() if not c.isspace()) or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


def build_cluster_worker(config: PredictorConfig, *, cluster: str, shards: int, sink: str,
                         metrics_port: int | None = None, metrics_addr: str = "0.0.0.0",
                         metrics_assets: Sequence[str] = (), max_batch: int = 4096, worker_id: str | None = None,
                         device_memory_interval_s: float = 5.0, kernels: Iterable[KernelSpec] | None = None,
                         plugin_manager: Any = None) -> ClusterAssembly:
    """Wire one worker of ``usp serve --cluster`` (docs/scale-out.md); nothing is read yet.

    Args:
        config: the predictor's config (every worker of a cluster runs the same one: its digest
            is recorded in the cluster and checked).
        cluster: the cluster URL, ``redis://HOST:PORT/DB[?prefix=NAME&lease_ms=N]``.
        shards: P, the shard count (recorded in the cluster and checked).
        sink: ``redis://HOST:PORT/DB?stream=NAME`` on the cluster's server and database: the
            predictions of shard ``k`` go to ``NAME:{k}``, committed with the states.
        metrics_port, metrics_addr, metrics_assets, device_memory_interval_s, kernels,
            plugin_manager: as :func:`build_service`'s.
        max_batch: most entries per micro-batch (one commit each).
        worker_id: the worker's name in the live set (default :func:`default_worker_id`).

    Raises:
        ConfigError: a bad config, shard count or batch size, or a cluster set up with another
            shard count or config.
        usp.adapters.endpoints.EndpointError: a bad cluster URL or sink.
        OSError: Redis or the metrics port cannot be opened (``BrokerError`` for Redis).
    """
    from .adapters.device_memory import DeviceMemoryMonitor
    from .adapters.endpoints import EndpointError, parse_endpoint
    from .adapters.prometheus import ClusterMetrics
    from .adapters.redis_cluster import RedisShards, config_digest, parse_cluster_url
    from .application.cluster import ShardWorker
    from .domain._config import core_config

    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    if shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {shards}")
    endpoint = parse_cluster_url(cluster)
    output = parse_endpoint(sink, "sink")
    if output.kind != "redis" or output.url is None or output.stream is None or not endpoint.same_database(output.url):
        raise EndpointError(f"--sink {sink!r}: with --cluster the sink is a Redis stream on the cluster's own server "
                            "and database (redis://HOST:PORT/DB?stream=NAME): each commit writes the predictions "
                            "atomically with the states")
    functional = ExplicitFunctionalPredictor(**_functional_dependencies(config, ReplayClock(), kernels,
                                                                        plugin_manager))
    digest = config_digest({"config": attrs.asdict(core_config(functional.config)),
                            "kernels": list(functional.kernel_names)})
    container = ServeContainer()
    container.config.from_dict({"metrics_port": metrics_port, "metrics_assets": list(metrics_assets),
                                "telemetry_buffer_maxlen": functional.config.telemetry_buffer_maxlen})
    with contextlib.ExitStack() as undo:
        queue = container.telemetry_queue()
        undo.callback(queue.close, 0.0)
        prometheus, bound, observer = None, None, None
        if metrics_port is not None:
            prometheus = container.prometheus_telemetry()
            prometheus.watch_drops(queue.dropped_total)
            observer = ClusterMetrics(prometheus.registry)
            undo.callback(prometheus.close)
            bound = int(prometheus.serve(metrics_port, metrics_addr))
        broker = RedisShards(endpoint, shards, output.stream,
                             on_event=lambda event: queue.offer(MalformedTelemetry(count=1)))
        undo.callback(broker.close)
        broker.join(digest)
        worker = ShardWorker(broker, functional, clock=ReplayClock, worker_id=worker_id or default_worker_id(),
                             max_batch=max_batch, telemetry=queue, observer=observer)
        monitor = DeviceMemoryMonitor(queue.offer, interval_s=device_memory_interval_s, log=False)
        undo.pop_all()
    return ClusterAssembly(worker=worker, functional=functional, broker=broker, telemetry=queue,
                           prometheus=prometheus, metrics_port=bound, monitor=monitor)



# -- tuning and hot reload (usp tune; docs/tuning.md) -----------------------------------------------

def tuning_predictor(config: PredictorConfig, plugin_manager: Any = None) -> ExplicitFunctionalPredictor:
    """A config's ``FunctionalPredictor`` on a replay clock: what the walk-forward objective streams."""
    return ExplicitFunctionalPredictor(**_functional_dependencies(config, ReplayClock(), None, plugin_manager))


def walk_forward(series: Sequence[Any], base: PredictorConfig | None = None, *, metric: str = "mase", folds: int = 5,
                 warmup: int | None = None, plugin_manager: Any = None, **options: Any) -> WalkForward:
    """The walk-forward objective (``usp.application.tuning.WalkForward``) of ``series`` around the
    ``base`` config (defaults if None); ``warmup`` defaults to ``base.wtmm_buffer_size``."""
    base = base or PredictorConfig()
    return WalkForward(series, base, lambda config: tuning_predictor(config, plugin_manager), metric=metric,
                       folds=folds, warmup=base.wtmm_buffer_size if warmup is None else warmup, **options)


class BayesianMetaOptimizer(ExplicitBayesianMetaOptimizer):
    """The resumable TPE campaign of spec §21.1 on an Optuna study (``usp.adapters.optuna_tuner``).

    Arguments as ``usp.application.tuning.BayesianMetaOptimizer``'s, with the tuner built from
    ``storage`` (``journal:PATH``, ``redis://...`` or an RDB URL; default: the journal in the
    directory of the default ``checkpoint_path``), ``seed``, ``sampler`` ("tpe" or "random") and
    ``metadata`` (the campaign's identity, checked when the study is resumed).
    """

    def __init__(self, search_space: Mapping[str, Any], objective_fn: Callable[[dict[str, Any]], float],
                 study_name: str, max_iterations: int, tier: str = "fast", *, storage: str | None = None,
                 seed: int = 0, sampler: str = "tpe", metadata: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        from .adapters.optuna_tuner import OptunaTuner

        storage = default_storage(PredictorConfig()) if storage is None else storage
        tuner = OptunaTuner(storage, study_name, seed=seed, sampler=sampler, metadata=metadata)
        super().__init__(search_space, objective_fn, study_name, max_iterations, tier, tuner=tuner, **options)


class ConfigReloadablePredictor(ExplicitConfigReloadablePredictor):
    """A ``UniversalPredictor`` that follows its config file (spec §21.4;
    ``usp.application.reloadable``): ``check_and_reload_config()`` adopts a changed, valid file,
    keeping the state when only sensitivity keys changed. ``clock`` and ``plugin_manager`` as
    :class:`UniversalPredictor`'s."""

    def __init__(self, config_path: str | os.PathLike[str] = "config.toml", clock: Clock | None = None, *,
                 plugin_manager: Any = None) -> None:
        clock = SystemClock() if clock is None else clock
        super().__init__(config_path, build=lambda config: ExplicitFunctionalPredictor(
            **_functional_dependencies(config, clock, None, plugin_manager)), stores_for=snapshot_stores)


def rollback_score(plugin_manager: Any = None) -> Callable[[PredictorConfig, Sequence[Any], int], float]:
    """The rollback guardrail's measure (``usp.application.tuning.recent_rmse``) with this root's predictors."""
    return recent_rmse(lambda config: tuning_predictor(config, plugin_manager))


__all__ = ["LIVE_SNAPSHOT_EVERY_S", "BayesianMetaOptimizer", "ClusterAssembly", "ConfigReloadablePredictor",
           "FunctionalPredictor", "ServiceAssembly", "UniversalPredictor", "build_cluster_worker", "build_service",
           "check_runtime", "configured_store", "default_worker_id", "platform_device", "rollback_score",
           "snapshot_stores", "tuning_predictor", "walk_forward"]
