"""Signature and kernel D benchmark: µs per path / per tick, side by side with iisignature.

* signature of a 128×2 path at depth 3 and 5: one path through a jitted ``signature`` and, per
  path, a ``vmap`` batch of 1000 paths; iisignature (``sig`` on one path, and on the
  ``(1000, 128, 2)`` array) timed in the same run on the same data;
* kernel D ``update`` + ``predict`` per tick, jitted, one asset and per asset in a vmapped batch
  of 1000, at depths 2, 3 and 5.

Times are the best of several repeats (wall clock, after compilation). Prints a table and writes
``benchmarks/results/signature.json``.

    .venv/bin/python benchmarks/bench_signature.py [--batch 1000] [--repeats 7]
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
from usp.domain.signature import signature
from usp.plugins.kernel_d import KERNEL_D

try:
    import iisignature
except ImportError:  # test-only dependency
    iisignature = None

RESULTS = Path(__file__).resolve().parent / "results" / "signature.json"


def bench_signatures(batch: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    one = rng.standard_normal((128, 2)).cumsum(0)
    many = rng.standard_normal((batch, 128, 2)).cumsum(1)
    rows = []
    for depth in (3, 5):
        single = jax.jit(lambda p, m=depth: signature(p, m))
        batched = jax.jit(jax.vmap(lambda p, m=depth: signature(p, m)))
        row = {
            "depth": depth, "path": [128, 2], "batch": batch,
            "usp_single_us": best_us(single, jnp.asarray(one), calls=200, repeats=repeats),
            "usp_batch_us_per_path": best_us(batched, jnp.asarray(many), calls=3, repeats=repeats) / batch,
            "iisignature_single_us": None, "iisignature_batch_us_per_path": None,
        }
        if iisignature is not None:
            np.testing.assert_allclose(np.asarray(single(jnp.asarray(one))), iisignature.sig(one, depth),
                                       rtol=1e-10, atol=1e-10)
            row["iisignature_single_us"] = best_us(iisignature.sig, one, depth, calls=200, repeats=repeats)
            row["iisignature_batch_us_per_path"] = best_us(iisignature.sig, many, depth, calls=3,
                                                           repeats=repeats) / batch
        rows.append(row)
    return rows


def bench_kernel(batch: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(1)
    size = PredictorConfig().window_size
    rows = []
    for depth in (2, 3, 5):
        config = PredictorConfig(log_sig_depth=depth)

        def tick(state, window, config=config):
            state = KERNEL_D.update(state, window, config)
            return state, KERNEL_D.predict(state, window, config)

        state = KERNEL_D.init(config, jax.random.PRNGKey(0))
        window = Window(values=jnp.asarray(rng.standard_normal(size).cumsum()), count=jnp.int32(size),
                        signal_frozen=jnp.asarray(False), emergency=jnp.asarray(False))
        states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), state)
        windows = Window(values=jnp.asarray(rng.standard_normal((batch, size)).cumsum(1)),
                         count=jnp.full((batch,), size, jnp.int32), signal_frozen=jnp.zeros(batch, bool),
                         emergency=jnp.zeros(batch, bool))
        rows.append({
            "depth": depth, "batch": batch,
            "single_us_per_tick": best_us(jax.jit(tick), state, window, calls=200, repeats=repeats),
            "batch_us_per_asset_tick": best_us(jax.jit(jax.vmap(tick)), states, windows, calls=5,
                                               repeats=repeats) / batch,
        })
    return rows


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    signatures = bench_signatures(args.batch, args.repeats)
    kernel = bench_kernel(args.batch, args.repeats)
    print(f"signature of a 128x2 path (µs per path; ratio = usp / iisignature; batch = {args.batch})")
    print(f"{'depth':>5} {'usp 1':>9} {'iisig 1':>9} {'ratio':>6} {'usp batch':>10} "
          f"{'iisig batch':>12} {'ratio':>6}")
    for r in signatures:
        ii1, iib = r["iisignature_single_us"], r["iisignature_batch_us_per_path"]
        print(f"{r['depth']:>5} {r['usp_single_us']:>9.2f} {ii1 or float('nan'):>9.2f} "
              f"{_ratio(r['usp_single_us'], ii1):>6} {r['usp_batch_us_per_path']:>10.2f} "
              f"{iib or float('nan'):>12.2f} {_ratio(r['usp_batch_us_per_path'], iib):>6}")
    print("\nkernel D update+predict (jitted, µs)")
    print(f"{'depth':>5} {'per tick (1 asset)':>19} {'per asset-tick (batch)':>23}")
    for r in kernel:
        print(f"{r['depth']:>5} {r['single_us_per_tick']:>19.1f} {r['batch_us_per_asset_tick']:>23.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "signature": signatures, "kernel_d": kernel,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg()),
                    "iisignature": getattr(iisignature, "__version__", None)},
        "timing": f"best of {args.repeats} repeats, wall clock after compilation",
    }
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
