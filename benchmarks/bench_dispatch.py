"""Where a single-asset tick's time goes: dispatch, the compiled step's fixed cost, device time.

Every figure comes from this one process, measured side by side (median of many calls after
warm-up, µs):

* ``floor``: a jitted identity over one float64 array as large as the state (the dispatch floor);
* ``identity_state``: a jitted identity over the ``CoreState`` pytree (one buffer per leaf);
* ``identity_packed``: the same state packed into one buffer per dtype;
* ``step``: the jitted core step called once, as ``FunctionalPredictor`` calls it;
* ``step_packed``: the same step behind a packed boundary (unpack, step, pack inside the graph);
* ``loop_1`` / ``loop_8``: the packed step inside a ``fori_loop`` with a run-time trip count of
  1 and 8 (per call): the difference over 7 is the step's cost once the runtime is warm;
* ``scan_per_tick``: one ``fit_history`` scan of 2000 ticks, divided by 2000;
* ``dag_first`` / ``dag_next``: a synthetic graph of ``--width`` independent reductions on
  200-float arrays (no arithmetic to speak of): the cost of its first run in a call and of each
  further run inside the same loop.

The ratio ``loop_1 − (loop_8 − loop_1)/7`` against ``scan_per_tick`` is the fixed cost per call
that a scan amortises. Prints a table and writes ``benchmarks/results/dispatch.json``.

    .venv/bin/python benchmarks/bench_dispatch.py [--calls 2000] [--width 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from usp import FunctionalPredictor, PredictorConfig
from usp.adapters.clocks import ReplayClock
from usp.domain._core import UNTIMED, make_core

RESULTS = Path(__file__).resolve().parent / "results"


def median_us(call, calls: int) -> float:
    """Median wall time of ``call()`` (blocking on its result), after 50 warm-up calls."""
    for _ in range(50):
        jax.block_until_ready(call())
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter_ns()
        jax.block_until_ready(call())
        times[i] = time.perf_counter_ns() - start
    return float(np.median(times) / 1e3)


def packing(tree):
    """``(pack, unpack)`` between a pytree and one flat buffer per dtype (static offsets)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dtypes = sorted({np.dtype(leaf.dtype).str for leaf in leaves})
    offsets, sizes = [], dict.fromkeys(dtypes, 0)
    for leaf in leaves:
        kind = np.dtype(leaf.dtype).str
        offsets.append((kind, sizes[kind], np.shape(leaf)))
        sizes[kind] += int(np.prod(np.shape(leaf), dtype=np.int64))

    def pack(value):
        parts = {kind: [] for kind in dtypes}
        for leaf, (kind, _, _) in zip(jax.tree_util.tree_leaves(value), offsets, strict=True):
            parts[kind].append(jnp.ravel(leaf))
        return tuple(jnp.concatenate(parts[kind]) for kind in dtypes)

    def unpack(buffers):
        by_kind = dict(zip(dtypes, buffers, strict=True))
        leaves_out = [by_kind[kind][start:start + int(np.prod(shape, dtype=np.int64))].reshape(shape)
                      for kind, start, shape in offsets]
        return jax.tree_util.tree_unflatten(treedef, leaves_out)

    return pack, unpack


def synthetic_dag(width: int):
    """A graph of ``width`` independent small reductions joined at the end."""
    def graph(x):
        parts = [jax.lax.optimization_barrier(jnp.sum(x * (i + 1.0))) for i in range(width)]
        return x + 1e-12 * jnp.sum(jnp.stack(parts))
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    config = PredictorConfig()
    functional = FunctionalPredictor(config, clock=ReplayClock())
    series = np.cumsum(np.random.default_rng(0).standard_normal(2300))
    state, _ = functional.fit_history(functional.init_state(), series[:300])
    _, step, _, _ = make_core(config, functional.kernels)
    pack, unpack = packing(state)
    buffers = jax.jit(pack)(state)
    y, stamp, now = jnp.float64(series[300]), jnp.int64(UNTIMED), jnp.int64(0)

    def packed_step(buffers, y, stamp, now):
        inner = unpack(buffers)
        new, output = step(inner, y, stamp, now, inner.sia)
        return pack(new), output

    out_shape = jax.eval_shape(packed_step, buffers, y, stamp, now)[1]

    def looped(buffers, y, stamp, now, trips):
        zero = jnp.zeros(out_shape.shape, out_shape.dtype)
        return jax.lax.fori_loop(0, trips, lambda _, carry: packed_step(carry[0], y, stamp, now),
                                 (buffers, zero))

    packed_jit, loop_jit, identity = jax.jit(packed_step), jax.jit(looped), jax.jit(lambda x: x)
    floor_array = jnp.zeros(sum(int(b.size) for b in buffers))
    dag = synthetic_dag(args.width)
    dag_jit = jax.jit(lambda x, trips: jax.lax.fori_loop(0, trips, lambda _, v: dag(v), x))
    small = jnp.arange(200.0)
    calls = args.calls
    figures = {
        "floor": median_us(lambda: identity(floor_array), calls),
        "identity_state": median_us(lambda: identity(state), calls),
        "identity_packed": median_us(lambda: identity(buffers), calls),
        "step": median_us(lambda: functional._step(state, series[300], UNTIMED, 0, state.sia), calls),
        "step_packed": median_us(lambda: packed_jit(buffers, y, stamp, now), calls),
        "loop_1": median_us(lambda: loop_jit(buffers, y, stamp, now, 1), calls),
        "loop_8": median_us(lambda: loop_jit(buffers, y, stamp, now, 8), calls // 4),
    }
    jax.block_until_ready(functional._scan(state, series[300:]))
    start = time.perf_counter()
    jax.block_until_ready(functional._scan(state, series[300:]))
    figures["scan_per_tick"] = (time.perf_counter() - start) / (series.size - 300) * 1e6
    dag_one = median_us(lambda: dag_jit(small, 1), calls)
    dag_eight = median_us(lambda: dag_jit(small, 8), calls // 4)
    figures["dag_next"] = (dag_eight - dag_one) / 7
    figures["dag_first"] = dag_one - figures["dag_next"]
    figures["loop_next"] = (figures["loop_8"] - figures["loop_1"]) / 7
    figures["fixed_per_call"] = figures["loop_1"] - figures["loop_next"]
    leaves = jax.tree_util.tree_leaves(state)
    results = {"jax": jax.__version__, "cpus": os.cpu_count(), "platform": platform.platform(),
               "state_leaves": len(leaves), "packed_buffers": len(buffers),
               "state_bytes": int(sum(np.asarray(leaf).nbytes for leaf in leaves)),
               "dag_width": args.width, "calls": calls, "us": figures}
    print(f"USP dispatch benchmark — jax {jax.__version__}, {os.cpu_count()} CPUs, "
          f"{len(leaves)} state leaves → {len(buffers)} packed buffers")
    for name, value in figures.items():
        print(f"{name:<18} {value:>10.1f} µs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dispatch.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {RESULTS / 'dispatch.json'}")


if __name__ == "__main__":
    main()
