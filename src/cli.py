"""The ``usp`` command line.

    usp --version                # "usp <version>" of the installed distribution
    usp [--debug] run DATA.csv [--config config.toml] [--out predictions.csv] [--plot report.png]
    usp kernels list             # installed kernels, and plugins that failed to load
    usp config defaults          # the documented default config.toml on stdout
    usp config check FILE        # validate a config file exactly as building a predictor does

Exit status: 0 on success; 2 for an expected failure (bad data, config or option, an I/O error,
a JAX backend that does not start), reported as one ``usp: error:`` line on stderr (``--debug``
adds the traceback); 1 with a traceback for anything unexpected; 130 when interrupted. Outputs
are replaced atomically, so a failed run leaves existing files as they were.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from . import _jax_setup
from ._backtest import BacktestResult
from ._cli_run import check_outputs, run
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


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "kernels":
        return _kernels_list()
    if args.command == "config":
        if args.action == "check":
            return _config_check(args.file)
        sys.stdout.write(default_config_toml() if args.action == "defaults" else config_reference_markdown())
        return 0
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
