"""``usp serve``: run the predictor as a long-lived service (docs/service.md).

Ticks come in from a source (a ``.csv``/``.jsonl`` file, ``-`` for stdin, a Redis stream),
predictions go out to sinks (files, ``-`` for stdout, a Redis stream), telemetry goes to the
``logging`` module and, with ``--metrics-port``, to Prometheus ``/metrics``. The wiring is
``composition.build_service``; this module adds the process around it:

* **signals** (spec §10): the first SIGTERM or SIGINT sets the service's stop event: intake
  stops, what was read is applied, the pending snapshot is awaited, the final one written, the
  sinks flushed; then the command exits 0. A watchdog started by that first signal ends the
  process with :data:`EXIT_GRACE_EXPIRED` if all this takes longer than ``--grace-seconds``; a
  second signal ends it at once with ``128 + signal number`` (130 SIGINT, 143 SIGTERM). Either
  way no snapshot is left half written (stores write atomically: a snapshot is complete or
  absent), and for a Redis source what was not acknowledged is redelivered on restart.
* **streams**: stdout carries only a ``-`` sink's records; every progress, log and summary line
  goes to stderr.

The service runs on a worker thread while the main thread waits for it, so a signal is handled
at once, whatever the service is doing (compiling, waiting on a broker).

``usp serve --cluster URL --shards P --sink redis://...?stream=NAME`` runs one worker of a
scale-out cluster instead (:func:`serve_cluster`; ``composition.build_cluster_worker``,
docs/scale-out.md), with the same signals, grace period and streams; at the end it releases its
shards, whose last commits stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .composition import ServiceAssembly, build_service
from .domain import ConfigError, PredictorConfig

#: Exit status when the graceful shutdown outlasts ``--grace-seconds`` (as ``timeout(1)``).
EXIT_GRACE_EXPIRED = 124
#: Default ``--grace-seconds`` (spec §10: within the 30 s a container runtime usually allows).
DEFAULT_GRACE_SECONDS = 25.0
#: Default ``--max-batch``: most ticks per micro-batch.
DEFAULT_MAX_BATCH = 4096

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@attrs.frozen
class ServeOptions:
    """The flags of ``usp serve`` (units: seconds)."""

    source: str
    sinks: tuple[str, ...] = ("-",)
    metrics_port: int | None = None
    metrics_assets: tuple[str, ...] = ()
    snapshot_every_s: float | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    follow: bool = False
    max_batch: int = DEFAULT_MAX_BATCH
    reload_every_s: float | None = None  #: follow ``config_path`` (``--reload-every``), or None
    config_path: Path | None = None


def check_options(options: ServeOptions, config_path: Path | None = None) -> None:
    """Refuse specs and flag combinations that cannot work, before anything is opened or compiled.

    Raises:
        EndpointError: a source or sink spec that names nothing usable; ``--follow`` with a
            source that is not a file; a sink that is the source or another sink.
        ConfigError: a file sink that is the config file.
    """
    from .adapters.endpoints import EndpointError, parse_endpoint

    source = parse_endpoint(options.source, "source")
    if options.follow and source.kind != "file":
        shown = "- (stdin)" if source.kind == "std" else "a Redis stream"
        raise EndpointError(f"--follow tails a growing file; --source is {shown}, not a .csv or .jsonl file")
    sinks = [parse_endpoint(spec, "sink") for spec in options.sinks]
    for i, sink in enumerate(sinks):
        if sink.same_place(source):
            raise EndpointError(f"--sink {sink.spec if sink.kind == 'file' else sink.stream} is also the source; "
                                "write elsewhere")
        if any(sink.same_place(other) or sink.kind == other.kind == "std" for other in sinks[:i]):
            raise EndpointError(f"--sink {sink.spec if sink.kind != 'redis' else sink.stream} is given twice")
        if sink.kind == "file" and config_path is not None and _same_path(Path(sink.spec), config_path):
            raise ConfigError(f"--sink {sink.spec} is the config file {config_path}; write it elsewhere")


def _same_path(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return a.resolve() == b.resolve()


class ShutdownSignals:
    """SIGTERM/SIGINT handling of spec §10 (see the module doc).

    ``stop`` is the service's stop event. :meth:`install` takes over both signals (in the main
    thread only; elsewhere it does nothing) and :meth:`restore` gives them back. ``exit`` ends
    the process without unwinding (``os._exit``: no ``finally`` block, no half-written output).
    """

    def __init__(self, stop: threading.Event, grace_seconds: float, *,
                 exit: Callable[[int], Any] = os._exit) -> None:
        self.stop = stop
        self.grace_seconds = float(grace_seconds)
        self._exit = exit
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None
        #: the first signal (its number), and when it came (``time.monotonic()``), or None
        self.signal: int | None = None
        self.since: float | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in _SIGNALS:
            self._previous[number] = signal.signal(number, self.handle)

    def restore(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def handle(self, number: int, frame: Any = None) -> None:
        """The signal handler (also callable directly)."""
        del frame
        name = signal.Signals(number).name
        if self.signal is not None:
            _say(f"usp: {name} again: exiting at once (no final snapshot; the last complete one stays)\n")
            self._exit(128 + number)
            return
        self.signal, self.since = number, time.monotonic()
        self.stop.set()
        _say(f"usp: {name}: stopping intake, finishing the read ticks and the final snapshot "
             f"(at most {self.grace_seconds:g} s; send it again to exit at once)\n")
        self._watchdog = threading.Timer(self.grace_seconds, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        _say(f"usp: error: the graceful shutdown took longer than {self.grace_seconds:g} s; exiting (no final "
             "snapshot; the last complete one stays)\n")
        self._exit(EXIT_GRACE_EXPIRED)


def _say(text: str) -> None:
    """Write to stderr without Python's buffered streams (safe inside a signal handler)."""
    data = text.encode("utf-8", "replace")
    while data:
        try:
            written = os.write(2, data)
        except OSError:
            return
        data = data[written:]


class _StderrLog(logging.Handler):
    """Log records of the ``usp`` loggers as one stderr line each, INFO and above (the plugin
    manager's warnings already have their own ``usp: warning:`` lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s usp %(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("usp.plugins")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: nothing useful left to do
            pass


def describe(assembly: ServiceAssembly, options: ServeOptions) -> str:
    """The start line: where ticks come from and go, the clock, the store, the metrics URL."""
    clock = "wall clock (live source)" if assembly.live else "replay clock"
    every = ("final only" if assembly.snapshot_every_s is None
             else f"every {assembly.snapshot_every_s:g} s and final")
    metrics = ("" if assembly.metrics_port is None
               else f"; metrics on http://localhost:{assembly.metrics_port}/metrics")
    reload = ("" if options.reload_every_s is None
              else f"; {options.config_path} reloaded when changed, checked every {options.reload_every_s:g} s")
    return (f"usp: serving {assembly.source.name} -> {', '.join(sink.name for sink in assembly.sinks)} "
            f"({clock}; snapshots {every} to {type(assembly.store).__name__}; batches of at most "
            f"{options.max_batch} ticks{metrics}{reload})")


def summary_line(summary: Any, signal_number: int | None, dropped: int) -> str:
    """The one-line summary printed when the service ends."""
    rate = summary.ticks / summary.seconds if summary.seconds > 0 else 0.0
    how = f"stopped by {signal.Signals(signal_number).name}" if signal_number is not None else "source ended"
    return (f"usp: served {summary.ticks} ticks of {summary.assets} assets in {summary.seconds:.2f} s "
            f"({rate:,.0f} ticks/s); {summary.restored} assets restored from the store; "
            f"{summary.skipped} redelivered ticks skipped; {summary.snapshots} snapshots; "
            + (f"{summary.reloads} config reloads; " if summary.reloads else "")
            + f"{how}; telemetry records dropped: {dropped}")


def serve(options: ServeOptions, config: PredictorConfig, *, stdin: Any = None, stdout: Any = None,
          on_finished: Callable[[ServiceAssembly], None] | None = None) -> int:
    """Run ``usp serve`` until the source ends or a signal stops it; returns the exit status (0).

    ``stdin``/``stdout`` replace the process's binary streams for ``-``. ``on_finished`` is
    called after the service has stopped and its telemetry drained, while ``/metrics`` is still
    served (the shutdown metrics are then in it), just before the endpoint closes.

    Raises:
        ConfigError, EndpointError, OSError: bad flags, specs or endpoints (before any tick),
            or a failure while serving (the sinks and the source are closed first).
    """
    stop = threading.Event()
    with _serving(stop, options.grace_seconds) as signals:
        assembly = build_service(config, source=options.source, sinks=options.sinks, follow=options.follow,
                                 metrics_port=options.metrics_port, metrics_assets=options.metrics_assets,
                                 snapshot_every_s=options.snapshot_every_s, max_batch=options.max_batch,
                                 stdin=stdin, stdout=stdout, config_path=options.config_path,
                                 reload_every_s=options.reload_every_s)
        try:
            _say(describe(assembly, options) + "\n")
            summary = _run_in_worker(assembly, stop)  # (the service reports its shutdown telemetry)
            assembly.finish()
            if on_finished is not None:
                on_finished(assembly)
            _say(summary_line(summary, signals.signal, assembly.telemetry.dropped_total()) + "\n")
        finally:
            assembly.close()
        return 0


# -- usp serve --cluster (docs/scale-out.md) -------------------------------------------------------

@attrs.frozen
class ClusterOptions:
    """The flags of ``usp serve --cluster URL --shards P --sink SPEC`` (units: seconds)."""

    cluster: str
    shards: int
    sink: str
    metrics_port: int | None = None
    metrics_assets: tuple[str, ...] = ()
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    max_batch: int = DEFAULT_MAX_BATCH


def cluster_options(*, cluster: str | None, shards: int | None, source: str | None, sinks: tuple[str, ...],
                    follow: bool, snapshot_every_s: float | None, **rest: Any) -> ClusterOptions:
    """The options of a cluster worker from the ``usp serve`` flags, refusing those that do not
    go with ``--cluster`` before anything is opened.

    Raises:
        EndpointError: ``--cluster`` without ``--shards`` (or the reverse), with ``--source``,
            ``--follow`` or ``--snapshot-every``, without exactly one ``--sink``, or a bad URL.
    """
    from .adapters.endpoints import EndpointError, parse_endpoint
    from .adapters.redis_cluster import parse_cluster_url

    if cluster is None:
        raise EndpointError("--shards goes with --cluster URL (docs/scale-out.md)")
    if shards is None:
        raise EndpointError("--cluster needs --shards P, the number of shards the ticks were published to")
    for flag, given in (("--source", source is not None), ("--follow", follow),
                        ("--snapshot-every", snapshot_every_s is not None)):
        if given:
            raise EndpointError(f"{flag} does not go with --cluster: a worker reads its shards' streams and commits "
                                "every micro-batch")
    if len(sinks) != 1:
        raise EndpointError("--cluster needs exactly one --sink redis://HOST:PORT/DB?stream=NAME on the cluster's "
                            "server (the predictions of shard k go to NAME:{k})")
    endpoint = parse_cluster_url(cluster)
    output = parse_endpoint(sinks[0], "sink")
    if output.kind != "redis" or output.url is None or not endpoint.same_database(output.url):
        raise EndpointError(f"--sink {sinks[0]!r}: with --cluster the sink is a Redis stream on the cluster's own "
                            "server and database (redis://HOST:PORT/DB?stream=NAME)")
    return ClusterOptions(cluster=cluster, shards=shards, sink=sinks[0], **rest)


def describe_cluster(assembly: Any, options: ClusterOptions) -> str:
    """The start line of a cluster worker."""
    broker = assembly.broker
    metrics = ("" if assembly.metrics_port is None
               else f"; metrics on http://localhost:{assembly.metrics_port}/metrics")
    return (f"usp: worker {assembly.worker.worker_id} joining {broker.name} ({broker.shards} shards, lease "
            f"{broker.lease_ms} ms) -> {broker.stream}:{{k}} (shard replay clocks; a commit every micro-batch of "
            f"at most {options.max_batch} entries{metrics})")


def cluster_summary_line(summary: Any, signal_number: int | None) -> str:
    """The one-line summary printed when a cluster worker ends."""
    rate = summary.ticks / summary.seconds if summary.seconds > 0 else 0.0
    how = f"stopped by {signal.Signals(signal_number).name}" if signal_number is not None else "stopped"
    return (f"usp: worker {summary.worker} applied {summary.ticks} ticks ({summary.entries} entries) in "
            f"{summary.commits} commits over {summary.seconds:.2f} s ({rate:,.0f} ticks/s); shards acquired "
            f"{summary.acquired}, released {summary.released}; leases found lost by a renewal: {summary.expired}; "
            f"commits refused (fenced): {summary.fenced}; {how}")


def serve_cluster(options: ClusterOptions, config: PredictorConfig, *,
                  on_finished: Callable[[Any], None] | None = None) -> int:
    """Run one cluster worker until a signal stops it; returns the exit status (0). Signals,
    the grace period and the streams are as :func:`serve`'s; at the end the worker's shards are
    released (their last commits stay) so that the other workers take them over at once.

    Raises:
        ConfigError, EndpointError, OSError: bad flags or URLs, a cluster set up with another
            shard count or config, Redis unreachable (before any tick), or a Redis failure while
            working (the leases then expire by themselves).
    """
    from .composition import build_cluster_worker

    stop = threading.Event()
    with _serving(stop, options.grace_seconds) as signals:
        assembly = build_cluster_worker(config, cluster=options.cluster, shards=options.shards, sink=options.sink,
                                        metrics_port=options.metrics_port, metrics_assets=options.metrics_assets,
                                        max_batch=options.max_batch)
        try:
            _say(describe_cluster(assembly, options) + "\n")
            summary = _run_in_worker(assembly, stop)
            assembly.finish()
            if on_finished is not None:
                on_finished(assembly)
            _say(cluster_summary_line(summary, signals.signal) + "\n")
        finally:
            assembly.close()
        return 0


@contextlib.contextmanager
def _serving(stop: threading.Event, grace_seconds: float) -> Iterator[ShutdownSignals]:
    """The process around a service: SIGTERM/SIGINT handlers that set ``stop`` (restored after),
    and the ``usp`` logger's INFO lines on stderr."""
    signals = ShutdownSignals(stop, grace_seconds)
    log, usp_logger = _StderrLog(), logging.getLogger("usp")
    level = usp_logger.level
    usp_logger.addHandler(log)
    if usp_logger.getEffectiveLevel() > logging.INFO:
        usp_logger.setLevel(logging.INFO)
    signals.install()
    try:
        yield signals
    finally:
        signals.restore()
        usp_logger.removeHandler(log)
        usp_logger.setLevel(level)


def _run_in_worker(assembly: Any, stop: threading.Event) -> Any:
    """``assembly.run(stop)`` on a worker thread; the calling (main) thread waits in short,
    interruptible steps so that signal handlers run at once. Re-raises the service's error."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["summary"] = assembly.run(stop)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="usp-serve", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]


__all__ = ["DEFAULT_GRACE_SECONDS", "DEFAULT_MAX_BATCH", "EXIT_GRACE_EXPIRED", "ClusterOptions", "ServeOptions",
           "ShutdownSignals", "check_options", "cluster_options", "cluster_summary_line", "describe",
           "describe_cluster", "serve", "serve_cluster", "summary_line"]
