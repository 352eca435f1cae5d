"""WTMM benchmark: cost per call, estimator accuracy against DFA, and the online 128-sample buffer.

* cost: µs per ``wtmm`` / ``holder_exponent`` call on a 128-sample buffer — one buffer through
  the jitted function (median and best of many calls, after warm-up) and per buffer in a
  ``vmap`` batch of 1000 (also evaluated as ``lax.map`` over vmapped chunks of 8, which keeps
  the temporaries in cache);
* accuracy: bias and standard deviation of the Hölder estimate on exact 128-point fBm for
  H = 0.2 … 0.8, side by side with a plain DFA-1 estimator run on the same paths, and the mean
  relative error on 4096-point fBm (the acceptance figure);
* online: the predictor itself (``step_batch``, default config) on Gaussian random walks and on
  fBm with H = 0.2 — the share of post-calibration ticks in emergency mode, for the default
  ``holder_smoothing`` and its neighbours, and the smoothed exponent;
* predictor cost: what the engine adds to one predictor step — single-asset step latency on
  refresh ticks and on the others, and ``step_batch`` throughput at 1000 assets against the same
  config with the engine refreshed only once (``wtmm_refresh_steps`` = 65536), with the assets'
  refresh ticks in step and spread over all phases;
* reaction: ticks from the moment a random walk turns into fBm with H = 0.2 until emergency.

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
from usp import ColumnarBatch, FunctionalPredictor, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.domain import PredictorConfig
from usp.domain._core import Out
from usp.domain.sia import holder_exponent, koopman_spectrum, paley_wiener, wtmm

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
    for name, fn in (("wtmm", wtmm), ("holder_exponent", holder_exponent), ("koopman_spectrum", koopman_spectrum),
                     ("paley_wiener", paley_wiener)):
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


T0 = 1_800_000_000_000_000_000
MS = 1_000_000


def bench_online(config: PredictorConfig, ticks: int, paths: int) -> dict:
    """Emergency share of the real predictor (step_batch) on random walks and on fBm, H = 0.2."""
    buffer = config.wtmm_buffer_size
    length = buffer + ticks
    walks = np.cumsum(np.random.default_rng(77).standard_normal((paths, length)), axis=1)
    rough = np.stack([fbm(length, 0.2, np.random.default_rng(7_000 + p)) for p in range(paths)])
    series = np.concatenate([walks, rough])
    out = {}
    for alpha in (4 * config.holder_smoothing, 2 * config.holder_smoothing, config.holder_smoothing,
                  config.holder_smoothing / 2):
        predictor = FunctionalPredictor(attrs.evolve(config, holder_smoothing=alpha), clock=ReplayClock())
        states = predictor.init_state(2 * paths)
        emergency, holder = [], None
        for t in range(length):
            states, batch = predictor.step_batch(states, ColumnarBatch(series[:, t], np.full(2 * paths, T0 + t * MS)))
            if t >= buffer - 1:
                emergency.append(batch.outputs[:, Out.EMERGENCY] > 0)
            holder = batch.outputs[:, Out.HOLDER]
        share = np.mean(emergency, axis=0)
        out[str(alpha)] = {"random_walk_share": float(share[:paths].mean()),
                           "random_walk_worst_path": float(share[:paths].max()),
                           "fbm_0.2_share": float(share[paths:].mean()),
                           "fbm_0.2_worst_path": float(share[paths:].min()),
                           "random_walk_holder": float(holder[:paths].mean()),
                           "fbm_0.2_holder": float(holder[paths:].mean())}
        print(f"  online α={alpha:g}: random walk {100 * share[:paths].mean():.1f}% (worst "
              f"{100 * share[:paths].max():.1f}%), H=0.2 {100 * share[paths:].mean():.1f}% (worst "
              f"{100 * share[paths:].min():.1f}%)", flush=True)
    return {"ticks_after_calibration": ticks, "paths": paths, "default_smoothing": config.holder_smoothing,
            "by_smoothing": out}


def bench_predictor_cost(config: PredictorConfig, assets: int, single_rounds: int, rounds: int) -> dict:
    """What the engine adds to one predictor step, single asset and in a batch."""
    refresh = config.wtmm_refresh_steps
    predictor = UniversalPredictor(config, clock=ReplayClock())
    series = np.cumsum(np.random.default_rng(0).standard_normal(300 + single_rounds * refresh))
    predictor.fit_history(series[:300])
    on, off = [], []
    for i, value in enumerate(series[300:]):
        due = bool(predictor._functional.refresh_due(predictor._state))
        started = time.perf_counter_ns()
        predictor.step_raw(ProcessState(float(value), T0 + i * MS))
        (on if due else off).append((time.perf_counter_ns() - started) / 1e3)
    single = {"refresh_tick_p50_us": float(np.median(on[2:])), "other_tick_p50_us": float(np.median(off[50:])),
              "refresh_ticks": len(on)}
    single["added_per_tick_us"] = (single["refresh_tick_p50_us"] - single["other_tick_p50_us"]) / refresh
    setups = {}
    for label, steps, spread in (("engine", refresh, False), ("engine_spread", refresh, True),
                                 ("engine_once", 65_536, False)):
        functional = FunctionalPredictor(attrs.evolve(config, wtmm_refresh_steps=steps), clock=ReplayClock())
        values = np.cumsum(np.random.default_rng(1).standard_normal((config.wtmm_buffer_size + 6 * refresh,
                                                                     assets)), axis=0)
        if spread:  # asset i rejects its first i mod R ticks: its refresh ticks lag by as many
            values[:refresh - 1][np.arange(refresh - 1)[:, None] < (np.arange(assets) % refresh)[None, :]] = np.nan
        states = functional.init_state(assets)
        functional.warm_up(states)
        for t in range(config.wtmm_buffer_size + refresh):  # past calibration, compiled
            states, _ = functional.step_batch(states, ColumnarBatch(values[t], np.full(assets, T0 + t * MS)))
        setups[label] = [functional, states, values]
    seconds = {label: [] for label in setups}
    for r in range(rounds):  # interleaved, so that a noisy spell hits every variant alike
        for label, setup in setups.items():
            functional, states, values = setup
            started = time.perf_counter()
            for t in range(refresh):  # one round covers one refresh of every asset
                k = config.wtmm_buffer_size + refresh + (r * refresh + t) % (5 * refresh)
                states, _ = functional.step_batch(states, ColumnarBatch(values[k], np.full(assets, T0 + k * MS)))
            seconds[label].append(time.perf_counter() - started)
            setup[1] = states
    per_step = {label: np.asarray(s) / (refresh * assets) for label, s in seconds.items()}
    batch = {"assets": assets, "rounds": rounds,
             "asset_steps_per_s": float(1 / np.median(per_step["engine"])),
             "asset_steps_per_s_engine_once": float(1 / np.median(per_step["engine_once"])),
             "asset_steps_per_s_spread": float(1 / np.median(per_step["engine_spread"]))}
    for label, key in (("engine", "added_us_per_asset_step"), ("engine_spread", "added_us_per_asset_step_spread")):
        batch[key] = float(1e6 * np.median(per_step[label] - per_step["engine_once"]))  # paired by round
    return {"refresh_steps": refresh, "single": single, "batch": batch}


def bench_reaction(config: PredictorConfig, paths: int) -> dict:
    """Ticks from the moment a random walk turns into fBm with H = 0.2 until the breaker enters
    emergency (default config, step_batch)."""
    calm, rough = 1000, 1500
    walks = np.cumsum(np.random.default_rng(88).standard_normal((paths, calm)), axis=1)
    turns = np.stack([fbm(rough, 0.2, np.random.default_rng(8_000 + p)) for p in range(paths)])
    series = np.concatenate([walks, walks[:, -1:] + turns], axis=1)
    predictor = FunctionalPredictor(config, clock=ReplayClock())
    states = predictor.init_state(paths)
    emergency = []
    for t in range(series.shape[1]):
        states, batch = predictor.step_batch(states, ColumnarBatch(series[:, t], np.full(paths, T0 + t * MS)))
        emergency.append(batch.outputs[:, Out.EMERGENCY] > 0)
    emergency = np.asarray(emergency)[calm:]
    entered = np.where(emergency.any(axis=0), emergency.argmax(axis=0), rough).astype(float)
    return {"paths": paths, "median_ticks": float(np.median(entered)), "min_ticks": float(entered.min()),
            "max_ticks": float(entered.max()), "never_entered": int((~emergency.any(axis=0)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=400, help="128-point fBm paths per H")
    parser.add_argument("--ticks", type=int, default=8000, help="online ticks after calibration")
    parser.add_argument("--online-paths", type=int, default=32, help="online paths of each kind")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    config = PredictorConfig()
    load_before = os.getloadavg()
    cost = bench_cost(config, args.batch, 8)
    cost += bench_cost(attrs.evolve(config, wtmm_voices_per_octave=4), args.batch, 8)
    predictor_cost = bench_predictor_cost(config, args.batch, 40, 9)
    accuracy = bench_accuracy(config, args.paths)
    online = bench_online(config, args.ticks, args.online_paths)
    reaction = bench_reaction(config, args.online_paths)
    result = {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cost": cost, "predictor_cost": predictor_cost, "accuracy": accuracy, "online": online,
              "reaction": reaction}

    print("cost per call on a 128-sample buffer (µs; median / best)")
    print(f"{'function':17s} {'v':>2s} {'single':>15s} {'vmap 1000':>15s} {'chunked 8':>15s}")
    for row in cost:
        print(f"{row['function']:17s} {row['voices_per_octave']:2d} "
              f"{row['single_median_us']:7.0f} / {row['single_best_us']:5.0f} "
              f"{row['vmap_median_us_per_buffer']:7.0f} / {row['vmap_best_us_per_buffer']:5.0f} "
              f"{row['chunked_median_us_per_buffer']:7.0f} / {row['chunked_best_us_per_buffer']:5.0f}")
    single, batch = predictor_cost["single"], predictor_cost["batch"]
    print(f"\npredictor step (refresh every {predictor_cost['refresh_steps']} ticks): single asset p50 "
          f"{single['refresh_tick_p50_us']:.0f} µs on refresh ticks, {single['other_tick_p50_us']:.0f} µs "
          f"otherwise (+{single['added_per_tick_us']:.1f} µs per tick on average); step_batch "
          f"{batch['assets']} assets {batch['asset_steps_per_s']:,.0f} asset-steps/s against "
          f"{batch['asset_steps_per_s_engine_once']:,.0f} with the engine run once "
          f"(+{batch['added_us_per_asset_step']:.2f} µs per asset-step); with the assets' refresh ticks "
          f"spread over all {predictor_cost['refresh_steps']} phases {batch['asset_steps_per_s_spread']:,.0f} "
          f"(+{batch['added_us_per_asset_step_spread']:.2f} µs)")
    print(f"\nHölder estimate on 128-point fBm ({args.paths} paths per H)")
    print(f"{'H':>4s} {'WTMM bias':>10s} {'WTMM std':>9s} {'DFA bias':>9s} {'DFA std':>8s}")
    for row in accuracy["n128"]:
        print(f"{row['H']:4.1f} {row['wtmm_bias']:+10.3f} {row['wtmm_std']:9.3f} {row['dfa_bias']:+9.3f} "
              f"{row['dfa_std']:8.3f}")
    print("\n4096-point fBm, 20 seeds: " + ", ".join(
        f"H={row['H']}: rel. error {100 * row['mean_relative_error']:.1f}%" for row in accuracy["n4096"]))
    print(f"\nonline predictor, {args.online_paths} paths × {args.ticks} ticks after calibration: share "
          "of ticks in emergency")
    print(f"{'holder_smoothing':>16s} {'random walk':>12s} {'worst':>7s} {'fBm 0.2':>8s} {'worst':>7s}")
    for alpha, row in online["by_smoothing"].items():
        print(f"{alpha:>16s} {100 * row['random_walk_share']:11.1f}% {100 * row['random_walk_worst_path']:6.1f}% "
              f"{100 * row['fbm_0.2_share']:7.1f}% {100 * row['fbm_0.2_worst_path']:6.1f}%")
    print(f"\nreaction, random walk → fBm H = 0.2 ({reaction['paths']} paths): emergency after "
          f"{reaction['median_ticks']:.0f} ticks (median; {reaction['min_ticks']:.0f}–{reaction['max_ticks']:.0f}), "
          f"never on {reaction['never_entered']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
