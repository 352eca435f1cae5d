"""Change detection benchmark: a +1σ mean shift under Gaussian and heavy-tailed noise.

The same seeded paths go through

* **USP**: the whole predictor with the default config (``FunctionalPredictor``, history warm-up
  with ``fit_history``, then ``step_batch`` tick by tick, one asset per path); an alarm is the
  ``REGIME_CHANGED`` event bit of a tick's output, exactly what a user sees;
* river's **PageHinkley** and **ADWIN** (default parameters, fed the raw values);
* a **textbook CUSUM** with the in-control mean and σ known (h = 5σ, k = 0.5σ, restarted at 0
  after an alarm), for reference.

Paths: y_t = ε_t + 1·[t ≥ τ], ε i.i.d. Gaussian or Student-t(3)/√3 (both of unit variance, so
"1σ" is the same shift), τ uniform in [``--change-min``, ``--change-max``) per path, the path
ending ``--after`` ticks after the latest τ. Figures per noise type and detector:

* ``median_delay``: median over paths of (first alarm at or after τ) − τ (ticks; inf when missed);
* ``detected_within_60``: share of paths alarmed within 60 ticks of τ;
* ``false_alarms_per_1000``: alarms in [``--fa-start``, τ) per 1000 such ticks (before τ the series
  is stationary, so every alarm there is false).

USP is also run on paths without a change (a Gaussian random walk; an AR(1) with φ = 0.5) to
show its false-alarm rate where its detector judges the predictor's own residual.

Prints a table and writes ``benchmarks/results/change_detection.json``.

    .venv/bin/python benchmarks/bench_change_detection.py [--paths 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import usp  # noqa: F401  (x64)
from usp import ColumnarBatch, FunctionalPredictor, PredictorConfig
from usp.adapters.clocks import ReplayClock
from usp.domain._events import EventCode

RESULTS = Path(__file__).resolve().parent / "results" / "change_detection.json"
MS = 1_000_000
T0 = 1_800_000_000_000_000_000
WITHIN = 60


def noise(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance i.i.d. noise: ``gaussian`` or ``student_t3`` (t(3) scaled by 1/√3)."""
    if kind == "gaussian":
        return rng.standard_normal(shape)
    return rng.standard_t(3, shape) / np.sqrt(3.0)


def usp_alarms(series: np.ndarray, config: PredictorConfig, warmup: int) -> np.ndarray:
    """bool[P, T] REGIME_CHANGED bits of the predictor's ticks (False over the warm-up history)."""
    paths, length = series.shape
    predictor = FunctionalPredictor(config, clock=ReplayClock())
    states, _ = predictor.fit_history(predictor.init_state(paths), series[:, :warmup])
    alarms = np.zeros((paths, length), dtype=bool)
    for t in range(warmup, length):
        states, out = predictor.step_batch(states, ColumnarBatch(series[:, t], np.full(paths, T0 + t * MS)))
        alarms[:, t] = (out.events & int(EventCode.REGIME_CHANGED)) != 0
    return alarms


def river_alarms(series: np.ndarray, make) -> np.ndarray:
    """bool[P, T] ``drift_detected`` of a fresh river detector per path."""
    alarms = np.zeros(series.shape, dtype=bool)
    for p, row in enumerate(series):
        detector = make()
        for t, value in enumerate(row.tolist()):
            detector.update(value)
            alarms[p, t] = detector.drift_detected
    return alarms


def textbook_cusum(series: np.ndarray, h: float = 5.0, k: float = 0.5) -> np.ndarray:
    """bool[P, T] of the two-sided CUSUM with known mean 0 and σ = 1, restarted after an alarm."""
    upper = np.zeros(series.shape[0])
    lower = np.zeros(series.shape[0])
    alarms = np.zeros(series.shape, dtype=bool)
    for t in range(series.shape[1]):
        upper = np.maximum(0.0, upper + series[:, t] - k)
        lower = np.maximum(0.0, lower - series[:, t] - k)
        alarm = (upper > h) | (lower > h)
        upper[alarm] = 0.0
        lower[alarm] = 0.0
        alarms[:, t] = alarm
    return alarms


def figures(alarms: np.ndarray, changes: np.ndarray | None, fa_start: int) -> dict[str, float]:
    """Median delay, share within 60 ticks and false alarms per 1000 ticks (see module doc)."""
    paths, length = alarms.shape
    ends = changes if changes is not None else np.full(paths, length)
    false = sum(int(alarms[p, fa_start:ends[p]].sum()) for p in range(paths))
    ticks = int(sum(ends - fa_start))
    result = {"false_alarms_per_1000": 1000.0 * false / ticks, "false_alarm_ticks": ticks}
    if changes is not None:
        delays = np.array([np.flatnonzero(alarms[p, changes[p]:])[0] if alarms[p, changes[p]:].any() else np.inf
                           for p in range(paths)])
        result["median_delay"] = float(np.median(delays))
        result["detected_within_60"] = float(np.mean(delays <= WITHIN))
        result["mean_delay_detected"] = float(delays[np.isfinite(delays)].mean()) if np.isfinite(delays).any() \
            else float("inf")
    return result


def finite_or_none(value):
    """``value`` with every non-finite float (a missed detection's delay) as None, for strict JSON."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=32, help="paths per noise type (default 32)")
    parser.add_argument("--change-min", type=int, default=2000)
    parser.add_argument("--change-max", type=int, default=2500)
    parser.add_argument("--after", type=int, default=300, help="ticks after the latest change")
    parser.add_argument("--fa-start", type=int, default=400, help="first tick counted for false alarms")
    parser.add_argument("--warmup", type=int, default=200, help="history given to fit_history")
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()

    from river.drift import ADWIN, PageHinkley

    config = PredictorConfig()
    rng = np.random.default_rng(args.seed)
    length = args.change_max + args.after
    detectors = {
        "USP": lambda y: usp_alarms(y, config, args.warmup),
        "PageHinkley": lambda y: river_alarms(y, PageHinkley),
        "ADWIN": lambda y: river_alarms(y, ADWIN),
        "CUSUM h=5σ (known μ, σ)": textbook_cusum,
    }
    report: dict = {"config": {"paths": args.paths, "length": length,
                               "change_range": [args.change_min, args.change_max],
                               "fa_start": args.fa_start, "warmup": args.warmup, "seed": args.seed,
                               "enabled_kernels": list(config.enabled_kernels),
                               "cusum_h": config.cusum_h, "cusum_k": config.cusum_k,
                               "grace_period_steps": config.grace_period_steps,
                               "level_shift_confirm_steps": config.level_shift_confirm_steps},
                    "platform": platform.platform(), "shift": {}, "no_change": {}}
    rows = []
    for kind in ("gaussian", "student_t3"):
        changes = rng.integers(args.change_min, args.change_max, args.paths)
        series = noise(kind, (args.paths, length), rng)
        series += (np.arange(length)[None, :] >= changes[:, None]).astype(np.float64)
        report["shift"][kind] = {}
        for name, detect in detectors.items():
            started = time.perf_counter()
            result = figures(detect(series), changes, args.fa_start)
            result["seconds"] = time.perf_counter() - started
            report["shift"][kind][name] = result
            rows.append((kind, name, result))
            print(f"{kind:<11} {name:<24} median delay {result['median_delay']:>6.1f}   within 60 "
                  f"{result['detected_within_60']:>5.0%}   false alarms/1000 {result['false_alarms_per_1000']:>6.2f}",
                  flush=True)

    walk = np.cumsum(rng.standard_normal((args.paths, length)), axis=1)
    ar1 = np.zeros((args.paths, length))
    shocks = rng.standard_normal((args.paths, length))
    for t in range(1, length):
        ar1[:, t] = 0.5 * ar1[:, t - 1] + shocks[:, t]
    for kind, series in (("random_walk", walk), ("ar1_phi_0.5", ar1)):
        report["no_change"][kind] = {name: figures(detect(series), None, args.fa_start)
                                     for name, detect in detectors.items()}
        print(f"{kind:<11} (no change) false alarms/1000: " + ", ".join(
            f"{name} {fig['false_alarms_per_1000']:.2f}" for name, fig in report["no_change"][kind].items()),
            flush=True)

    print("\n| noise | detector | median delay | detected within 60 | false alarms / 1000 ticks |")
    print("|---|---|---|---|---|")
    for kind, name, result in rows:
        print(f"| {kind} | {name} | {result['median_delay']:.1f} | {result['detected_within_60']:.0%} | "
              f"{result['false_alarms_per_1000']:.2f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
