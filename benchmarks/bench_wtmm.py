"""WTMM benchmark: cost per call, estimator accuracy against DFA, and the online 128-sample buffer.

* cost: µs per ``wtmm`` / ``holder_exponent`` call on a 128-sample buffer — one buffer through
  the jitted function (median and best of many calls, after warm-up) and per buffer in a
  ``vmap`` batch of 1000 (also evaluated as ``lax.map`` over vmapped chunks of 8, which keeps
  the temporaries in cache);
* accuracy: bias and standard deviation of the Hölder estimate on exact 128-point fBm for
  H = 0.2 … 0.8, side by side with a plain DFA-1 estimator run on the same paths, and the mean
  relative error on 4096-point fBm (the acceptance figure);
* online: 128-sample windows sliding one tick at a time along Gaussian random walks and along
  fBm with H = 0.2 — raw estimates, EMA-smoothed estimates (several weights), and the share of
  time a circuit breaker with hysteresis (on below 0.4, off above 0.4 + margin) would be on.

Prints tables and writes ``benchmarks/results/wtmm.json``.

    .venv/bin/python benchmarks/bench_wtmm.py [--paths 400] [--ticks 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import usp  # noqa: F401  (x64)
from usp.domain import PredictorConfig
from usp.domain.sia import holder_exponent, wtmm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fbm import fbm  # the exact generator of the tests

RESULTS = Path(__file__).resolve().parent / "results" / "wtmm.json"
HURST = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def timed_calls(function, argument, calls: int) -> np.ndarray:
    """Wall time of each of `calls` calls (s), results blocked on, after one warm-up call."""
    jax.block_until_ready(function(argument))
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        jax.block_until_ready(function(argument))
        times[i] = time.perf_counter() - started
    return times


def bench_cost(config: PredictorConfig, batch: int, chunk: int) -> list[dict]:
    rng = np.random.default_rng(0)
    one = jnp.asarray(rng.standard_normal(128).cumsum())
    many = jnp.asarray(rng.standard_normal((batch, 128)).cumsum(axis=1))
    rows = []
    for name, fn in (("wtmm", wtmm), ("holder_exponent", holder_exponent)):
        single = jax.jit(lambda x, f=fn: f(x, config))
        batched = jax.jit(jax.vmap(lambda x, f=fn: f(x, config)))
        chunked = jax.jit(lambda xs, f=fn: jax.tree_util.tree_map(
            lambda leaf: leaf.reshape(batch, *leaf.shape[2:]),
            jax.lax.map(jax.vmap(lambda x: f(x, config)), xs.reshape(batch // chunk, chunk, 128))))
        started = time.perf_counter()
        jax.block_until_ready(single(one))
        compile_s = time.perf_counter() - started
        t1 = timed_calls(single, one, 500) * 1e6
        tb = timed_calls(batched, many, 7) * 1e6 / batch
        tc = timed_calls(chunked, many, 7) * 1e6 / batch
        rows.append({"function": name, "voices_per_octave": config.wtmm_voices_per_octave,
                     "compile_s": compile_s, "single_median_us": float(np.median(t1)),
                     "single_best_us": float(np.min(t1)), "batch": batch,
                     "vmap_median_us_per_buffer": float(np.median(tb)),
                     "vmap_best_us_per_buffer": float(np.min(tb)), "chunk": chunk,
                     "chunked_median_us_per_buffer": float(np.median(tc)),
                     "chunked_best_us_per_buffer": float(np.min(tc))})
    return rows


def dfa_hurst(paths: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Plain DFA-1 on the paths themselves (the profile): F(s) = RMS residual of a straight line
    fitted in each non-overlapping box of s samples; H = slope of log F against log s."""
    log_f = []
    for s in scales:
        boxes = paths.shape[1] // s
        segments = paths[:, : boxes * s].reshape(paths.shape[0], boxes, s)
        t = np.arange(s) - (s - 1) / 2
        slope = np.sum(segments * t, axis=2, keepdims=True) / np.sum(t * t)
        residual = segments - segments.mean(axis=2, keepdims=True) - slope * t
        log_f.append(0.5 * np.log(np.mean(residual ** 2, axis=(1, 2))))
    x = np.log(scales) - np.log(scales).mean()
    y = np.stack(log_f, axis=1)
    return np.sum((y - y.mean(axis=1, keepdims=True)) * x, axis=1) / np.sum(x * x)


def bench_accuracy(config: PredictorConfig, paths: int) -> dict:
    estimate = jax.jit(jax.vmap(lambda x: holder_exponent(x, config)))
    dfa_scales = np.unique(np.round(np.geomspace(4, 32, 7)).astype(int))
    short = []
    for h in HURST:
        data = np.stack([fbm(128, h, np.random.default_rng(10_000 + seed)) for seed in range(paths)])
        w = np.asarray(estimate(jnp.asarray(data)))
        d = dfa_hurst(data, dfa_scales)
        short.append({"H": h, "wtmm_bias": float(w.mean() - h), "wtmm_std": float(w.std()),
                      "wtmm_rmse": float(np.sqrt(np.mean((w - h) ** 2))), "dfa_bias": float(d.mean() - h),
                      "dfa_std": float(d.std()), "dfa_rmse": float(np.sqrt(np.mean((d - h) ** 2)))})
    long = []
    for h in (0.3, 0.5, 0.7):
        data = np.stack([fbm(4096, h, np.random.default_rng(seed)) for seed in range(20)])
        w = np.asarray(estimate(jnp.asarray(data)))
        long.append({"H": h, "seeds": 20, "mean_relative_error": float(np.mean(np.abs(w - h)) / h),
                     "bias": float(w.mean() - h), "std": float(w.std())})
    return {"n128": short, "n128_paths": paths, "dfa_scales": dfa_scales.tolist(), "n4096": long}


def breaker_time(smoothed: np.ndarray, enter: float, leave: float) -> float:
    """Share of ticks a breaker is on that switches on below `enter` and off above `leave`."""
    on, count = False, 0
    for value in smoothed:
        on = value < enter if not on else value <= leave
        count += on
    return count / smoothed.size


def bench_online(config: PredictorConfig, ticks: int, repeats: int) -> dict:
    estimate = jax.jit(jax.vmap(lambda x: holder_exponent(x, config)))
    enter = config.holder_threshold
    margins = (config.robustness_hysteresis_margin, 0.05, 0.0)
    out = {}
    for label, h in (("random_walk", 0.5), ("fbm_0.2", 0.2)):
        raw_all, rows = [], {}
        smooth = {alpha: [] for alpha in sorted({config.holder_smoothing, 0.05, 0.02, 0.01, 0.005},
                                                reverse=True)}
        for r in range(repeats):
            rng = np.random.default_rng(77 + r)
            path = (np.cumsum(rng.standard_normal(ticks + 127)) if label == "random_walk"
                    else fbm(ticks + 127, h, rng))
            raw = np.asarray(estimate(jnp.asarray(np.lib.stride_tricks.sliding_window_view(path, 128))))
            raw_all.append(raw)
            for alpha in smooth:
                state, values = raw[0], np.empty_like(raw)
                for i, value in enumerate(raw):
                    state += alpha * (value - state)
                    values[i] = state
                smooth[alpha].append(values[int(3 / alpha):])  # past the EMA's start-up
        raw = np.concatenate(raw_all)
        for alpha, parts in smooth.items():
            values = np.concatenate(parts)
            rows[str(alpha)] = {"mean": float(values.mean()), "std": float(values.std()),
                                "share_below_threshold": float(np.mean(values < enter)),
                                "breaker_on_share_by_margin": {
                                    str(m): float(np.mean([breaker_time(p, enter, enter + m) for p in parts]))
                                    for m in margins}}
        out[label] = {"raw_mean": float(raw.mean()), "raw_std": float(raw.std()),
                      "raw_share_below_threshold": float(np.mean(raw < enter)), "smoothed": rows}
    out.update({"ticks_per_path": ticks, "paths": repeats, "enter_below": enter, "margins": list(margins)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=400, help="128-point fBm paths per H")
    parser.add_argument("--ticks", type=int, default=4000, help="ticks per online path")
    parser.add_argument("--repeats", type=int, default=4, help="online paths per process")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    config = PredictorConfig()
    load_before = os.getloadavg()
    cost = bench_cost(config, args.batch, 8)
    cost += bench_cost(attrs.evolve(config, wtmm_voices_per_octave=4), args.batch, 8)
    accuracy = bench_accuracy(config, args.paths)
    online = bench_online(config, args.ticks, args.repeats)
    result = {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cost": cost, "accuracy": accuracy, "online": online}

    print("cost per call on a 128-sample buffer (µs; median / best)")
    print(f"{'function':17s} {'v':>2s} {'single':>15s} {'vmap 1000':>15s} {'chunked 8':>15s}")
    for row in cost:
        print(f"{row['function']:17s} {row['voices_per_octave']:2d} "
              f"{row['single_median_us']:7.0f} / {row['single_best_us']:5.0f} "
              f"{row['vmap_median_us_per_buffer']:7.0f} / {row['vmap_best_us_per_buffer']:5.0f} "
              f"{row['chunked_median_us_per_buffer']:7.0f} / {row['chunked_best_us_per_buffer']:5.0f}")
    print(f"\nHölder estimate on 128-point fBm ({args.paths} paths per H)")
    print(f"{'H':>4s} {'WTMM bias':>10s} {'WTMM std':>9s} {'DFA bias':>9s} {'DFA std':>8s}")
    for row in accuracy["n128"]:
        print(f"{row['H']:4.1f} {row['wtmm_bias']:+10.3f} {row['wtmm_std']:9.3f} {row['dfa_bias']:+9.3f} "
              f"{row['dfa_std']:8.3f}")
    print("\n4096-point fBm, 20 seeds: " + ", ".join(
        f"H={row['H']}: rel. error {100 * row['mean_relative_error']:.1f}%" for row in accuracy["n4096"]))
    print(f"\nonline 128-sample buffer ({args.repeats} × {args.ticks} ticks; breaker on below "
          f"{online['enter_below']}, off above {online['enter_below']} + margin, margins {online['margins']})")
    for label in ("random_walk", "fbm_0.2"):
        part = online[label]
        print(f"{label:12s} raw {part['raw_mean']:.3f} ± {part['raw_std']:.3f} "
              f"(below {online['enter_below']}: {100 * part['raw_share_below_threshold']:.0f}%)")
        for alpha, row in part["smoothed"].items():
            shares = " / ".join(f"{100 * v:4.1f}%" for v in row["breaker_on_share_by_margin"].values())
            print(f"{'':12s} EMA α={alpha:<5s} {row['mean']:.3f} ± {row['std']:.3f}  below: "
                  f"{100 * row['share_below_threshold']:5.1f}%  breaker on: {shares}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
