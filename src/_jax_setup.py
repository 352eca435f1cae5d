"""JAX process settings applied before anything else in USP touches JAX.

x64 is on by default (the core is float64 throughout); a persistent compilation cache is used
when ``JAX_COMPILATION_CACHE_DIR`` is set (``make`` sets it to ``.jax_cache``), or, for the
command line, under ``$XDG_CACHE_HOME/usp/jax`` (``~/.cache/usp/jax``). A cache directory that
cannot be created or written leaves the cache off and never stops a run: importing USP logs one
warning (logger ``usp``), except in the ``usp`` command, which prints it as one ``usp: warning:``
line instead (:func:`take_cache_problem`). GPU memory settings of spec §5 are applied as
environment defaults before JAX is imported, without overriding what the user set.

Cache entries are written atomically (:func:`atomic_cache_writes`): JAX writes an entry in place,
so a process killed while writing one (SIGKILL, OOM, power loss) would leave a truncated entry
that crashes the next process that reads it, in native code. USP writes each entry to a
temporary file beside it and renames it into place.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from typing import Any

#: The GPU memory settings of spec §5, as environment defaults: cap JAX's share of device memory
#: at 70%, allocate and free on demand (no preallocated arena to fragment; with the ``platform``
#: allocator nothing is preallocated), and turn TensorFlow-style growth on. They only matter on
#: GPU hosts and must be in the environment before JAX starts a backend.
MEMORY_SETTINGS: dict[str, str] = {
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.7",
    "XLA_PYTHON_CLIENT_ALLOCATOR": "platform",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
}


def apply_memory_settings(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put :data:`MEMORY_SETTINGS` into ``environ`` where the user has not set them (a value
    already there, even an empty one, is kept). Returns the settings now in force, by name.

    Importing USP applies them to ``os.environ`` before JAX is imported; calling it again is
    harmless. JAX reads them when it starts its GPU backend, so settings changed later do not
    affect a running process.
    """
    for name, value in MEMORY_SETTINGS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in MEMORY_SETTINGS}


apply_memory_settings()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_prng_impl", "threefry2x32")

logger = logging.getLogger("usp")


def atomic_cache_writes() -> bool:
    """Make JAX's file cache write each entry to a temporary file and rename it into place, so a
    reader never sees a partial entry and a killed writer leaves none behind. Returns whether the
    cache writes atomically (False, leaving JAX's own writer, when the pinned JAX's cache does not
    have the layout this relies on)."""
    from jax._src import lru_cache

    cache = lru_cache.LRUCache
    if getattr(cache.put, "usp_atomic", False):
        return True
    jax_put = cache.put
    needed = ("_CACHE_SUFFIX", "_ATIME_SUFFIX")
    if not all(hasattr(lru_cache, name) for name in needed) or not hasattr(cache, "_evict_if_needed"):
        logger.debug("JAX's compilation cache has another layout; its own writer is kept")
        return False

    def put(self: Any, key: str, value: bytes) -> None:
        if not key:
            raise ValueError("key cannot be empty")
        if "://" in str(self.path):  # a remote cache (gs://...): no rename there
            return jax_put(self, key, value)
        if self.eviction_enabled and len(value) > self.max_size:
            return  # (JAX warns and skips it too)
        cache_path = self.path / f"{key}{lru_cache._CACHE_SUFFIX}"
        if self.eviction_enabled:
            self.lock.acquire(timeout=self.lock_timeout_secs)
        try:
            if cache_path.exists():
                return
            self._evict_if_needed(additional_size=len(value))
            staged = self.path / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                staged.write_bytes(value)
                os.replace(os.fspath(staged), os.fspath(cache_path))
            finally:
                if staged.exists():
                    staged.unlink()
            if self.eviction_enabled:
                atime_path = self.path / f"{key}{lru_cache._ATIME_SUFFIX}"
                atime_path.write_bytes(time.time_ns().to_bytes(8, "little"))
        finally:
            if self.eviction_enabled:
                self.lock.release()

    put.usp_atomic = True  # type: ignore[attr-defined]
    cache.put = put  # type: ignore[method-assign]
    return True


atomic_cache_writes()


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default:
    ``$JAX_COMPILATION_CACHE_DIR``); returns the directory used, or None when there is none.

    Raises:
        OSError: the directory cannot be created or written (the message names it); the
            cache is then off, also for JAX's own reading of ``JAX_COMPILATION_CACHE_DIR``.
    """
    directory = os.fspath(directory) if directory else os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        jax.config.update("jax_compilation_cache_dir", None)
        raise type(exc)(exc.errno, exc.strerror, directory) if exc.errno is not None else exc from None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def check_backend() -> str:
    """Start JAX's default backend now and return its platform ("cpu", "gpu", "tpu").

    Raises:
        ConfigError: no backend starts (e.g. ``JAX_PLATFORMS=gpu`` on a machine without a
            GPU); the message names ``JAX_PLATFORMS`` and JAX's reason.
    """
    from .domain._errors import ConfigError

    try:
        return jax.default_backend()
    except RuntimeError as exc:
        platforms = jax.config.values.get("jax_platforms")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"JAX cannot start a backend for JAX_PLATFORMS={platforms!r}: {reason} (unset "
                          "JAX_PLATFORMS, or set it to 'cpu')") from exc


def _started_as_command_line() -> bool:
    """Whether this process is being started as the ``usp`` command: ``python -m usp.cli`` (while
    the module is located, ``sys.argv[0]`` is ``"-m"``) or the ``usp`` console script."""
    argv = list(getattr(sys, "orig_argv", ()))
    if sys.argv[:1] == ["-m"]:
        for index, arg in enumerate(argv):
            if arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
                module = arg[2:] or (argv[index + 1] if index + 1 < len(argv) else "")
                return module == "usp.cli"
        return False
    return bool(sys.argv) and os.path.basename(sys.argv[0]) in ("usp", "usp.exe", "usp-script.py")


#: The import-time problem with ``JAX_COMPILATION_CACHE_DIR`` that the command line reports.
_cache_problem: OSError | None = None


def take_cache_problem() -> OSError | None:
    """The problem that turned ``$JAX_COMPILATION_CACHE_DIR`` off when USP was imported, left for
    the ``usp`` command to report (once: later calls return None); None when there was none or
    it was logged (USP imported by another program)."""
    global _cache_problem
    problem, _cache_problem = _cache_problem, None
    return problem


def _log_cache_problem(error: OSError) -> None:
    logger.warning("JAX compilation cache off: JAX_COMPILATION_CACHE_DIR=%s: %s", error.filename, error.strerror)


def _log_untaken_cache_problem() -> None:  # (a program named "usp" that is not the command)
    problem = take_cache_problem()
    if problem is not None:
        _log_cache_problem(problem)


try:
    enable_compilation_cache()
except OSError as _error:
    if _started_as_command_line():
        _cache_problem = _error
        atexit.register(_log_untaken_cache_problem)
    else:
        _log_cache_problem(_error)
