"""Tuning benchmark: TPE against random search at the same trial budget (model.md §8).

**The problem.** Seeded synthetic series on which the CUSUM slack ``cusum_k`` and the Sinkhorn
regularisation ``epsilon`` are what is left to tune: regimes of 200 ticks alternate between a
random walk (σ = 2; the last value, kernel N, forecasts best) and an AR(1) with φ = −0.9 around
the level the walk left (the AR kernel A forecasts far better; the last value is worst there), so
the mixture must move its weight at every change. The base config makes the weights slow
(``jko_mirror_step`` 0.02, ``learning_rate`` 0.1, ``entropy_window_relaxation_factor`` 200): the
JKO step is then bounded by ``epsilon`` (τ ≤ 1.6·ε·σ²), and ``cusum_k`` sets how often an alarm
resets the weights. The objective is ``usp tune``'s: walk-forward MASE of the real predictor, the
mean over 3 folds of each of 2 series. Its best ``(cusum_k, epsilon)`` is *known*: it is found by
an exhaustive grid over the search ranges (9 × 9 points, epsilon on a log grid) before the race.

**The race.** For each of ``--repetitions`` seeds, one study with TPE and one with random search
(both Optuna, seeded as ``usp tune`` seeds them) each get ``--budget`` trials over the same two-key
space; the figure of a study is the best objective value it found. TPE beats random search when
its best values are lower: a one-sided Mann–Whitney U test (scipy) over the repetitions, with
p < 0.05 required.

Prints a table and writes ``benchmarks/results/tuning.json``.

    .venv/bin/python benchmarks/bench_tuning.py [--repetitions 12] [--budget 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import optuna
import usp  # noqa: F401  (x64)
from scipy.stats import mannwhitneyu
from usp import PredictorConfig
from usp.adapters.optuna_tuner import OptunaTuner
from usp.application.tuning import BayesianMetaOptimizer, EarlyStopping, search_space
from usp.composition import walk_forward

RESULTS = Path(__file__).resolve().parent / "results" / "tuning.json"
BASE = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=16, kurtosis_window=32,
                       kernel_a_order=4, enabled_kernels=("A", "N"), learning_rate=0.1,
                       entropy_window_relaxation_factor=200.0, jko_mirror_step=0.02)
KEYS = ("cusum_k", "epsilon")


def regime_series(length: int, regime: int, seed: int) -> np.ndarray:
    """Alternating regimes of ``regime`` ticks: a random walk with σ = 2, then an AR(1) (φ = −0.9,
    σ = 1) around the level the walk left, and so on."""
    rng = np.random.default_rng(seed)
    values, last, x = np.empty(length), 0.0, 0.0
    for start in range(0, length, regime):
        stop = min(start + regime, length)
        if (start // regime) % 2 == 0:
            values[start:stop] = last + 2.0 * np.cumsum(rng.standard_normal(stop - start))
        else:
            for t in range(start, stop):
                x = -0.9 * x + rng.standard_normal()
                values[t] = last + x
        last = values[stop - 1]
    return values


def best_found(sampler: str, seed: int, budget: int, objective) -> tuple[float, list[float]]:
    """The best value a study of ``budget`` trials found, and its trace (best so far per trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuner = OptunaTuner(optuna.storages.InMemoryStorage(), "bench", seed=seed, sampler=sampler)
    optimizer = BayesianMetaOptimizer(search_space("fast", KEYS), objective, "bench", budget, tuner=tuner,
                                      early_stopping=EarlyStopping(patience=budget + 1))
    optimizer.optimize()
    values = [t.value if t.value is not None else np.inf for t in optimizer.trials()]
    trace = np.minimum.accumulate(values).tolist()
    return float(trace[-1]), trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=12)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--length", type=int, default=1200)
    parser.add_argument("--regime", type=int, default=200)
    parser.add_argument("--grid", type=int, default=9)
    args = parser.parse_args()

    series = [regime_series(args.length, args.regime, seed) for seed in (1, 2)]
    objective = walk_forward(series, BASE, folds=3)
    started = time.perf_counter()
    objective({})  # compiles; every later trial only streams (the keys are traced parameters)
    compile_s = time.perf_counter() - started

    ks = np.linspace(0.3, 1.5, args.grid)
    epsilons = np.geomspace(1e-4, 1e-1, args.grid)
    started = time.perf_counter()
    grid = np.array([[objective({"cusum_k": float(k), "epsilon": float(e)}) for e in epsilons] for k in ks])
    grid_s = time.perf_counter() - started
    at = np.unravel_index(np.argmin(grid), grid.shape)
    optimum = {"cusum_k": float(ks[at[0]]), "epsilon": float(epsilons[at[1]]), "value": float(grid[at])}

    rows = []
    started = time.perf_counter()
    for seed in range(args.repetitions):
        tpe, tpe_trace = best_found("tpe", seed, args.budget, objective)
        rnd, rnd_trace = best_found("random", seed, args.budget, objective)
        rows.append({"seed": seed, "tpe": tpe, "random": rnd, "tpe_trace": tpe_trace, "random_trace": rnd_trace})
        print(f"  seed {seed:2d}: TPE {tpe:.6f}   random {rnd:.6f}   (grid best {optimum['value']:.6f})", flush=True)
    race_s = time.perf_counter() - started
    tpe_best = np.array([r["tpe"] for r in rows])
    random_best = np.array([r["random"] for r in rows])
    test = mannwhitneyu(tpe_best, random_best, alternative="less")
    trials = 2 * args.repetitions * args.budget

    summary = {
        "problem": {"series": len(series), "length": args.length, "regime": args.regime,
                    "kernels": list(BASE.enabled_kernels), "metric": "mase", "folds": 3, "keys": list(KEYS)},
        "grid": {"points": int(grid.size), "best": optimum, "median": float(np.median(grid)),
                 "worst": float(np.max(grid)), "seconds": grid_s},
        "budget": args.budget, "repetitions": args.repetitions,
        "tpe": {"median_best": float(np.median(tpe_best)), "mean_regret": float(np.mean(tpe_best - optimum["value"])),
                "within_0.1pct_of_grid_best": int(np.sum(tpe_best <= optimum["value"] * 1.001))},
        "random": {"median_best": float(np.median(random_best)),
                   "mean_regret": float(np.mean(random_best - optimum["value"])),
                   "within_0.1pct_of_grid_best": int(np.sum(random_best <= optimum["value"] * 1.001))},
        "mann_whitney_u": float(test.statistic), "p_value_one_sided": float(test.pvalue),
        "tpe_beats_random": bool(test.pvalue < 0.05),
        "first_trial_compile_seconds": compile_s, "seconds_per_trial": race_s / trials,
        "runs": rows, "platform": platform.platform(), "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")

    print(f"\nTPE vs random search, {args.budget} trials each, {args.repetitions} repetitions "
          f"(walk-forward MASE over {len(series)} series of {args.length} ticks)")
    print(f"  grid optimum ({grid.size} points): cusum_k {optimum['cusum_k']:.3f}, epsilon {optimum['epsilon']:.3g}, "
          f"MASE {optimum['value']:.6f} (grid median {np.median(grid):.6f}, worst {np.max(grid):.6f})")
    print(f"  {'':22}{'TPE':>12}{'random':>12}")
    print(f"  {'median best MASE':22}{np.median(tpe_best):12.6f}{np.median(random_best):12.6f}")
    print(f"  {'mean regret vs grid':22}{np.mean(tpe_best - optimum['value']):12.6f}"
          f"{np.mean(random_best - optimum['value']):12.6f}")
    print(f"  Mann–Whitney U = {test.statistic:.1f}, one-sided p = {test.pvalue:.4g} "
          f"({'TPE beats random' if test.pvalue < 0.05 else 'no significant difference'})")
    print(f"  first trial (compiles) {compile_s:.2f} s; then {race_s / trials * 1000:.0f} ms per trial")
    print(f"  wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
