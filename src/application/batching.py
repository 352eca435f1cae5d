"""How a batch of assets is cut for the compiled graph: vmapped chunks, and gathered reading pieces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

#: Assets per vmapped chunk in ``step_batch``. Larger batches run chunk after chunk (``lax.map``)
#: inside the same compiled graph: on CPU a chunk's working set stays in cache, which measured
#: 57k asset-steps/s at 1000 assets against 24k for one 1000-wide vmap (docs/benchmarks.md).
BATCH_CHUNK = 256


def chunked_vmap(fn: Callable[..., Any], chunk: int) -> Callable[..., Any]:
    """``vmap(fn)`` over the leading (asset) axis of every argument, ``chunk`` assets at a time.

    Full chunks go through ``lax.map``; the remainder is one more vmap. Every asset's arithmetic
    is the vmapped function's, and shapes are static, so it compiles once per batch size.
    """
    vfn = jax.vmap(fn)

    def run(*args):
        n = jax.tree_util.tree_leaves(args)[0].shape[0]
        full = (n // chunk) * chunk
        if full == 0 or n <= chunk:
            return vfn(*args)

        def head(a):
            return a[:full].reshape((full // chunk, chunk, *a.shape[1:]))

        mapped = jax.lax.map(lambda chunk_args: vfn(*chunk_args), jax.tree_util.tree_map(head, args))
        mapped = jax.tree_util.tree_map(lambda a: a.reshape((full, *a.shape[2:])), mapped)
        if full == n:
            return mapped
        rest = vfn(*jax.tree_util.tree_map(lambda a: a[full:], args))
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), mapped, rest)

    return run


def read_piece(assets: int, refresh_steps: int) -> int:
    """Rows per gathered roughness read in ``step_batch``: a power of two ≥ 8 and ≥ twice the
    N / R assets due on a typical tick once the assets' refresh ticks have spread out (after
    rejected ticks or staggered starts), capped at N."""
    wanted = max(8, 2 * -(-assets // refresh_steps))
    return min(assets, 1 << (wanted - 1).bit_length())


__all__ = ["BATCH_CHUNK", "chunked_vmap", "read_piece"]
