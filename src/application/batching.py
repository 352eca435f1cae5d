"""How a batch of assets is cut for the compiled graph: fixed-width vmapped chunks, and gathered
reading pieces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

#: Assets per vmapped chunk in ``step_batch`` and the batched roughness reads: every batch runs
#: as chunks of exactly this width (the last one padded), chunk after chunk (``lax.map``) inside
#: one compiled graph. XLA's arithmetic for a row depends on the width of the vmap it runs in
#: (vectorised loops and fusions differ with the shape: ≈ 1 ulp), so one fixed width makes a
#: row's numbers independent of the batch size and of its position in the batch; on CPU a narrow
#: chunk's working set also stays in cache (docs/benchmarks.md).
BATCH_CHUNK = 8


def chunked_vmap(fn: Callable[..., Any], chunk: int) -> Callable[..., Any]:
    """``vmap(fn)`` over the leading (asset) axis of every argument, as fixed-width chunks.

    N rows are padded to a multiple of ``chunk`` (at least two chunks) with copies of row 0
    (their results are dropped), run through one loop over the ``ceil(N / chunk)`` chunks that
    hold rows, each ``vmap(fn)`` at width ``chunk``, and cut back to N rows. Every row is
    computed by the same compiled chunk program, whatever N and wherever the row sits, so its
    outputs are bitwise the same for every batch size (tests/test_batch_width.py). Shapes are
    static: one compilation per batch size. A batch of N ≤ ``chunk`` rows costs a whole chunk.
    """
    vfn = jax.vmap(fn)

    def run(*args):
        n = jax.tree_util.tree_leaves(args)[0].shape[0]
        chunks = max(1, -(-n // chunk))
        slots = max(2, chunks)
        padded = slots * chunk

        def split(a):
            if padded != n:
                a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (padded - n, *a.shape[1:]))])
            return a.reshape((slots, chunk, *a.shape[1:]))

        stacked = jax.tree_util.tree_map(split, args)
        shapes = jax.eval_shape(vfn, *jax.tree_util.tree_map(lambda a: a[0], stacked))
        start = jax.tree_util.tree_map(lambda s: jnp.zeros((slots, *s.shape), s.dtype), shapes)

        def body(i, done):
            part = vfn(*jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked))
            return jax.tree_util.tree_map(lambda d, p: jax.lax.dynamic_update_index_in_dim(d, p, i, 0), done, part)

        # The loop body must compile to the same program for every batch size, so the compiler
        # must not specialise it: the chunk axis has at least two slots (a one-slot axis would let
        # it drop the indexing and fuse differently; a spare slot is padding, never computed),
        # and the trip count goes through an optimization barrier (a loop known to run once
        # would be inlined).
        trips = jax.lax.optimization_barrier(jnp.int32(chunks))
        mapped = jax.lax.fori_loop(0, trips, body, start)
        return jax.tree_util.tree_map(lambda a: a.reshape((padded, *a.shape[2:]))[:n], mapped)

    return run


def read_piece(assets: int, refresh_steps: int) -> int:
    """Rows per gathered roughness read in ``step_batch``: a power of two ≥ 8 and ≥ twice the
    N / R assets due on a typical tick once the assets' refresh ticks have spread out (after
    rejected ticks or staggered starts), capped at N."""
    wanted = max(8, 2 * -(-assets // refresh_steps))
    return min(assets, 1 << (wanted - 1).bit_length())


__all__ = ["BATCH_CHUNK", "chunked_vmap", "read_piece"]
