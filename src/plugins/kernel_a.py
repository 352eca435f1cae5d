"""Kernel A — Hilbert projection: the Wiener–Levinson linear predictor on the window (model.md §4).

Each tick the kernel projects the next value on the closed span of the recent past:

1. biased autocovariances γ_0..γ_p of the (masked, demeaned) window;
2. Levinson–Durbin recursion → AR coefficients and innovation variances for every order 0..p;
3. order chosen by BIC, ``n log v_k + k log n``.

It does this for two representations of the signal — levels and first differences (the
integrated model) — and forecasts with the one whose *realised* one-step squared error (EMA) is
lower, so a random walk is handled by the differenced model and a stationary AR by the levels
model. The scale is the realised RMSE of the representation in use.

``kernel_a_mode = "rkhs"`` replaces the linear projection by Gaussian-kernel ridge regression on
delay embeddings (RKHS projection): the last ``kernel_a_rkhs_points`` embeddings of length
``kernel_a_order``, bandwidth by the median heuristic, ridge ``kernel_a_ridge`` relative to the
kernel matrix diagonal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..domain import KernelForecast, KernelSpec, PredictorConfig, Window
from ..domain._pytree import pytree

#: EMA weight of the realised losses used to choose between levels and differences.
SELECTION_ALPHA = 0.02
#: Scored forecasts needed before the realised losses choose the representation.
SELECTION_MIN_SCORED = 20
_TINY = 1e-300


@pytree
class KernelAState:
    """Forecasts made last tick and the realised loss EMAs (index 0: levels, 1: differences)."""

    forecasts: jax.Array   # float64[2], forecast of the next value by each representation
    losses: jax.Array      # float64[2], EMA of realised squared errors
    innovation: jax.Array  # float64[2], model innovation variance (scale before losses exist)
    scored: jax.Array      # int32, forecasts scored so far


def init(config: PredictorConfig, key: jax.Array) -> KernelAState:
    del config, key
    return KernelAState(jnp.zeros(2), jnp.zeros(2), jnp.ones(2), jnp.int32(0))


def autocovariances(x: jax.Array, mask: jax.Array, order: int) -> tuple[jax.Array, jax.Array]:
    """Biased autocovariances γ_0..γ_order of the masked series, and its mean.

    The lagged copies are gathered into one (order+1, size) matrix and contracted in a single
    einsum, which XLA lowers to one batched product under vmap (several times faster than a
    reduction per lag).
    """
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    # Materialise the centred series once: otherwise XLA fuses the centring (and its mean
    # reduction) into the lag gather below and recomputes it for every element.
    centred = jax.lax.optimization_barrier((x - mean) * mask)
    size = x.shape[-1]
    padded = jnp.concatenate([jnp.zeros(order, x.dtype), centred])
    lagged = padded[order - np.arange(order + 1)[:, None] + np.arange(size)[None, :]]
    return jnp.einsum("lw,w->l", lagged, centred) / n, mean


def levinson_durbin(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All-order Yule–Walker solutions.

    Args:
        gamma: float64[p+1] autocovariances.
    Returns:
        coefficients float64[p+1, p] (row k: the AR(k) coefficients, zero-padded) and
        innovation variances float64[p+1] (v_0 = γ_0).

    The recursion is written on lists of scalars (p is small and static) so that under vmap it
    lowers to elementwise arithmetic rather than scatters.
    """
    p = gamma.shape[-1] - 1
    zero = jnp.zeros_like(gamma[0])
    v = jnp.maximum(gamma[0], _TINY)
    phi: list[jax.Array] = []
    rows, variances = [jnp.stack([zero] * p)], [v]
    for k in range(1, p + 1):
        acc = gamma[k] - sum((phi[j] * gamma[k - 1 - j] for j in range(k - 1)), zero)
        kappa = jnp.clip(acc / jnp.maximum(v, _TINY), -0.9999, 0.9999)
        phi = [phi[j] - kappa * phi[k - 2 - j] for j in range(k - 1)] + [kappa]
        v = v * (1.0 - kappa**2)
        rows.append(jnp.stack(phi + [zero] * (p - k)))
        variances.append(v)
    return jnp.stack(rows), jnp.stack(variances)


def _bic_choice(variances: jax.Array, n: jax.Array) -> jax.Array:
    orders = jnp.arange(variances.shape[-1], dtype=jnp.float64)
    bic = n * jnp.log(jnp.maximum(variances, _TINY)) + orders * jnp.log(jnp.maximum(n, 2.0))
    return jnp.argmin(bic)


def linear_forecast(x: jax.Array, mask: jax.Array, order: int) -> tuple[jax.Array, jax.Array]:
    """One-step forecast of the series after x[-1] and the model innovation variance."""
    gamma, mean = autocovariances(x, mask, order)
    coefficients, variances = levinson_durbin(gamma)
    best = _bic_choice(variances, mask.sum())
    phi = coefficients[best]
    lags = x[::-1][:order] - mean  # x_t, x_{t-1}, ...
    return mean + jnp.sum(phi * lags), variances[best]


def rkhs_forecast(x: jax.Array, mask: jax.Array, order: int, points: int, ridge: float
                  ) -> tuple[jax.Array, jax.Array]:
    """Gaussian-kernel ridge forecast on delay embeddings of length ``order``.

    Training pairs: the last ``points`` embeddings (x_{s-order+1..s}) → x_{s+1}; masked pairs
    (touching padding) get zero weight through a huge ridge on their diagonal.
    """
    size = x.shape[-1]
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    scale = jnp.sqrt(jnp.maximum(((x - mean) ** 2 * mask).sum() / n, _TINY))
    z = (x - mean) / scale
    ends = jnp.arange(size - 1 - points, size - 1)  # embedding ends s, target s+1
    offsets = jnp.arange(order)
    embeddings = z[ends[:, None] - offsets[None, :]]
    targets = z[ends + 1]
    valid = mask[ends - order + 1] > 0
    query = z[size - 1 - offsets]
    sq = jnp.sum((embeddings[:, None, :] - embeddings[None, :, :]) ** 2, axis=-1)
    bandwidth = jnp.maximum(jnp.median(sq), 1e-12)
    gram = jnp.exp(-sq / bandwidth)
    penalty = jnp.where(valid, ridge, 1e12)
    solve = jax.scipy.linalg.cho_factor(gram + jnp.diag(penalty))
    alpha = jax.scipy.linalg.cho_solve(solve, jnp.where(valid, targets, 0.0))
    k_query = jnp.exp(-jnp.sum((embeddings - query[None, :]) ** 2, axis=-1) / bandwidth)
    fitted = gram @ alpha
    resid = jnp.where(valid, targets - fitted, 0.0)
    var = jnp.sum(resid**2) / jnp.maximum(valid.sum(), 1.0)
    return mean + scale * jnp.dot(k_query, alpha), jnp.maximum(var, _TINY) * scale**2


def _forecasts(window: Window, config: PredictorConfig) -> tuple[jax.Array, jax.Array]:
    x, mask = window.values, window.mask
    diffs = x[1:] - x[:-1]
    diff_mask = mask[1:] * mask[:-1]
    if config.kernel_a_mode == "rkhs":
        level, v_level = rkhs_forecast(x, mask, config.kernel_a_order, config.kernel_a_rkhs_points,
                                       config.kernel_a_ridge)
        step, v_diff = rkhs_forecast(diffs, diff_mask, config.kernel_a_order,
                                     config.kernel_a_rkhs_points, config.kernel_a_ridge)
    else:
        level, v_level = linear_forecast(x, mask, config.kernel_a_order)
        step, v_diff = linear_forecast(diffs, diff_mask, config.kernel_a_order)
    return jnp.stack([level, x[-1] + step]), jnp.stack([v_level, v_diff])


def update(state: KernelAState, window: Window, config: PredictorConfig) -> KernelAState:
    """Score last tick's forecasts on window.values[-1], then refit on the new window."""
    y = window.values[-1]
    scored = state.scored > 0
    errors = (y - state.forecasts) ** 2
    weight = jnp.maximum(SELECTION_ALPHA, 1.0 / jnp.maximum(state.scored, 1).astype(jnp.float64))
    losses = jnp.where(scored, state.losses + weight * (errors - state.losses), state.losses)
    forecasts, innovation = _forecasts(window, config)
    return KernelAState(forecasts, losses, innovation, state.scored + 1)


def predict(state: KernelAState, window: Window, config: PredictorConfig) -> KernelForecast:
    """The representation with the lower realised loss (differences until enough are scored)."""
    del window, config
    ready = state.scored > SELECTION_MIN_SCORED
    choice = jnp.where(ready, jnp.argmin(state.losses), 1)
    variance = jnp.where(ready, state.losses[choice], state.innovation[choice])
    return KernelForecast(mean=state.forecasts[choice], scale=jnp.sqrt(jnp.maximum(variance, _TINY)))


KERNEL_A = KernelSpec(
    name="A", init=init, update=update, predict=predict,
    description="Hilbert projection: Levinson–Durbin Wiener predictor (BIC order, levels or "
                "differences by realised loss; optional Gaussian-kernel RKHS ridge)")
