"""Core benchmark: step latency, batch throughput, compile time, fit_history, memory.

Prints a table and writes ``benchmarks/results/core.json``. Figures are medians over repeats;
machines are noisy, so compare ratios rather than absolute numbers.

    python benchmarks/bench_core.py [--quick] [--kernels A,D]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import psutil
from usp import ColumnarBatch, FunctionalPredictor, PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_800_000_000_000_000_000
MS = 1_000_000


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def single_step_latency(config: PredictorConfig, ticks: int) -> dict:
    predictor = UniversalPredictor(config, clock=ReplayClock())
    series = np.cumsum(np.random.default_rng(0).standard_normal(ticks))
    predictor.fit_history(series[:300])
    latencies = []
    for i, value in enumerate(series[300:]):
        start = time.perf_counter_ns()
        predictor.step(ProcessState(float(value), T0 + i * MS))
        latencies.append(time.perf_counter_ns() - start)
    lat = np.asarray(latencies[200:]) / 1e3
    return {"ticks": len(lat), "p50_us": float(np.median(lat)), "p99_us": float(np.percentile(lat, 99)),
            "max_us": float(lat.max())}


def batch_throughput(config: PredictorConfig, sizes: tuple[int, ...], steps: int, repeats: int) -> dict:
    functional = FunctionalPredictor(config, clock=ReplayClock())
    out = {}
    for n in sizes:
        states = functional.init_state(n)
        values = np.cumsum(np.random.default_rng(n).standard_normal((steps * repeats + 3, n)), axis=0)
        for k in range(3):
            states, _ = functional.step_batch(states, ColumnarBatch(values[k], np.full(n, T0 + k * MS)))
        rates = []
        for r in range(repeats):
            start = time.perf_counter()
            for k in range(3 + r * steps, 3 + (r + 1) * steps):
                states, _ = functional.step_batch(states, ColumnarBatch(values[k], np.full(n, T0 + k * MS)))
            rates.append(steps * n / (time.perf_counter() - start))
        out[str(n)] = {"asset_steps_per_s": float(np.median(rates)), "step_ms": float(n / np.median(rates) * 1e3)}
    return out


def fit_history_time(config: PredictorConfig, points: int) -> dict:
    series = np.cumsum(np.random.default_rng(1).standard_normal(points))
    predictor = UniversalPredictor(config, clock=ReplayClock())
    start = time.perf_counter()
    predictor.fit_history(series)
    first = time.perf_counter() - start
    runs = []
    for _ in range(3):
        predictor = UniversalPredictor(config, clock=ReplayClock())
        start = time.perf_counter()
        predictor.fit_history(series)
        runs.append(time.perf_counter() - start)
    return {"points": points, "first_call_s": first, "compiled_s": float(np.median(runs)),
            "us_per_point": float(np.median(runs) / points * 1e6)}


FIRST_PREDICTION = """
import time; start = time.perf_counter()
import usp
from usp import UniversalPredictor, ProcessState, PredictorConfig
from usp.adapters.clocks import ReplayClock
p = UniversalPredictor(PredictorConfig(enabled_kernels=tuple({kernels!r})), clock=ReplayClock())
p.step(ProcessState(1.0, 10**18))
print(time.perf_counter() - start)
"""


def first_prediction(kernels: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
        code = FIRST_PREDICTION.format(kernels=list(kernels))
        cold = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    return {"cold_s": cold, "warm_cache_s": warm}


def memory_over_ticks(config: PredictorConfig, ticks: int) -> dict:
    predictor = UniversalPredictor(config, clock=ReplayClock())
    rng = np.random.default_rng(2)
    value, samples = 0.0, {}
    for i in range(ticks):
        value += rng.standard_normal()
        predictor.step(ProcessState(value, T0 + i * MS))
        if (i + 1) % (ticks // 10) == 0:
            samples[i + 1] = rss_mb()
    marks = sorted(samples)
    growth = samples[marks[-1]] - samples[marks[len(marks) // 2 - 1]]
    return {"ticks": ticks, "rss_mb": samples, "growth_mb_second_half": growth}


def state_bytes(config: PredictorConfig) -> int:
    state = FunctionalPredictor(config).init_state()
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(state)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--kernels", default=",".join(PredictorConfig().enabled_kernels))
    args = parser.parse_args()
    kernels = tuple(args.kernels.split(","))
    config = PredictorConfig(enabled_kernels=kernels)
    quick = args.quick
    print(f"USP core benchmark — kernels {kernels}, {os.cpu_count()} CPUs, jax {jax.__version__}", flush=True)
    results = {
        "kernels": kernels, "cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
        "first_prediction": first_prediction(kernels),
        "single_step": single_step_latency(config, 1000 if quick else 5000),
        # each repeat spans wtmm_refresh_steps ticks: one roughness refresh per asset, as in steady state
        "step_batch": batch_throughput(config, (1, 100, 1000), config.wtmm_refresh_steps, 2 if quick else 5),
        "fit_history": fit_history_time(config, 5000),
        "state_bytes_per_asset": state_bytes(config),
        "memory": memory_over_ticks(config, 10_000 if quick else 100_000),
    }
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("first prediction, cold cache (s)", f"{results['first_prediction']['cold_s']:.2f}"),
        ("first prediction, warm cache (s)", f"{results['first_prediction']['warm_cache_s']:.2f}"),
        ("single step p50 (µs)", f"{results['single_step']['p50_us']:.0f}"),
        ("single step p99 (µs)", f"{results['single_step']['p99_us']:.0f}"),
        *[(f"step_batch {n} assets (asset-steps/s)", f"{v['asset_steps_per_s']:,.0f}")
          for n, v in results["step_batch"].items()],
        ("fit_history 5000 points, compiled (s)", f"{results['fit_history']['compiled_s']:.3f}"),
        ("fit_history 5000 points, first call (s)", f"{results['fit_history']['first_call_s']:.2f}"),
        ("state bytes per asset", f"{results['state_bytes_per_asset']:,}"),
        (f"RSS growth over last half of {results['memory']['ticks']:,} ticks (MB)",
         f"{results['memory']['growth_mb_second_half']:.1f}"),
        ("peak RSS (MB)", f"{results['peak_rss_mb']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows))
    RESULTS.mkdir(exist_ok=True)
    name = "core.json" if not quick else "core-quick.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {RESULTS / name}")


if __name__ == "__main__":
    main()
