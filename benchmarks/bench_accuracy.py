"""Accuracy benchmark: USP against statistical and online peers on real public series.

Every model sees the same one-step walk-forward protocol on the same series, in the same run:

- **Data.** Each series of ``benchmarks/_series.py`` (shipped inside installed wheels, never
  downloaded), cut to its last ``--history`` points (default 1000; all of it when shorter). The
  last ``E = min(--eval, n // 2)`` points (default 300) are the evaluation window, the
  ``n0 = n − E`` points before it the training part.
- **Walk forward.** Each model is fitted on the training part, then, for each evaluation tick t
  in order, forecasts ``y[t]`` (a point forecast and a 90% interval) from ``y[:t]`` only, then
  observes ``y[t]``.
- **USP** (``usp.UniversalPredictor`` on a ``ReplayClock``): ``fit_history`` on ``y[:n0−1]``, then
  one ``step`` per value from ``y[n0−1]`` on; the result of stepping ``y[t−1]`` is the forecast of
  ``y[t]``. Config: the defaults (or ``--config``), with ``confidence_level = 0.9``; ticks spaced
  ``signal_sampling_interval`` apart and ``besov_nyquist_interval_ns`` at twice that spacing
  times ``wtmm_min_scale`` (regular data, as ``examples/co2_weekly.toml`` does for weekly data);
  ``wtmm_buffer_size = 64`` where the training part is shorter than the default buffer (the
  short quarterly and airline series); the series' known period as ``seasonal_period`` when the
  config has that field (1, no season, for the non-seasonal series, as the peers get
  ``season_length = 1``); then ``--set`` overrides. Every tick counts,
  rejected ones included (a rejected tick returns the last valid forecast).
- **Peers** refit on all data so far every ``--refit-every`` ticks (default 20) and forecast in
  between from the fitted model applied to all data so far:
  statsforecast ``AutoARIMA`` and ``AutoETS`` (``season_length`` = the period; ``forward`` between
  refits; their own 90% intervals), statsmodels ``ARIMA(1,1,1)`` (``extend`` between refits, its
  own intervals; only with ``--models``, it is slow), river ``SNARIMAX`` (online: it learns every
  tick; order (2,1,1), plus (1,1,1) seasonal at the period when it exceeds 1; a linear SGD
  regressor on standardised features and target, gradients clipped; its interval is the
  5–95% quantiles of its own past one-step errors, recomputed at each refit tick), and the
  **naive** last value (interval: the last value plus the 5–95% quantiles of past one-step
  differences, recomputed at each refit tick).
- **Metrics** per series and model over the evaluation window: MASE = MAE(model) / MAE(naive)
  (below 1 beats the last value), the share of values inside the 90% interval (bounds
  included), and the mean wall-clock latency per tick in ms (forecast plus observe, refits
  included, the initial fit on the training part excluded and reported apart as ``fit_s``).
- **Summary** per model: the geometric mean of MASE over the series it ran on, the number of
  series with coverage in [0.88, 0.92], the mean coverage, the worst MASE, the mean latency.
  A model that raises or returns non-finite forecasts on a series is reported as failed there,
  with the reason, and left out of its geometric mean (the count of series is printed).

Every model is deterministic (USP's PRNG key comes from its config's ``seed``); the script uses
no global random state. Prints the tables and writes ``benchmarks/results/accuracy.json`` for the
full default run, ``accuracy-partial.json`` otherwise (``--out`` to choose).

    python benchmarks/bench_accuracy.py [--quick] [--series sp500,airline] [--models usp,naive]
        [--set kernel_a_order=12] [--config FILE.toml] [--out PATH] [--reuse JSON]

``--reuse benchmarks/results/accuracy.json`` with ``--models usp`` reruns USP alone and takes the
peers' figures from that earlier result (same protocol, same series cuts), which saves the
peers' refits (most of a full run's time).

``--quick`` cuts each series to its last 400 points with an evaluation window of 100. The peers
need the benchmark-only ``bench`` group of requirements.lock (``make bench`` installs it); a
peer whose package is missing is reported as unavailable.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _series import BY_NAME, SERIES, Series  # noqa: E402

RESULTS = HERE / "results"
LEVEL = 0.9                      # nominal coverage of every interval
COVERAGE_BAND = (0.88, 0.92)     # "calibrated" band for the summary
QUANTILES = ((1 - LEVEL) / 2, (1 + LEVEL) / 2)
NS_PER_SECOND = 1_000_000_000


# --- the forecaster contract ----------------------------------------------------------------------

class Forecaster(Protocol):
    """One model in the walk-forward: ``fit`` once on the training part, then alternately
    ``predict`` (the next value: point, lower, upper of the 90% interval) and ``observe``."""

    def fit(self, history: np.ndarray) -> None: ...

    def predict(self) -> tuple[float, float, float]: ...

    def observe(self, value: float) -> None: ...


def empirical_interval(errors: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(q05, q95) of one-step errors (signal units); (0, 0) when there are none."""
    array = np.asarray(errors, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return 0.0, 0.0
    low, high = np.quantile(array, QUANTILES)
    return float(low), float(high)


class Naive:
    """The last value; its interval adds the 5–95% quantiles of all past one-step differences,
    recomputed every ``refit_every`` observations."""

    def __init__(self, refit_every: int = 20) -> None:
        self.refit_every = refit_every

    def fit(self, history: np.ndarray) -> None:
        self.values = list(map(float, history))
        self.since_fit = 0
        self._refit()

    def _refit(self) -> None:
        self.band = empirical_interval(np.diff(self.values))
        self.since_fit = 0

    def predict(self) -> tuple[float, float, float]:
        last = self.values[-1]
        return last, last + self.band[0], last + self.band[1]

    def observe(self, value: float) -> None:
        self.values.append(float(value))
        self.since_fit += 1
        if self.since_fit >= self.refit_every:
            self._refit()


class RefitPeer(abc.ABC):
    """A batch model refitted on all data so far every ``refit_every`` observations; in between,
    the fitted model's one-step forecast given all data so far (``forecast_from``)."""

    def __init__(self, refit_every: int = 20) -> None:
        self.refit_every = refit_every

    def fit(self, history: np.ndarray) -> None:
        self.values = list(map(float, history))
        self._refit()

    def _refit(self) -> None:
        self.model = self.train(np.asarray(self.values))
        self.since_fit = 0
        self.cached: tuple[float, float, float] | None = None

    def predict(self) -> tuple[float, float, float]:
        if self.cached is None:
            self.cached = self.forecast_from(np.asarray(self.values))
        return self.cached

    def observe(self, value: float) -> None:
        self.values.append(float(value))
        self.since_fit += 1
        self.cached = None
        if self.since_fit >= self.refit_every:
            self._refit()
        else:
            self.advance(float(value))

    @abc.abstractmethod
    def train(self, values: np.ndarray) -> Any:
        """The model fitted on float64[t] values."""

    @abc.abstractmethod
    def forecast_from(self, values: np.ndarray) -> tuple[float, float, float]:
        """(point, lower, upper) of the next value from the fitted model and all values so far."""

    @abc.abstractmethod
    def advance(self, value: float) -> None:
        """Take in a new value between refits, without refitting."""


class StatsForecastPeer(RefitPeer):
    """statsforecast ``AutoARIMA`` or ``AutoETS`` with ``season_length`` = the period."""

    def __init__(self, kind: str, period: int, refit_every: int = 20) -> None:
        super().__init__(refit_every)
        self.kind, self.period = kind, period

    def train(self, values: np.ndarray) -> Any:
        from statsforecast.models import AutoARIMA, AutoETS
        model = AutoARIMA(season_length=self.period) if self.kind == "autoarima" else AutoETS(season_length=self.period)
        return model.fit(values)

    def advance(self, value: float) -> None:
        """Nothing to do: ``forward`` applies the fitted model to all values at the next forecast."""

    def forecast_from(self, values: np.ndarray) -> tuple[float, float, float]:
        if self.since_fit == 0:
            out = self.model.predict(h=1, level=[int(LEVEL * 100)])
        else:
            out = self.model.forward(y=values, h=1, level=[int(LEVEL * 100)])
        return (float(np.asarray(out["mean"])[0]), float(np.asarray(out["lo-90"])[0]),
                float(np.asarray(out["hi-90"])[0]))


class StatsmodelsArima(RefitPeer):
    """statsmodels ``ARIMA(1,1,1)``; between refits the fitted parameters filter each new value
    (``extend``: the state carries on from the previous results, no refit)."""

    def train(self, values: np.ndarray) -> Any:
        from statsmodels.tsa.arima.model import ARIMA
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ARIMA(values, order=(1, 1, 1)).fit()

    def advance(self, value: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = self.model.extend(np.array([value]))

    def forecast_from(self, values: np.ndarray) -> tuple[float, float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forecast = self.model.get_forecast(1)
            low, high = np.asarray(forecast.conf_int(alpha=1 - LEVEL))[0]
            return float(np.asarray(forecast.predicted_mean)[0]), float(low), float(high)


class RiverSnarimax:
    """river ``SNARIMAX`` (learns every tick): order (2,1,1) and, when the period exceeds 1,
    seasonal order (1,1,1) at that period. The regressor is a linear regression by SGD (step
    0.005, gradients clipped at 1) on standardised features and a standardised target: without
    the target scaling and the clipping, the moving-average terms feed errors back and SGD
    diverges on rate, volatility and spiky series. Interval: the 5–95% quantiles of its own past
    one-step errors, recomputed every ``refit_every`` ticks."""

    def __init__(self, period: int, refit_every: int = 20) -> None:
        self.period, self.refit_every = period, refit_every

    def fit(self, history: np.ndarray) -> None:
        from river import linear_model, optim, preprocessing, time_series
        seasonal = {"m": self.period, "sp": 1, "sd": 1, "sq": 1} if self.period > 1 else {}
        linear = linear_model.LinearRegression(intercept_init=0.0, optimizer=optim.SGD(0.005), intercept_lr=0.005,
                                               clip_gradient=1.0)
        regressor = preprocessing.TargetStandardScaler(regressor=preprocessing.StandardScaler() | linear)
        self.model = time_series.SNARIMAX(p=2, d=1, q=1, regressor=regressor, **seasonal)
        self.errors: list[float] = []
        burn_in = 2 * max(self.period, 1) + 10
        for i, value in enumerate(history):
            if i >= burn_in:
                self.errors.append(float(value) - self._point())
            self.model.learn_one(float(value))
        self.since_fit = 0
        self.band = empirical_interval(self.errors)
        self.cached: float | None = None

    def _point(self) -> float:
        return float(self.model.forecast(horizon=1)[0])

    def predict(self) -> tuple[float, float, float]:
        if self.cached is None:
            self.cached = self._point()
        return self.cached, self.cached + self.band[0], self.cached + self.band[1]

    def observe(self, value: float) -> None:
        point = self.predict()[0]
        self.errors.append(float(value) - point)
        self.model.learn_one(float(value))
        self.cached = None
        self.since_fit += 1
        if self.since_fit >= self.refit_every:
            self.band = empirical_interval(self.errors)
            self.since_fit = 0


class USP:
    """USP through its public API: a ``UniversalPredictor`` on a ``ReplayClock``, ``fit_history``
    on all but the last training value, then one ``step`` per value; each step's result is the
    forecast of the next value."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.rejected = 0
        self.regime_changes = 0
        self.calibrating = 0

    def fit(self, history: np.ndarray) -> None:
        from usp import ReplayClock, UniversalPredictor
        self.spacing_ns = round(self.config.signal_sampling_interval * NS_PER_SECOND)
        self.predictor = UniversalPredictor(self.config, clock=ReplayClock())
        self.predictor.fit_history(np.asarray(history[:-1], dtype=np.float64))
        self.tick = history.size - 1
        self._step(float(history[-1]))

    def _step(self, value: float) -> None:
        from usp import ProcessState
        result = self.predictor.step(ProcessState(value, self.tick * self.spacing_ns))
        self.tick += 1
        self.result = result
        telemetry = result.telemetry
        if telemetry is not None:
            self.rejected += any(type(e).__name__.endswith("RejectedEvent") for e in telemetry.events)
            self.regime_changes += bool(telemetry.regime_change_detected)
        self.calibrating += result.mode == "calibration"

    def predict(self) -> tuple[float, float, float]:
        r = self.result
        return float(r.reference_prediction), float(r.confidence_lower), float(r.confidence_upper)

    def observe(self, value: float) -> None:
        self._step(float(value))

    def extras(self) -> dict[str, int]:
        return {"rejected_ticks": self.rejected, "regime_changes": self.regime_changes,
                "calibration_ticks": self.calibrating}


# --- USP's configuration per series -------------------------------------------------------------

def usp_config(series: Series, train_points: int, base: Any = None, overrides: dict[str, Any] | None = None) -> Any:
    """The ``PredictorConfig`` USP runs a series with (the rules in the module docstring)."""
    from usp import PredictorConfig
    base = base if base is not None else PredictorConfig()
    fields = attrs.fields_dict(type(base))
    changes: dict[str, Any] = {"confidence_level": LEVEL}
    spacing = base.signal_sampling_interval
    changes["besov_nyquist_interval_ns"] = round(2 * spacing * base.wtmm_min_scale * NS_PER_SECOND)
    if train_points - 1 < base.wtmm_buffer_size:
        changes["wtmm_buffer_size"] = 64
    if "seasonal_period" in fields:
        changes["seasonal_period"] = series.period
    changes.update(overrides or {})
    return attrs.evolve(base, **changes)


def parse_override(text: str, template: Any) -> tuple[str, Any]:
    """``KEY=VALUE`` for ``--set``: VALUE parsed as the type of the field's current value
    (a comma-separated list for a tuple)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    fields = attrs.fields_dict(type(template))
    if not sep or key not in fields:
        raise SystemExit(f"--set {text!r}: expected KEY=VALUE with KEY a PredictorConfig field")
    current = getattr(template, key)
    if isinstance(current, bool):
        value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
    elif isinstance(current, int):
        value = int(raw.replace("_", ""))
    elif isinstance(current, float):
        value = float(raw)
    elif isinstance(current, tuple):
        value = tuple(part.strip() for part in raw.split(",") if part.strip())
    elif current is None:
        value = int(raw) if raw.strip().lstrip("-").isdigit() else raw
    else:
        value = raw
    return key, value


# --- the walk forward and its metrics ---------------------------------------------------------------

@attrs.frozen
class Split:
    """The part of a series a run uses: float64[n] values, n0 training points, E = n − n0."""

    values: np.ndarray
    train: int

    @property
    def evaluation(self) -> int:
        return self.values.size - self.train


def split(values: np.ndarray, history: int, evaluation: int) -> Split:
    """The last ``history`` points; the last ``min(evaluation, n // 2)`` of them evaluate.

    Raises:
        ValueError: fewer than 8 points.
    """
    used = np.asarray(values[-history:], dtype=np.float64)
    if used.size < 8:
        raise ValueError(f"a series of {used.size} points is too short to split")
    window = min(evaluation, used.size // 2)
    return Split(used, used.size - window)


@attrs.frozen
class WalkForward:
    """float64[E] forecasts, interval bounds and per-tick seconds of one model on one split,
    and the seconds of its initial fit."""

    predictions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    tick_seconds: np.ndarray
    fit_seconds: float


def walk_forward(model: Forecaster, data: Split) -> WalkForward:
    """Fit ``model`` on ``data.values[:n0]``, then for t = n0 … n−1 time ``predict`` (the
    forecast of y[t]) and ``observe(y[t])``."""
    values, n0 = data.values, data.train
    started = time.perf_counter()
    model.fit(values[:n0])
    fit_seconds = time.perf_counter() - started
    out = np.empty((4, data.evaluation))
    for i, t in enumerate(range(n0, values.size)):
        started = time.perf_counter()
        point, low, high = model.predict()
        model.observe(float(values[t]))
        out[:, i] = point, low, high, time.perf_counter() - started
    return WalkForward(out[0], out[1], out[2], out[3], fit_seconds)


def metrics(data: Split, run: WalkForward) -> dict[str, float]:
    """MAE, MASE against the last value, 90% coverage, mean interval width relative to the
    naive MAE, and mean ms per tick over the evaluation window.

    Raises:
        FloatingPointError: a non-finite forecast or bound (the model failed).
    """
    values, n0 = data.values, data.train
    target, previous = values[n0:], values[n0 - 1:-1]
    bad = ~(np.isfinite(run.predictions) & np.isfinite(run.lower) & np.isfinite(run.upper))
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} of {bad.size} forecasts or bounds are not finite "
                                 f"(first at evaluation tick {int(np.flatnonzero(bad)[0])})")
    mae = float(np.mean(np.abs(target - run.predictions)))
    naive = float(np.mean(np.abs(target - previous)))
    inside = (target >= run.lower) & (target <= run.upper)
    return {"mae": mae, "naive_mae": naive, "mase": mae / naive if naive > 0 else math.nan,
            "coverage": float(np.mean(inside)),
            "width_over_naive_mae": float(np.mean(run.upper - run.lower)) / naive if naive > 0 else math.nan,
            "ms_per_tick": float(np.mean(run.tick_seconds) * 1e3), "fit_s": run.fit_seconds}


# --- models ---------------------------------------------------------------------------------------

MODELS = ("usp", "autoarima", "autoets", "arima111", "snarimax", "naive")
DEFAULT_MODELS = ("usp", "autoarima", "autoets", "snarimax", "naive")
REQUIRES = {"autoarima": "statsforecast", "autoets": "statsforecast", "arima111": "statsmodels",
            "snarimax": "river"}


def make_model(name: str, series: Series, data: Split, refit_every: int, base: Any,
               overrides: dict[str, Any]) -> Forecaster:
    if name == "usp":
        return USP(usp_config(series, data.train, base, overrides))
    if name == "naive":
        return Naive(refit_every)
    if name in ("autoarima", "autoets"):
        return StatsForecastPeer(name, series.period, refit_every)
    if name == "arima111":
        return StatsmodelsArima(refit_every)
    if name == "snarimax":
        return RiverSnarimax(series.period, refit_every)
    raise ValueError(f"unknown model {name!r} (models: {', '.join(MODELS)})")


def unavailable(name: str) -> str | None:
    """Why a model cannot run here (its package is missing), or None."""
    package = REQUIRES.get(name)
    if package is None:
        return None
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return f"unavailable: {package} is not installed (make bench installs the bench group)"
    return None


def run_model(name: str, series: Series, data: Split, refit_every: int, base: Any,
              overrides: dict[str, Any]) -> dict[str, Any]:
    """One model's metrics on one split, or ``{"error": reason}`` when it raises or returns
    non-finite forecasts (a failure is a result: reported, never hidden)."""
    try:
        model = make_model(name, series, data, refit_every, base, overrides)
        run = walk_forward(model, data)
        figures: dict[str, Any] = metrics(data, run)
        if isinstance(model, USP):
            figures.update(model.extras())
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        figures = {"error": f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"}
    return figures


def run_series(series: Series, models: Sequence[str], history: int, evaluation: int, refit_every: int,
               base: Any, overrides: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every model on one series: its split and, per model, its metrics or its failure."""
    data = split(series.load(), history, evaluation)
    entry: dict[str, Any] = {"name": series.name, "category": series.category, "period": series.period,
                             "points": int(data.values.size),
                             "sha256": hashlib.sha256(data.values.tobytes()).hexdigest(), "train": data.train,
                             "evaluated": data.evaluation, "models": {}}
    for name in models:
        reason = unavailable(name)
        figures: dict[str, Any] = {"error": reason} if reason is not None else run_model(name, series, data,
                                                                                         refit_every, base, overrides)
        entry["models"][name] = figures
        shown = (f"MASE {figures['mase']:.3f}  cov {figures['coverage']:.3f}  {figures['ms_per_tick']:.2f} ms"
                 if "mase" in figures else figures["error"])
        log(f"  {series.name:<15} {name:<10} {shown}")
    return entry


def summarise(entries: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """Per model: geometric-mean MASE, series in the coverage band, mean coverage, worst MASE
    (and its series), mean ms per tick, series run and failed."""
    summary: dict[str, Any] = {}
    for name in models:
        ok = [(e["name"], e["models"][name]) for e in entries if "mase" in e["models"].get(name, {})]
        failed = [e["name"] for e in entries if "error" in e["models"].get(name, {"error": ""})]
        if not ok:
            summary[name] = {"series": 0, "failed": failed}
            continue
        mase = np.array([m["mase"] for _, m in ok])
        coverage = np.array([m["coverage"] for _, m in ok])
        worst = int(np.argmax(mase))
        summary[name] = {
            "series": len(ok), "failed": failed,
            "geomean_mase": float(np.exp(np.mean(np.log(mase)))),
            "coverage_in_band": int(np.sum((coverage >= COVERAGE_BAND[0]) & (coverage <= COVERAGE_BAND[1]))),
            "mean_coverage": float(np.mean(coverage)),
            "coverage_range": [float(coverage.min()), float(coverage.max())],
            "worst_mase": float(mase[worst]), "worst_series": ok[worst][0],
            "mean_ms_per_tick": float(np.mean([m["ms_per_tick"] for _, m in ok])),
        }
    return summary


# --- tables ---------------------------------------------------------------------------------------

def _cell(figures: dict[str, Any], key: str, fmt: str) -> str:
    if key in figures:
        return format(figures[key], fmt)
    return "n/a" if figures.get("error", "").startswith(("unavailable", "not run")) else "fail"


def tables(entries: Sequence[dict[str, Any]], summary: dict[str, Any], models: Sequence[str]) -> str:
    """Markdown tables: MASE, coverage and ms per tick per series and model, then the summary."""
    lines = []
    for title, key, fmt in (("MASE relative to the last value (lower is better)", "mase", ".3f"),
                            ("90% interval coverage", "coverage", ".3f"),
                            ("mean latency per tick (ms)", "ms_per_tick", ".2f")):
        lines += [f"**{title}**", "", "| series | period | eval | " + " | ".join(models) + " |",
                  "|---|---:|---:|" + "---:|" * len(models)]
        for e in entries:
            cells = [_cell(e["models"].get(m, {"error": "not run"}), key, fmt) for m in models]
            lines.append(f"| {e['name']} | {e['period']} | {e['evaluated']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**Summary**", "", "| model | series | geo-mean MASE | coverage in [0.88, 0.92] | mean coverage | "
              "worst MASE (series) | ms per tick |", "|---|---:|---:|---:|---:|---|---:|"]
    for m in models:
        s = summary[m]
        if not s["series"]:
            lines.append(f"| {m} | 0 | – | – | – | – | – |")
            continue
        lines.append(f"| {m} | {s['series']} | {s['geomean_mase']:.3f} | {s['coverage_in_band']} of {s['series']} | "
                     f"{s['mean_coverage']:.3f} | {s['worst_mase']:.3f} ({s['worst_series']}) | "
                     f"{s['mean_ms_per_tick']:.2f} |")
    failures = [f"- {m} on {e['name']}: {e['models'][m]['error']}" for e in entries for m in models
                if "error" in e["models"].get(m, {})]
    if failures:
        lines += ["", "**Failures**", "", *failures]
    return "\n".join(lines) + "\n"


def reuse(entries: Sequence[dict[str, Any]], protocol: dict[str, Any], earlier: dict[str, Any],
          models: Sequence[str]) -> list[str]:
    """Copy into ``entries`` the figures of the models an earlier result ran and this run did not
    (``--reuse``: the peers do not change when USP does), marked ``"reused": True``. Only when
    the protocol matches and, per series, the same values (their SHA-256) were used and split the
    same way; returns the models added (in ``MODELS`` order).

    Raises:
        SystemExit: the earlier result was made with another protocol.
    """
    keys = ("history", "evaluation_cap", "refit_every", "level")
    if any(earlier.get("protocol", {}).get(k) != protocol[k] for k in keys):
        then = {k: earlier.get("protocol", {}).get(k) for k in keys}
        raise SystemExit(f"--reuse: that result was made with another protocol ({then} vs "
                         f"{ {k: protocol[k] for k in keys} })")
    old = {e["name"]: e for e in earlier.get("series", [])}
    added: set[str] = set()
    for entry in entries:
        previous = old.get(entry["name"])
        same = previous is not None and all(previous.get(k) == entry[k] for k in ("sha256", "train", "evaluated"))
        for name, figures in (previous or {}).get("models", {}).items() if same else ():
            if name not in models and name in MODELS:
                entry["models"][name] = {**figures, "reused": True}
                added.add(name)
    return [name for name in MODELS if name in added]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("usp", "jax", "numpy", "statsforecast", "statsmodels", "river", "arch"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default="", help="comma-separated series names (default: all): "
                        + ", ".join(s.name for s in SERIES))
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated models, of {', '.join(MODELS)} (default: all but arima111)")
    parser.add_argument("--quick", action="store_true", help="last 400 points, evaluation window 100")
    parser.add_argument("--history", type=int, default=None, help="points used per series (default 1000)")
    parser.add_argument("--eval", type=int, default=None, help="evaluation window cap (default 300)")
    parser.add_argument("--refit-every", type=int, default=20, help="peer refit interval in ticks")
    parser.add_argument("--config", default=None, help="USP base config (TOML; default: the defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a USP config field (repeatable)")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--reuse", default=None, metavar="JSON",
                        help="take the figures of models not run now from an earlier result of the same "
                             "protocol (e.g. run --models usp --reuse benchmarks/results/accuracy.json)")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.series.split(",") if n.strip()] or [s.name for s in SERIES]
    unknown = [n for n in names if n not in BY_NAME]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown or not models or any(m not in MODELS for m in models):
        parser.error(f"unknown series {unknown} or models {models} (series: {', '.join(BY_NAME)}; "
                     f"models: {', '.join(MODELS)})")
    history = args.history or (400 if args.quick else 1000)
    evaluation = args.eval or (100 if args.quick else 300)

    # USP's tick events (rejections, regime changes) are counted in the results, not logged per tick
    logging.getLogger("usp").setLevel(logging.CRITICAL)
    from usp import FrequencyWarning, PredictorConfig, StalenessWarning, load_config
    warnings.filterwarnings("ignore", category=FrequencyWarning)
    warnings.filterwarnings("ignore", category=StalenessWarning)
    base = load_config(args.config) if args.config else PredictorConfig()
    overrides = dict(parse_override(item, base) for item in args.set)

    started = time.perf_counter()
    entries = []
    for name in names:
        entries.append(run_series(BY_NAME[name], models, history, evaluation, args.refit_every, base, overrides))
    elapsed = time.perf_counter() - started
    protocol = {"history": history, "evaluation_cap": evaluation, "refit_every": args.refit_every,
                "level": LEVEL, "coverage_band": list(COVERAGE_BAND),
                "usp_config": args.config, "usp_overrides": {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in overrides.items()}}
    shown = list(models)
    if args.reuse:
        reused = reuse(entries, protocol, json.loads(Path(args.reuse).read_text()), models)
        shown = [m for m in MODELS if m in models or m in reused]
        protocol["reused"] = {"from": args.reuse, "models": reused}
    summary = summarise(entries, shown)
    text = tables(entries, summary, shown)
    print()
    print(text)
    if args.reuse:
        print(f"figures of {', '.join(protocol['reused']['models']) or 'no model'} reused from {args.reuse}")
    print(f"total {elapsed:.0f} s")

    full = not (args.series or args.quick or args.history or args.eval or args.set or args.config or args.reuse
                or args.refit_every != 20 or models != list(DEFAULT_MODELS))
    out = Path(args.out) if args.out else RESULTS / ("accuracy.json" if full else "accuracy-partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "protocol": protocol,
        "versions": versions(), "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "seconds": elapsed, "series": entries, "summary": summary,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
