"""Optimal-transport weighting of the kernels: log-domain Sinkhorn and one JKO step (model.md §5).

Everything is in standardised units (losses and costs divided by the residual variance), so
the defaults behave the same whatever the scale of the signal.

One JKO step per tick solves ``ρ⁺ = argmin_ρ F(ρ) + W_ε(ρ, ρ_k)/(2τ)`` with
``F(ρ) = ⟨ρ, E⟩ − ε H(ρ)`` by one entropic mirror (KL-proximal) step: the transport term is
linearised at ρ_k, its gradient being the Sinkhorn dual potential ``f`` of ``W_ε(ρ_k, ρ_k)``
(warm-started from the previous tick), and the entropy is handled implicitly, which gives the
closed form ``log ρ⁺ = (log ρ_k − η (E + f/(2τ))) / (1 + η ε) − log Z``. The result is on the
simplex by construction, tends to uniform as ε grows, and moves mass toward kernels with
persistently lower energy.

The transport term is explicit: its potential behaves like ``(ε/2τ)·log ρ`` (between ½ and 1
times that, from a diagonal to a product plan), so the step η is capped at
``1 / (ε (1 + 1/(2τ)))``, its stability limit. Without the cap a large ε (e.g. 1e4, τ = 0.01)
makes the weights flip between vertices of the simplex instead of staying near uniform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ._pytree import pytree

#: Smallest log-weight kept (weights below e^-600 are numerically zero but stay finite).
LOG_WEIGHT_FLOOR = -600.0


def transport_cost(difference: jnp.ndarray, cost_type_huber: jnp.ndarray, delta: float) -> jnp.ndarray:
    """Squared cost u², or Huber (u² for |u| ≤ δ, 2δ|u| − δ² beyond), elementwise."""
    absolute = jnp.abs(difference)
    huber = jnp.where(absolute <= delta, absolute**2, 2.0 * delta * absolute - delta**2)
    return jnp.where(cost_type_huber, huber, difference**2)


@pytree
class SinkhornResult:
    """Dual potentials f, g (float64[n]), marginal error (L1) and convergence flag."""

    f: jnp.ndarray
    g: jnp.ndarray
    error: jnp.ndarray
    converged: jnp.ndarray


def solve_diagonally_dominant(matrix: jnp.ndarray, rhs: jnp.ndarray) -> jnp.ndarray:
    """x with ``matrix @ x = rhs``, for a small strictly diagonally dominant float64[n, n] (such a
    matrix needs no pivoting): Gauss–Jordan elimination unrolled over the static n, plain
    elementwise arithmetic that vectorises over a batch, where a LAPACK call per small matrix
    does not (``jnp.linalg.solve`` cost several times the whole Sinkhorn loop in a batch)."""
    n = rhs.shape[-1]
    rows = jnp.arange(n)
    for k in range(n):
        pivot = matrix[k] / matrix[k, k]
        value = rhs[k] / matrix[k, k]
        factors = jnp.where(rows == k, 0.0, matrix[:, k])
        matrix = jnp.where((rows == k)[:, None], pivot[None, :], matrix - factors[:, None] * pivot[None, :])
        rhs = jnp.where(rows == k, value, rhs - factors * value)
    return rhs


def sinkhorn_symmetric(log_a: jnp.ndarray, cost: jnp.ndarray, epsilon: jnp.ndarray, f0: jnp.ndarray,
                       iterations: int, tolerance: float) -> SinkhornResult:
    """Entropic self-transport OT(a, a) for a symmetric cost (the JKO linearisation point).

    The optimal potentials are equal, f = g, the fixed point of
    ``T(f) = ε log a − ε LSE((f − C)/ε)`` (row-wise). Each iteration takes the better, by the
    marginal error, of two candidates: the averaged update ``½ (f + T(f))``, which always
    contracts but only linearly (about a third of the error per iteration, so some 30 iterations
    to 1e-9 with four kernels), and the Newton step on ``f − T(f) = 0``, whose Jacobian
    ``I + P`` (P the row-normalised Gibbs kernel, a stochastic matrix with positive entries) is
    strictly diagonally dominant (solved without pivoting: :func:`solve_diagonally_dominant`):
    quadratic convergence from the warm start, two or three iterations per tick. Stops when the
    L1 error of the marginal of ``exp((f_i + f_j − C_ij)/ε)`` is below ``tolerance``.
    """
    n = log_a.shape[-1]
    identity = jnp.eye(n, dtype=cost.dtype)

    def update(f):
        """T(f) and the row-normalised Gibbs kernel P at f."""
        scores = (f[None, :] - cost) / epsilon
        lse = logsumexp(scores, axis=1)
        return epsilon * log_a - epsilon * lse, jnp.exp(scores - lse[:, None])

    def error(f, target):
        # marginal a_i exp((f_i − target_i)/ε) in the log domain (no 0 · inf)
        row = jnp.exp(jnp.minimum(log_a + (f - target) / epsilon, 700.0))
        return jnp.sum(jnp.abs(row - jnp.exp(log_a)))

    def cond(carry):
        i, _, _, _, err = carry
        return (i < iterations) & (err >= tolerance)

    def body(carry):
        i, f, target, gibbs, _ = carry
        averaged = 0.5 * (f + target)
        newton = f + solve_diagonally_dominant(identity + gibbs, target - f)
        newton = jnp.where(jnp.all(jnp.isfinite(newton)), newton, averaged)
        candidates = jnp.stack([averaged, newton])
        targets, kernels = jax.vmap(update)(candidates)
        errors = jax.vmap(error)(candidates, targets)
        pick = jnp.where(errors[1] < errors[0], 1, 0)
        return i + 1, candidates[pick], targets[pick], kernels[pick], errors[pick]

    target0, gibbs0 = update(f0)
    _, f, _, _, err = jax.lax.while_loop(cond, body, (jnp.int32(0), f0, target0, gibbs0, error(f0, target0)))
    return SinkhornResult(f, f, err, err < tolerance)


def entropy(weights: jnp.ndarray) -> jnp.ndarray:
    """Shannon entropy −Σ ρ log ρ (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(jnp.where(weights > 0, weights, 1.0)), 0.0))


def free_energy(weights: jnp.ndarray, energies: jnp.ndarray, epsilon: jnp.ndarray) -> jnp.ndarray:
    """F(ρ) = ⟨ρ, E⟩ − ε H(ρ)."""
    return jnp.dot(weights, energies) - epsilon * entropy(weights)


def jko_step(log_weights: jnp.ndarray, energies: jnp.ndarray, potential: jnp.ndarray,
             epsilon: jnp.ndarray, tau: jnp.ndarray, mirror_step: float) -> jnp.ndarray:
    """One KL-proximal JKO step; returns normalised log-weights (see the module docstring).

    Args:
        log_weights: float64[n], log ρ_k (normalised).
        energies: float64[n], standardised kernel energies E.
        potential: float64[n], Sinkhorn potential f of W_ε(ρ_k, ρ_k).
        epsilon: entropic regularisation ε_t > 0.
        tau: JKO time step τ_t > 0.
        mirror_step: η > 0.
    """
    weights = jnp.exp(log_weights)
    step_size = jnp.minimum(mirror_step, 1.0 / (epsilon * (1.0 + 1.0 / (2.0 * tau))))
    gradient = energies + potential / (2.0 * tau)
    gradient = gradient - jnp.dot(weights, gradient)  # gradients on the simplex: defined up to a constant
    raw = (log_weights - step_size * gradient) / (1.0 + step_size * epsilon)
    floored = jnp.maximum(raw - logsumexp(raw), LOG_WEIGHT_FLOOR)
    return floored - logsumexp(floored)
