"""JAX process settings applied before anything else in USP touches JAX.

x64 is on by default (the core is float64 throughout); a persistent compilation cache is used
when ``JAX_COMPILATION_CACHE_DIR`` is set (``make`` sets it to ``.jax_cache``), or under
``$XDG_CACHE_HOME/usp/jax`` for the command line. GPU memory settings of spec §5 are applied as
environment defaults before JAX is imported, without overriding what the user set.
"""

from __future__ import annotations

import os

for _name, _value in (("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7"),
                      ("XLA_PYTHON_CLIENT_ALLOCATOR", "platform"),
                      ("TF_FORCE_GPU_ALLOW_GROWTH", "true")):
    os.environ.setdefault(_name, _value)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_prng_impl", "threefry2x32")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (returns the directory used, if any)."""
    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


enable_compilation_cache()
