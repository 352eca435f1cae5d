"""Kernel C benchmark: µs per asset-tick of ``update`` + ``predict``, one asset and batched.

Kernel C re-estimates the jump diffusion on its window and simulates ``kernel_c.N_PATHS`` paths
every tick; this measures that cost, jitted, for one asset and per asset in a ``vmap`` batch, at
window sizes 64 and 256 (the default). Times are the best of several repeats (wall clock, after
compilation). Prints a table and writes ``benchmarks/results/kernel_c.json``.

    .venv/bin/python benchmarks/bench_kernel_c.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import usp  # noqa: F401  (x64)
from _timing import best_us
from usp.domain import PredictorConfig, Window
from usp.plugins import kernel_c
from usp.plugins.kernel_c import KERNEL_C

RESULTS = Path(__file__).resolve().parent / "results" / "kernel_c.json"


def _windows(size: int, batch: int) -> Window:
    rng = np.random.default_rng(0)
    jumps = rng.poisson(0.1, (batch, size)) * rng.normal(5.0, 1.0, (batch, size))
    values = np.cumsum(rng.standard_normal((batch, size)) + jumps, axis=1)
    return Window(jnp.asarray(values), jnp.full(batch, size, jnp.int32), jnp.zeros(batch, bool),
                  jnp.zeros(batch, bool))


def bench(batch: int, repeats: int) -> list[dict]:
    rows = []
    for size in (64, 256):
        config = PredictorConfig(window_size=size, wtmm_buffer_size=min(size, 128), enabled_kernels=("C",))

        def tick(state, window, config=config):
            state = KERNEL_C.update(state, window, config)
            return state, KERNEL_C.predict(state, window, config)

        windows = _windows(size, batch)
        one = jax.tree_util.tree_map(lambda a: a[0], windows)
        state = KERNEL_C.init(config, jax.random.PRNGKey(0))
        keys = jax.random.split(jax.random.PRNGKey(0), batch)
        states = jax.vmap(lambda k, config=config: KERNEL_C.init(config, k))(keys)
        single = best_us(jax.jit(tick), state, one, calls=50, repeats=repeats)
        batched = best_us(jax.jit(jax.vmap(tick)), states, windows, calls=5, repeats=repeats) / batch
        rows.append({"window_size": size, "paths": kernel_c.N_PATHS, "substeps": kernel_c.SUBSTEPS,
                     "single_us_per_tick": single, "batched_us_per_asset_tick": batched, "batch": batch})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = bench(args.batch, args.repeats)
    print(f"{'window':>7} {'paths':>6} {'single µs/tick':>15} {'batched µs/asset-tick':>22}")
    for row in rows:
        print(f"{row['window_size']:>7} {row['paths']:>6} {row['single_us_per_tick']:>15.1f} "
              f"{row['batched_us_per_asset_tick']:>22.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "kernel_c", "rows": rows, "batch": args.batch, "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend()},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
