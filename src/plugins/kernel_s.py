"""Kernel S — seasonal-trend exponential smoothing (damped Holt–Winters), a bank of filters.

Each tick every filter of a small bank smooths the newest observation into a level ``l``, a
damped trend ``b`` and a seasonal index per phase ``s[0..m−1]`` (``m`` the seasonal period, in
ticks), on the values themselves or on their logarithm (the Box–Cox λ = 0 case, for
multiplicative trend and seasonality)::

    l_t = a (x_t − s_{t−m}) + (1 − a)(l_{t−1} + φ b_{t−1})
    b_t = β (l_t − l_{t−1}) + (1 − β) φ b_{t−1}
    s_t = g (x_t − l_t) + (1 − g) s_{t−m}
    x̂_{t+1} = l_t + φ b_t + s_{t+1−m} + ρ e_t   (exp of it for a log filter)

where ``e_t = x_t − (l_{t−1} + φ b_{t−1} + s_{t−m})`` is the smoothing error and ρ its lag-one
autocorrelation, estimated online (EMAs of ``e_t e_{t−1}`` and ``e_t²`` with weight
``ERROR_AR_ALPHA``, ``|ρ| ≤ ERROR_AR_MAX``): the AR(1) error correction of Holt–Winters, which
picks up the persistence that level, trend and season leave (El Niño anomalies, business cycles).

The bank crosses ``ALPHAS`` × ``GAMMAS`` with the transforms of ``seasonal_transform`` (both
for ``auto``); β = ``BETA`` and φ = ``DAMPING`` are shared. The forecast is the one of the filter
whose *realised* one-step squared error (EMA, weight ``SELECTION_ALPHA``) is lowest, as kernel A
chooses between levels and differences; log filters compete only while the window is positive.
The scale is the realised RMS error of the filter in use (for a log filter, combined with its
relative error scale: :func:`realised_variance`).

**Warm start.** No initial values are estimated: the smoothing weights start at 1/n and fall to
their constants (``a = max(α, 1/n)`` for the n-th observation, ``max(β, 1/n)``, and
``g = max(γ, 1/k)`` for the k-th visit of a phase), so the level starts as the running mean and
each seasonal index as the running mean of its deviations, as an EMA started from its first
values. Two seasons in, the filters forecast sensibly.

**Period.** ``seasonal_period`` ≥ 2 fixes it, 1 switches the seasonal component off (damped Holt).
0 detects it in ``fit``: the highest local peak of the autocorrelation of the history's
differences over the lags 2..``MAX_DETECTED_PERIOD`` (at most a third of the history), if it
exceeds ``DETECTION_THRESHOLD``; ``fit`` then smooths the history once with that period (the scan before
it ran without one, so this is the history's first pass through a seasonal model) and the kernel
continues from there. Without ``fit_history``, or without a clear peak, no seasonal component.

While ``window.signal_frozen`` the state is held, like kernel D's, so a stuck feed does not shift
the phases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window
from ..domain._pytree import pytree

#: Level smoothing constants α of the bank.
ALPHAS: tuple[float, ...] = (0.2, 0.5, 0.8)
#: Seasonal smoothing constants γ of the bank.
GAMMAS: tuple[float, ...] = (0.1, 0.4)
#: Trend smoothing constant β (all filters).
BETA = 0.05
#: Trend damping φ (all filters).
DAMPING = 0.98
#: EMA weight of the realised squared errors that choose the filter.
SELECTION_ALPHA = 0.02
#: Scored forecasts before the realised errors choose (until then: ``DEFAULT_FILTER``).
SELECTION_MIN_SCORED = 10
#: Longest period ``fit`` detects (also the size of the seasonal state when the period is 0).
MAX_DETECTED_PERIOD = 64
#: Autocorrelation of the differences at the peak lag needed to accept a detected period.
DETECTION_THRESHOLD = 0.3
#: Fewest finite history values for ``fit`` to look for a period.
MIN_DETECTION_HISTORY = 24
#: Smallest scale, relative to the window's largest |value|.
SCALE_FLOOR_RELATIVE = 1e-12
#: Log-domain forecasts are clipped to ±this before exp (finite for any input).
LOG_CLIP = 700.0
_TINY = 1e-300
_BIG = float(jnp.finfo(jnp.float64).max)
#: EMA weight of the moments of the smoothing errors that give the error autocorrelation ρ.
ERROR_AR_ALPHA = 0.02
#: |ρ| is clipped to this.
ERROR_AR_MAX = 0.95
#: Rows of ``KernelSState.filters``.
LEVEL, TREND, FORECAST, LOSS, ERROR, ERROR_COV, ERROR_VAR = 0, 1, 2, 3, 4, 5, 6
#: Columns of ``KernelSState.table``: the seven filter rows, the two counters, then the season.
SEEN, PERIOD, SEASON = 7, 8, 9


def transforms(config: PredictorConfig) -> tuple[bool, ...]:
    """Whether each transform of the bank is the logarithm (static: a tuple of bools)."""
    return {"auto": (False, True), "none": (False,), "log": (True,)}[config.seasonal_transform]


def bank(config: PredictorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bank's (α[K], γ[K], is_log[K]) as constants, K = 6 per transform."""
    rows = [(a, g, log) for log in transforms(config) for a in ALPHAS for g in GAMMAS]
    return (np.asarray([r[0] for r in rows]), np.asarray([r[1] for r in rows]),
            np.asarray([r[2] for r in rows], dtype=bool))


def state_period(config: PredictorConfig) -> int:
    """Length of the seasonal state: the period, 1 without one, ``MAX_DETECTED_PERIOD`` to detect."""
    return MAX_DETECTED_PERIOD if config.seasonal_period == 0 else config.seasonal_period


@pytree
class KernelSState:
    """The bank of filters (K of them, m = :func:`state_period`), packed into one array so that
    the state is one leaf (each leaf costs the core a few µs per tick at the jit boundary).

    Attributes:
        table: float64[K, 9 + m]. Row i is filter i: columns ``LEVEL`` and ``TREND``
            (transformed units), ``FORECAST`` (the next value, signal units), ``LOSS`` (EMA of
            realised squared errors, signal units²), ``ERROR``, ``ERROR_COV`` and ``ERROR_VAR``
            (the last smoothing error and the EMAs of e_t e_{t−1} and e_t², transformed units),
            ``SEEN`` and ``PERIOD`` (observations
            smoothed, saturating at 2^30, and the period in use, 0 for none or not yet detected:
            integers, exact in float64, equal on every row), then m seasonal indices from column
            ``SEASON`` on (transformed units). Read it through the properties below.
    """

    table: jax.Array

    @property
    def filters(self) -> jax.Array:
        """float64[7, K]: rows ``LEVEL``, ``TREND``, ``FORECAST``, ``LOSS``, ``ERROR``,
        ``ERROR_COV``, ``ERROR_VAR``."""
        return jnp.swapaxes(self.table[..., :SEEN], -1, -2)

    @property
    def season(self) -> jax.Array:
        """float64[K, m]: the seasonal index of each filter per phase."""
        return self.table[..., SEASON:]

    @property
    def seen(self) -> jax.Array:
        """int32: observations smoothed."""
        return self.table[..., 0, SEEN].astype(jnp.int32)

    @property
    def period(self) -> jax.Array:
        """int32: the period in use (0: none)."""
        return self.table[..., 0, PERIOD].astype(jnp.int32)


def _pack(filters: jax.Array, season: jax.Array, seen: jax.Array, period: jax.Array) -> KernelSState:
    k = season.shape[0]
    counters = jnp.broadcast_to(jnp.stack([seen, period]).astype(jnp.float64), (k, 2))
    return KernelSState(table=jnp.concatenate([filters.T, counters, season], axis=1))


def init(config: PredictorConfig, key: jax.Array) -> KernelSState:
    del key
    k = bank(config)[0].shape[0]
    period = config.seasonal_period if config.seasonal_period >= 2 else 0
    return _pack(jnp.zeros((SEEN, k), jnp.float64), jnp.zeros((k, state_period(config)), jnp.float64),
                 jnp.int32(0), jnp.int32(period))


def _smooth(filters: jax.Array, season: jax.Array, seen: jax.Array, period: jax.Array, y: jax.Array,
            config: PredictorConfig) -> tuple[jax.Array, jax.Array]:
    """One observation ``y`` into every filter (the recursion of the module docstring).

    ``seen``: observations smoothed before this one; ``period``: 0 for none. Returns the new
    ``filters`` (its ``LOSS`` row scored on ``y``) and ``season``.
    """
    alphas, gammas, is_log = (jnp.asarray(v) for v in bank(config))
    scored = seen > 0
    error = jnp.clip(y - filters[FORECAST], -_BIG, _BIG)
    weight = jnp.maximum(SELECTION_ALPHA, 1.0 / jnp.maximum(seen, 1).astype(jnp.float64))
    loss = jnp.where(scored, filters[LOSS] + weight * (jnp.minimum(error * error, _BIG) - filters[LOSS]),
                     filters[LOSS])
    x = jnp.where(is_log, jnp.log(jnp.maximum(y, _TINY)), y)
    seasonal = period >= 2
    cycle = jnp.maximum(period, 1)
    phase = jnp.where(seasonal, seen % cycle, 0)
    visits = (seen // cycle + 1).astype(jnp.float64)
    n = (seen + 1).astype(jnp.float64)
    # phases as one-hot masks: a read or write of one column is elementwise arithmetic, which
    # vectorises over a batch of assets where a per-asset gather or scatter does not
    columns = jnp.arange(season.shape[-1])
    at_phase = seasonal & (columns == phase)
    old = jnp.sum(jnp.where(at_phase, season, 0.0), axis=-1)
    a = jnp.maximum(alphas, 1.0 / n)
    b = jnp.maximum(BETA, 1.0 / n)
    g = jnp.maximum(gammas, 1.0 / visits)
    level0, trend0 = filters[LEVEL], filters[TREND]
    # the smoothing error and its lag-one autocorrelation (after two errors)
    smoothing_error = jnp.where(scored, jnp.clip(x - (level0 + DAMPING * trend0 + old), -_BIG, _BIG), 0.0)
    moment_weight = jnp.maximum(ERROR_AR_ALPHA, 1.0 / jnp.maximum(seen, 1).astype(jnp.float64))
    cov = filters[ERROR_COV] + moment_weight * (jnp.clip(smoothing_error * filters[ERROR], -_BIG, _BIG)
                                                - filters[ERROR_COV])
    var = filters[ERROR_VAR] + moment_weight * (jnp.minimum(smoothing_error**2, _BIG) - filters[ERROR_VAR])
    cov = jnp.where(seen > 1, cov, 0.0)
    var = jnp.where(scored, var, 0.0)
    rho = jnp.clip(cov / jnp.maximum(var, _TINY), -ERROR_AR_MAX, ERROR_AR_MAX)
    level = jnp.where(scored, a * (x - old) + (1.0 - a) * (level0 + DAMPING * trend0), x)
    trend = jnp.where(scored, b * (level - level0) + (1.0 - b) * DAMPING * trend0, 0.0)
    index = jnp.where(scored, g * (x - level) + (1.0 - g) * old, 0.0)
    season = jnp.where(at_phase, index[:, None], season)
    following = jnp.sum(jnp.where(seasonal & (columns == (seen + 1) % cycle), season, 0.0), axis=-1)
    ahead = level + DAMPING * trend + following + rho * smoothing_error
    forecast = jnp.where(is_log, jnp.exp(jnp.clip(ahead, -LOG_CLIP, LOG_CLIP)), ahead)
    forecast = jnp.clip(forecast, -_BIG, _BIG)
    return jnp.stack([level, trend, forecast, loss, smoothing_error, cov, var]), season


def update(state: KernelSState, window: Window, config: PredictorConfig) -> KernelSState:
    """Score every filter's last forecast on ``window.values[-1]``, then smooth it in."""
    seen, period = state.seen, state.period
    filters, season = _smooth(state.filters, state.season, seen, period, window.values[-1], config)
    new = _pack(filters, season, jnp.minimum(seen + 1, 2**30), period)
    frozen = jnp.asarray(window.signal_frozen, bool)
    return jax.tree_util.tree_map(lambda old, fresh: jnp.where(frozen, old, fresh), state, new)


def _default_filter(config: PredictorConfig) -> int:
    """Index of the filter used until the realised errors choose: the first raw filter with the
    middle α and the smaller γ (the log one when only log filters exist)."""
    alphas, gammas, _ = bank(config)
    return int(np.flatnonzero((alphas == ALPHAS[1]) & (gammas == GAMMAS[0]))[0])


def realised_variance(filter_row: jax.Array, is_log: jax.Array, forecast: jax.Array) -> jax.Array:
    """The error variance of one filter's next forecast (signal units²); ``filter_row`` is a
    column of ``KernelSState.filters``.

    A raw filter: its realised squared error (EMA). A log filter's errors are multiplicative, so
    that EMA, taken over past levels, trails a growing series; its own relative error variance
    (the smoothing errors' EMA variance in log units, less the share ρ² its AR(1) correction
    removes) times the forecast squared reads at the current level but misses what the
    realised errors see. A log filter takes the geometric mean of the two.
    """
    loss = filter_row[LOSS]
    rho = jnp.clip(filter_row[ERROR_COV] / jnp.maximum(filter_row[ERROR_VAR], _TINY), -ERROR_AR_MAX, ERROR_AR_MAX)
    relative = jnp.minimum(forecast * forecast * filter_row[ERROR_VAR] * (1.0 - rho * rho), _BIG)
    return jnp.where(is_log, jnp.sqrt(loss * relative), loss)


def predict(state: KernelSState, window: Window, config: PredictorConfig) -> KernelForecast:
    """The forecast of the filter with the lowest realised error (log filters only while the
    window is positive); before the first update, the last value."""
    is_log = jnp.asarray(bank(config)[2])
    positive = jnp.min(jnp.where(window.mask > 0, window.values, 1.0)) > 0
    eligible = ~is_log | positive
    seen = state.seen
    losses = state.filters[LOSS]
    ranked = jnp.argmin(jnp.where(eligible, losses, jnp.inf))
    choice = jnp.where(seen > SELECTION_MIN_SCORED, ranked, _default_filter(config))
    usable = eligible[choice] & (seen > 0)
    mean = jnp.where(usable, state.filters[FORECAST, choice], window.values[-1])
    # Before any error is scored: the window's RMS increment (0 on a constant window: floored).
    steps = window.values[1:] - window.values[:-1]
    real = window.mask[1:] * window.mask[:-1]
    spread = jnp.sum(real * jnp.minimum(steps * steps, _BIG)) / jnp.maximum(jnp.sum(real), 1.0)
    variance = jnp.where(usable & (seen > 1), realised_variance(state.filters[:, choice], is_log[choice], mean),
                         spread)
    floor = jnp.maximum(SCALE_FLOOR_RELATIVE * jnp.maximum(jnp.max(jnp.abs(window.values)), jnp.abs(mean)), _TINY)
    return KernelForecast(mean=mean, scale=jnp.maximum(jnp.sqrt(jnp.minimum(variance, _BIG)), floor))


def detect_period(history: jax.Array, max_period: int) -> jax.Array:
    """The seasonal period of a history (int32; 0 when none is clear).

    The autocorrelation of the first differences (non-finite values and the differences touching
    them are left out) at lags 2..max_period; the peak lag counts when its autocorrelation exceeds
    ``DETECTION_THRESHOLD`` and at least ``MIN_DETECTION_HISTORY`` differences were usable.
    """
    finite = jnp.isfinite(history)
    clean = jnp.where(finite, history, 0.0)
    x = clean / jnp.maximum(jnp.max(jnp.abs(clean)), _TINY)  # scale-free, cannot overflow
    d = x[1:] - x[:-1]
    use = (finite[1:] & finite[:-1]).astype(jnp.float64)
    count = jnp.sum(use)
    mean = jnp.sum(d * use) / jnp.maximum(count, 1.0)
    c = (d - mean) * use
    var = jnp.sum(c * c)
    size = 1 << int(np.ceil(np.log2(2 * c.shape[0])))  # zero padding: a linear, not circular, ACF
    spectrum = jnp.fft.rfft(c, n=size)
    acf = jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=size)[:max_period + 2] / jnp.maximum(var, _TINY)
    # A period is a local peak (above the lag before it): a slowly decaying ACF has none.
    peak = (acf[2:max_period + 1] > acf[1:max_period]) & (acf[2:max_period + 1] >= acf[3:max_period + 2])
    score = jnp.where(peak, acf[2:max_period + 1], -jnp.inf)
    best = jnp.argmax(score)
    found = (score[best] > DETECTION_THRESHOLD) & (count >= MIN_DETECTION_HISTORY) & (var > 0)
    return jnp.where(found, best + 2, 0).astype(jnp.int32)


def fit(state: KernelSState, history: jax.Array, config: PredictorConfig) -> KernelSState:
    """With ``seasonal_period = 0``: detect the period on the history and, when it differs from
    the state's, smooth the history once with it (non-finite values skipped). Otherwise the
    state is returned as it is: the scan already smoothed the history with the configured period."""
    if config.seasonal_period != 0:
        return state
    max_period = min(MAX_DETECTED_PERIOD, history.shape[0] // 3)
    if max_period < 2:  # a static shape: Python control flow is fine here
        return state
    period = detect_period(history, max_period)
    fresh = init(config, jax.random.PRNGKey(0))

    def step(carry: tuple[jax.Array, jax.Array, jax.Array], y: jax.Array
             ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        filters, season, seen = carry
        keep = jnp.isfinite(y) & (jnp.abs(y) <= 1e100)
        new_filters, new_season = _smooth(filters, season, seen, period, jnp.where(keep, y, 0.0), config)
        return (jnp.where(keep, new_filters, filters), jnp.where(keep, new_season, season),
                jnp.where(keep, jnp.minimum(seen + 1, 2**30), seen)), None

    (filters, season, seen), _ = jax.lax.scan(step, (fresh.filters, fresh.season, jnp.int32(0)), history)
    refit = _pack(filters, season, seen, period)
    changed = period != state.period
    return jax.tree_util.tree_map(lambda old, new: jnp.where(changed, new, old), state, refit)


KERNEL_S = KernelSpec(
    name="S", init=init, update=update, predict=predict, fit=fit,
    description="Seasonal-trend exponential smoothing: a bank of damped Holt–Winters filters on "
                "the values or their logarithm, chosen by realised error; period from config or "
                "detected by fit")
