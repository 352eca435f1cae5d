"""Kernel B benchmark: µs per asset-tick of ``update`` + ``predict`` + ``report``, one asset and
batched, and the refit cadence that keeps the batched average within budget.

A tick of kernel B is one of three kinds: a plain tick (the forecast from the stored solution), a
refit tick (regression, backward solve, collapse check; every ``kernel_b_refit_steps``) and a
training tick (``kernel_b_dgm_refresh_iterations`` Adam iterations; every
``kernel_b_dgm_refresh_steps``). Each kind is timed on its own (jitted, after compilation, best
of several repeats; the batch runs as ``step_batch`` runs it, fixed-width vmapped chunks), and the
average per asset-tick for a cadence is ``plain + (refit − plain)/N + (train − plain)/M``. A real
stream of ``4N`` ticks with the default cadence checks that sum. Assets that start together share
their refit ticks; under ``vmap`` a refit runs only on ticks where some asset is due.

    .venv/bin/python benchmarks/bench_kernel_b.py [--batch 1000] [--repeats 3]

Prints a table and writes ``benchmarks/results/kernel_b.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import usp  # noqa: F401  (x64)
from _timing import best_us
from usp.application.batching import BATCH_CHUNK, chunked_vmap
from usp.domain import PredictorConfig, Window
from usp.plugins.kernel_b import KERNEL_B, Counter

RESULTS = Path(__file__).resolve().parent / "results" / "kernel_b.json"
#: The cost target: µs per asset-tick, averaged, in a batch of 1000.
BUDGET_US = 10.0
CADENCES = (4, 8, 16, 32, 64)


def _windows(size: int, batch: int) -> Window:
    values = np.cumsum(np.random.default_rng(0).standard_normal((batch, size)), axis=1)
    return Window(jnp.asarray(values), jnp.full(batch, size, jnp.int32), jnp.zeros(batch, bool), jnp.zeros(batch, bool))


def _phased(states, refit: bool, train: bool):
    """States whose next tick refits and/or trains (or neither)."""
    counters = states.counters.at[..., Counter.REFIT_PHASE].set(0 if refit else 1)
    return attrs.evolve(states, counters=counters.at[..., Counter.TRAIN_PHASE].set(0 if train else 1))


def bench(batch: int, repeats: int) -> dict:
    config = PredictorConfig(enabled_kernels=("B",))

    def tick(state, window):
        state = KERNEL_B.update(state, window, config)
        forecast = KERNEL_B.predict(state, window, config)
        report = KERNEL_B.report(state, config)
        return state, (forecast.mean, forecast.scale, report.values, report.events)

    windows = _windows(config.window_size, batch)
    one = jax.tree_util.tree_map(lambda a: a[0], windows)
    states = jax.jit(jax.vmap(lambda k: KERNEL_B.init(config, k)))(jax.random.split(jax.random.PRNGKey(0), batch))
    single_state = jax.tree_util.tree_map(lambda a: a[0], states)
    batched_tick, single_tick = jax.jit(chunked_vmap(tick, BATCH_CHUNK)), jax.jit(tick)
    kinds = {"plain": (False, False), "refit": (True, False), "train": (False, True)}
    batched, single = {}, {}
    for kind, (refit, train) in kinds.items():
        batched[kind] = 1e-6 * best_us(batched_tick, _phased(states, refit, train), windows, calls=2 if train else 5,
                                     repeats=repeats) / batch * 1e6
        single[kind] = 1e-6 * best_us(single_tick, _phased(single_state, refit, train), one, calls=5 if train else 50,
                                    repeats=repeats) * 1e6
    refresh = config.kernel_b_dgm_refresh_steps

    def average(costs: dict, cadence: int) -> float:
        plain = costs["plain"]
        return plain + (costs["refit"] - plain) / cadence + (costs["train"] - plain) / refresh

    # a real stream: 4N ticks with the default cadence (refits on their own ticks, no training)
    cadence = config.kernel_b_refit_steps
    stream = jax.jit(lambda s, w: jax.lax.scan(lambda c, _: (batched_tick(c, w)[0], None), s, None,
                                               length=4 * cadence)[0])
    start = _phased(states, True, False)
    streamed = 1e-6 * best_us(stream, start, windows, calls=1, repeats=repeats) / (4 * cadence) / batch * 1e6
    return {
        "batch": batch, "chunk": BATCH_CHUNK, "window_size": config.window_size,
        "refit_steps": cadence, "dgm_refresh_steps": refresh,
        "dgm_refresh_iterations": config.kernel_b_dgm_refresh_iterations,
        "batched_us_per_asset_tick": batched, "single_us_per_tick": single,
        "batched_average_us": {str(n): average(batched, n) for n in CADENCES},
        "single_average_us": {str(n): average(single, n) for n in CADENCES},
        "streamed_us_per_asset_tick_without_training": streamed,
        "budget_us": BUDGET_US, "within_budget": average(batched, cadence) <= BUDGET_US,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = bench(args.batch, args.repeats)
    print(f"{'tick kind':>10} {'single µs':>10} {'batched µs/asset':>17}")
    for kind in ("plain", "refit", "train"):
        single, batched = result["single_us_per_tick"][kind], result["batched_us_per_asset_tick"][kind]
        print(f"{kind:>10} {single:>10.1f} {batched:>17.1f}")
    print(f"\naverage per asset-tick (DGM refresh every {result['dgm_refresh_steps']} ticks, "
          f"{result['dgm_refresh_iterations']} iterations):")
    print(f"{'refit every':>12} {'single µs':>10} {'batched µs':>11}")
    for n in CADENCES:
        mark = "  <- default" if n == result["refit_steps"] else ""
        single, batched = result["single_average_us"][str(n)], result["batched_average_us"][str(n)]
        print(f"{n:>12} {single:>10.2f} {batched:>11.2f}{mark}")
    print(f"\nstreamed {4 * result['refit_steps']} ticks (refits, no training): "
          f"{result['streamed_us_per_asset_tick_without_training']:.2f} µs/asset-tick; budget {BUDGET_US} µs: "
          f"{'met' if result['within_budget'] else 'MISSED'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "kernel_b", **result, "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend(), "load_average": os.getloadavg()},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
