"""The ``usp`` command line.

    usp --version                # "usp <version>" of the installed distribution
    usp [--debug] run DATA.csv [--config config.toml] [--out predictions.csv] [--plot report.png]
    usp [--debug] serve --source SPEC [--sink SPEC ...] [--config config.toml] [--metrics-port N]
              [--snapshot-every S] [--grace-seconds S] [--follow] [--max-batch N] [--reload-every S]
                                 # the long-lived service (docs/service.md)
    usp [--debug] serve --cluster redis://HOST:PORT/DB --shards P --sink redis://HOST:PORT/DB?stream=NAME
              [--config config.toml] [--metrics-port N] [--max-batch N]
                                 # one worker of a scale-out cluster (docs/scale-out.md)
    usp [--debug] publish DATA.csv --to redis://HOST:PORT/DB --shards P
                                 # ticks of a file into the cluster's shard streams
    usp [--debug] tune DATA.csv ... [--tier fast|deep] [--trials N] [--seed S] [--storage URL] [--study NAME]
              [--export config.toml] [--plot history.png]   # resumable tuning (docs/tuning.md)
    usp kernels list             # installed kernels, and plugins that failed to load
    usp config defaults          # the documented default config.toml on stdout
    usp config check FILE        # validate a config file exactly as building a predictor does

Exit status: 0 on success; 2 for an expected failure (bad data, config or option, an I/O error,
a JAX backend that does not start), reported as one ``usp: error:`` line on stderr (``--debug``
adds the traceback); 1 with a traceback for anything unexpected; 130 when interrupted. Outputs
are replaced atomically, so a failed run leaves existing files as they were. ``usp serve`` exits 0
after a graceful shutdown, 124 when the shutdown outlasts ``--grace-seconds`` and 128 + N when a
second signal N arrives (``usp._cli_serve``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import _jax_setup
from ._backtest import BacktestResult
from ._cli_args import port as _port
from ._cli_args import positive_int as _positive_int
from ._cli_args import positive_seconds as _positive_seconds
from ._cli_run import check_outputs, run
from ._cli_tune import add_tune_parser
from .adapters.clocks import ReplayClock
from .adapters.report_plot import PLOT_FORMATS
from .application.config_file import load_config
from .domain import ConfigError, DomainError, PredictorConfig, USPError
from .domain._config import FIELDS, SECTIONS

# --- commands -------------------------------------------------------------------------------


def default_config_toml() -> str:
    """The default configuration as documented TOML (what config.toml holds)."""
    config = PredictorConfig()
    lines = ["# USP configuration. Every key is optional; the values below are the defaults.",
             "# Unknown keys, wrong types and out-of-range values are errors that name the key.",
             "# Keys marked [locked] are never changed by the tuner."]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for name, field in FIELDS.items():
            meta = field.metadata
            if meta["section"] != section:
                continue
            value = getattr(config, name)
            allowed = ("one of " + ", ".join(repr(c) for c in meta["choices"]) if meta["choices"] else
                       f"range [{meta['lo']}, {meta['hi'] if meta['hi'] is not None else 'inf'}]"
                       if meta["lo"] is not None else "")
            notes = "; ".join(part for part in (meta["unit"] and f"unit {meta['unit']}", allowed,
                                                "[locked]" if meta["locked"] else "") if part)
            lines.append(f"# {meta['doc']}" + (f" ({notes})" if notes else ""))
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def config_reference_markdown() -> str:
    """The table of every key (docs/configuration.md is this plus its introduction)."""
    config = PredictorConfig()
    lines: list[str] = []
    for section in SECTIONS:
        lines += ["", f"### `[{section}]`", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for name, field in FIELDS.items():
            meta = field.metadata
            if meta["section"] != section:
                continue
            allowed = (", ".join(repr(c) for c in meta["choices"]) if meta["choices"] else
                       f"[{meta['lo']}, {meta['hi'] if meta['hi'] is not None else '∞'}]"
                       if meta["lo"] is not None else "any")
            unit = f" ({meta['unit']})" if meta["unit"] else ""
            lock = " **Locked.**" if meta["locked"] else ""
            lines.append(f"| `{name}` | `{_toml_value(getattr(config, name))}` | {allowed} | "
                         f"{meta['doc']}{unit}{lock} |")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    return repr(value)


def _kernels_list() -> int:
    from .plugins.manager import available_kernels, broken_plugins, build_plugin_manager

    manager = build_plugin_manager()
    rows = [(name, spec.source, spec.description) for name, spec in sorted(available_kernels(manager).items())]
    rows += [(broken.name, broken.source, f"BROKEN (skipped): {broken.error}") for broken in broken_plugins(manager)]
    width = max(len(name) for name, _, _ in rows)
    for name, source, description in rows:
        print(f"{name:<{width}}  [{source}]  {description}")
    return 0


def _config_check(path: Path) -> int:
    """Build a predictor from the file, as ``usp run`` does: the same validation, no compilation."""
    from .composition import FunctionalPredictor

    config = load_config(path)
    try:
        kernels = FunctionalPredictor(config, clock=ReplayClock()).kernels
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    print(f"{path}: ok (kernels: {', '.join(f'{k.name} [{k.source}]' for k in kernels)})")
    return 0


def default_cache_directory() -> Path | None:
    """``$XDG_CACHE_HOME/usp/jax``, else ``~/.cache/usp/jax``; None without a home directory."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            return None
    return Path(base) / "usp" / "jax"


def _enable_cache() -> None:
    """The compilation cache of the command line: ``$JAX_COMPILATION_CACHE_DIR`` (already set up
    when USP was imported) or :func:`default_cache_directory`. An unusable directory is a
    warning: the run goes on without the cache."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = default_cache_directory()
    if directory is None:
        _warn("no home directory: the compilation cache is off (set JAX_COMPILATION_CACHE_DIR to keep "
              "compiled graphs between runs)")
        return
    try:
        _jax_setup.enable_compilation_cache(directory)
    except OSError as exc:
        _warn(f"the compilation cache is off: {_describe(exc)} (set JAX_COMPILATION_CACHE_DIR to a writable "
              "directory to keep compiled graphs between runs)")


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else PredictorConfig()
    if not args.data.is_file():
        raise DomainError(f"{args.data}: {'is a directory' if args.data.is_dir() else 'no such file'}")
    check_outputs(args.data, args.out, args.plot, args.config)
    _enable_cache()
    _jax_setup.check_backend()

    def show(summary: BacktestResult) -> None:
        print(f"\nUSP run on {args.data} (kernels: {', '.join(config.enabled_kernels)})")
        print(summary.table())
        advice = summary.sampling_advice(config)
        if advice is not None:
            _warn(advice)
        if args.out is not None:
            print(f"  predictions written to {args.out}")

    run(args.data, config, args.out, args.plot, progress=not args.quiet, show=show, config_path=args.config)
    if args.plot is not None:
        print(f"  report written to {args.plot}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from . import _cli_serve

    _jax_setup.apply_memory_settings()  # (already applied when usp was imported; a no-op then)
    config = load_config(args.config) if args.config else PredictorConfig()
    if args.reload_every is not None and args.config is None:
        raise ConfigError("--reload-every follows the --config file; give --config FILE")
    if args.cluster is not None or args.shards is not None:
        if args.reload_every is not None:
            raise ConfigError("--reload-every is not available with --cluster: restart the workers with the new "
                              "config")
        cluster = _cli_serve.cluster_options(
            cluster=args.cluster, shards=args.shards, source=args.source, sinks=tuple(args.sink or ()),
            follow=args.follow, snapshot_every_s=args.snapshot_every, metrics_port=args.metrics_port,
            metrics_assets=tuple(args.metrics_asset or ()), grace_seconds=args.grace_seconds,
            max_batch=args.max_batch)
        _enable_cache()
        _jax_setup.check_backend()
        return _cli_serve.serve_cluster(cluster, config)
    options = _cli_serve.ServeOptions(source=args.source, sinks=tuple(args.sink or ("-",)),
                                      metrics_port=args.metrics_port, metrics_assets=tuple(args.metrics_asset or ()),
                                      snapshot_every_s=args.snapshot_every, grace_seconds=args.grace_seconds,
                                      follow=args.follow, max_batch=args.max_batch,
                                      reload_every_s=args.reload_every, config_path=args.config)
    _cli_serve.check_options(options, args.config)
    _enable_cache()
    _jax_setup.check_backend()
    return _cli_serve.serve(options, config)


def _publish(args: argparse.Namespace) -> int:
    from ._cli_publish import publish

    return publish(args.data, args.to, args.shards)


def _tune(args: argparse.Namespace) -> int:
    from ._cli_tune import tune

    _enable_cache()
    _jax_setup.check_backend()
    return tune(args)


def version() -> str:
    """The installed distribution's version (``importlib.metadata``), else the package's
    ``__version__``, else ``"unknown"`` (a source tree that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("usp")
    except metadata.PackageNotFoundError:
        package = sys.modules.get(__package__ or "usp")
        return str(getattr(package, "__version__", "unknown"))


def _parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error, not only its one-line message")
    parser = argparse.ArgumentParser(prog="usp", description="Universal Stochastic Predictor", parents=[debug],
                                     epilog="Exit status: 0 success, 2 an error reported in one line "
                                            "(bad input, config, I/O, JAX backend), 1 an unexpected failure "
                                            "(with its traceback).")
    parser.add_argument("--version", action="version", version=f"usp {version()}",
                        help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="stream a CSV through the predictor", parents=[debug])
    run_parser.add_argument("data", type=Path, help="UTF-8 CSV: 'timestamp,value' or one value column")
    run_parser.add_argument("--config", type=Path, help="config.toml (defaults if omitted)")
    run_parser.add_argument("--out", type=Path, help="per-tick predictions CSV to write (a file is replaced "
                            "atomically; a device or pipe, such as /dev/stdout, is written directly)")
    run_parser.add_argument("--plot", type=Path, help="report image to draw; the suffix names the format: "
                            + ", ".join(f".{f}" for f in PLOT_FORMATS))
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_serve_parser(commands, debug)
    publish = commands.add_parser(
        "publish", parents=[debug], help="publish the ticks of a file to the shard streams of a cluster",
        description="Read DATA as usp serve --source DATA does and publish each tick to the Redis stream of its "
                    "asset's shard (CRC-32 of the id mod P), in file order. See docs/scale-out.md.")
    publish.add_argument("data", type=Path, help="a .csv (asset,timestamp,value) or .jsonl file of ticks")
    publish.add_argument("--to", required=True, metavar="URL",
                         help="the cluster: redis://HOST:PORT/DB[?prefix=NAME]")
    publish.add_argument("--shards", required=True, type=_positive_int, metavar="P", help="number of shards")
    add_tune_parser(commands, debug)
    kernels = commands.add_parser("kernels", help="installed kernels", parents=[debug])
    kernels.add_argument("action", choices=["list"])
    config = commands.add_parser("config", help="configuration helpers", parents=[debug])
    config_actions = config.add_subparsers(dest="action", required=True)
    config_actions.add_parser("defaults", help="print the documented default config.toml", parents=[debug])
    config_actions.add_parser("reference", help="print the Markdown reference of every key", parents=[debug])
    check = config_actions.add_parser("check", help="validate a config file as building a predictor does",
                                      parents=[debug])
    check.add_argument("file", type=Path)
    return parser


def _add_serve_parser(commands: Any, debug: argparse.ArgumentParser) -> None:
    endpoints = ("a .csv or .jsonl file, - (stdin/stdout, JSON lines on stdout), or "
                 "redis://HOST:PORT/DB?stream=NAME")
    serve = commands.add_parser(
        "serve", parents=[debug], help="run as a service: ticks from a source, predictions to sinks",
        description="Serve predictions for many assets until the source ends (a replayed file) or SIGTERM/SIGINT. "
                    "Records are asset,timestamp,value (RFC 3339 with an offset, or integer UTC nanoseconds). "
                    "See docs/service.md.",
        epilog="Exit status: 0 after the source ended or a graceful shutdown; 2 bad flags, config or "
               "endpoints (one line); 124 the shutdown outlasted --grace-seconds; 128+N a second signal N.")
    serve.add_argument("--config", type=Path, help="config.toml (defaults if omitted)")
    origin = serve.add_mutually_exclusive_group(required=True)
    origin.add_argument("--source", metavar="SPEC",
                        help=f"where ticks come from: {endpoints} (a Redis source adds &group=NAME "
                             "[&consumer=NAME])")
    origin.add_argument("--cluster", metavar="URL",
                       help="work as one worker of a scale-out cluster instead: redis://HOST:PORT/DB "
                            "[?prefix=NAME&lease_ms=N] (with --shards and one Redis --sink; docs/scale-out.md)")
    serve.add_argument("--shards", type=_positive_int, metavar="P",
                       help="with --cluster: the number of shards the ticks were published to")
    serve.add_argument("--sink", action="append", metavar="SPEC",
                       help=f"where predictions go, repeatable: {endpoints} (default: -)")
    serve.add_argument("--metrics-port", type=_port, metavar="PORT",
                       help="serve Prometheus /metrics on this port (0: any free port, printed on stderr)")
    serve.add_argument("--metrics-asset", action="append", metavar="ASSET",
                       help="also export this asset's kernel weights (repeatable; keep the set small)")
    serve.add_argument("--snapshot-every", type=_positive_seconds, metavar="SECONDS",
                       help="snapshot every asset's state this often (default: every 60 s for a live "
                            "source, final snapshot only for a replayed file; a final snapshot is always written)")
    serve.add_argument("--grace-seconds", type=_positive_seconds, default=25.0, metavar="SECONDS",
                       help="after SIGTERM/SIGINT, exit 124 if shutting down takes longer (default: 25)")
    serve.add_argument("--follow", action="store_true",
                       help="keep reading a file source as it grows (it is then live: wall-clock time)")
    serve.add_argument("--max-batch", type=_positive_int, default=4096, metavar="N",
                       help="most ticks per micro-batch (default: 4096)")
    serve.add_argument("--reload-every", type=_positive_seconds, metavar="SECONDS",
                       help="look at the --config file this often and adopt a new valid version between "
                            "micro-batches (sensitivity changes keep every state, structural ones restart "
                            "them cold; docs/service.md)")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "kernels":
        return _kernels_list()
    if args.command == "config":
        if args.action == "check":
            return _config_check(args.file)
        sys.stdout.write(default_config_toml() if args.action == "defaults" else config_reference_markdown())
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "tune":
        return _tune(args)
    if args.command == "publish":
        return _publish(args)
    return _run(args)


def _describe(exc: BaseException) -> str:
    """One line: an OSError as "file: reason", anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        named = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{named}: {exc.strerror}" if named else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _warn(message: str) -> None:
    print(f"usp: warning: {message}", file=sys.stderr)


class _WarningLine(logging.Handler):
    """Logged warnings as one ``usp: warning:`` line each on the current stderr (for the plugin
    manager's: a broken plugin that is skipped)."""

    def emit(self, record: logging.LogRecord) -> None:
        _warn(" ".join(record.getMessage().split()))


def main(argv: list[str] | None = None) -> int:
    """The ``usp`` command. Expected failures (bad input or config, I/O, the JAX backend) print
    one ``usp: error:`` line and return 2 (with ``--debug`` the traceback too); anything else
    raises with its traceback."""
    cache_problem = _jax_setup.take_cache_problem()
    if cache_problem is not None:
        _warn(f"the compilation cache is off: JAX_COMPILATION_CACHE_DIR={cache_problem.filename}: "
              f"{cache_problem.strerror} (set it to a writable directory, or unset it)")
    args = _parser().parse_args(argv)
    warning_lines = _WarningLine(logging.WARNING)
    logging.getLogger("usp.plugins").addHandler(warning_lines)
    try:
        return _dispatch(args)
    except (USPError, OSError) as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"usp: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("usp: interrupted (unfinished outputs were not written)", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("usp.plugins").removeHandler(warning_lines)


if __name__ == "__main__":
    raise SystemExit(main())
