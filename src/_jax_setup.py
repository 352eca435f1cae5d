"""JAX process settings applied before anything else in USP touches JAX.

x64 is on by default (the core is float64 throughout); a persistent compilation cache is used
when ``JAX_COMPILATION_CACHE_DIR`` is set (``make`` sets it to ``.jax_cache``), or, for the
command line, under ``$XDG_CACHE_HOME/usp/jax`` (``~/.cache/usp/jax``). A cache directory that
cannot be created or written leaves the cache off (importing USP logs one warning; the command
line prints one) and never stops a run. GPU memory settings of spec §5 are applied as
environment defaults before JAX is imported, without overriding what the user set.
"""

from __future__ import annotations

import logging
import os
import tempfile

for _name, _value in (("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7"),
                      ("XLA_PYTHON_CLIENT_ALLOCATOR", "platform"),
                      ("TF_FORCE_GPU_ALLOW_GROWTH", "true")):
    os.environ.setdefault(_name, _value)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_prng_impl", "threefry2x32")

logger = logging.getLogger("usp")


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
        platforms = jax.config.jax_platforms
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"JAX cannot start a backend for JAX_PLATFORMS={platforms!r}: {reason} (unset "
                          "JAX_PLATFORMS, or set it to 'cpu')") from exc


try:
    enable_compilation_cache()
except OSError as _error:
    logger.warning("JAX compilation cache off: JAX_COMPILATION_CACHE_DIR=%s: %s", _error.filename, _error.strerror)
