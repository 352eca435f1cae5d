"""Orchestrator invariants: Sinkhorn marginals, JKO simplex, ε → uniform, lower loss gains weight."""

from __future__ import annotations

import math

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from usp import FunctionalPredictor, PredictorConfig
from usp.domain._core import Out
from usp.domain._fusion import mixture_quantile
from usp.domain._transport import jko_step, sinkhorn_symmetric, solve_diagonally_dominant, transport_cost
from usp.plugins.manager import build_plugin_manager

from .helpers import ar2
from .plugins import martingale_kernel

finite = st.floats(-1e6, 1e6, allow_nan=False)
jko = jax.jit(jko_step, static_argnums=5)


@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-700, 0), min_size=n, max_size=n), st.lists(finite, min_size=n, max_size=n),
    st.lists(finite, min_size=n, max_size=n))), st.floats(1e-6, 1e6), st.floats(1e-8, 10.0),
    st.floats(1e-6, 100.0))
def test_jko_step_stays_on_the_simplex(vectors, epsilon, tau, step):
    log_w, energies, potential = (jnp.asarray(v) for v in vectors)
    log_w = log_w - jax.scipy.special.logsumexp(log_w)
    out = np.asarray(jko(log_w, energies, potential, epsilon, tau, step))
    weights = np.exp(out)
    assert np.all(np.isfinite(out))
    assert abs(weights.sum() - 1.0) < 1e-10 and np.all(weights >= 0)


@given(st.integers(2, 6), st.integers(0, 10_000), st.sampled_from([1e-3, 1e-2, 0.1, 1.0]))
def test_symmetric_sinkhorn_solves_self_transport(n, seed, epsilon):
    """The orchestrator's problem OT(ρ, ρ): converges from a cold start, even for near-ties."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(n) * 0.5)
    means = rng.normal(size=n)
    means[-1] = means[0] + 1e-3 * rng.normal()  # two kernels that almost agree: the slow case
    cost = transport_cost(jnp.asarray(means[:, None] - means[None, :]), False, 1.0)
    result = sinkhorn_symmetric(jnp.log(jnp.asarray(weights)), cost, epsilon, jnp.zeros(n), 60, 1e-9)
    f = np.asarray(result.f)
    plan = np.exp((f[:, None] + f[None, :] - np.asarray(cost)) / epsilon)
    assert bool(result.converged)
    np.testing.assert_allclose(plan.sum(axis=1), weights, atol=1e-8)
    np.testing.assert_allclose(plan.sum(axis=0), weights, atol=1e-8)


def test_the_default_mixture_converges_within_three_iterations_per_tick():
    """Four kernels on a random walk: warm-started Newton steps meet the 1e-9 tolerance within
    three iterations on about nine ticks in ten (the averaged update alone leaves about 3e-3
    after three, and needs some 30)."""
    config = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                             kernel_a_order=4, sinkhorn_max_iter=3)
    predictor = FunctionalPredictor(config)
    series = np.cumsum(np.random.default_rng(17).standard_normal(600))
    _, outputs = predictor._scan(predictor.init_state(), series)
    outputs = np.asarray(outputs)[100:]
    assert np.mean(outputs[:, Out.SINKHORN_CONVERGED] > 0) > 0.85
    assert np.median(outputs[:, Out.SINKHORN_ERROR]) < 1e-9


def test_lower_energy_gains_weight_and_huge_epsilon_stays_uniform():
    log_w = jnp.log(jnp.full(3, 1 / 3))
    energies = jnp.array([1.0, 1.5, 2.0])
    sharp, flat = log_w, log_w
    for _ in range(50):
        sharp = jko(sharp, energies, jnp.zeros(3), 1e-3, 1e-2, 0.25)
        flat = jko(flat, energies, jnp.zeros(3), 1e4, 1e-2, 0.25)
    assert np.argmax(np.asarray(sharp)) == 0 and math.exp(float(sharp[0])) > 0.9
    assert np.max(np.abs(np.exp(np.asarray(flat)) - 1 / 3)) < 0.01


def _ensemble_weights(config: PredictorConfig, seed: int = 41) -> np.ndarray:
    predictor = FunctionalPredictor(config, plugin_manager=build_plugin_manager([martingale_kernel]))
    series, _ = ar2(1500, seed)
    _, outputs = predictor._scan(predictor.init_state(), series)
    return np.asarray(outputs)[300:, Out.SIZE:Out.SIZE + 2]


def test_predictor_weights_uniform_at_huge_epsilon_and_sharp_at_default():
    base = PredictorConfig(enabled_kernels=("A", "M"))
    uniform = _ensemble_weights(attrs.evolve(base, epsilon=1e4))
    assert np.max(np.abs(uniform - 0.5)) < 0.01
    sharp = _ensemble_weights(base)
    assert sharp[:, 0].mean() > 0.8  # kernel A has persistently lower loss on an AR(2)


@given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n), st.lists(st.floats(-50, 50), min_size=n, max_size=n),
    st.lists(st.floats(0.05, 20.0), min_size=n, max_size=n))), st.sampled_from([0.025, 0.5, 0.975]))
def test_mixture_quantile_solves_the_cdf(components, p):
    weights, means, scales = (np.asarray(c) for c in components)
    weights = weights / weights.sum()
    x = float(jax.jit(mixture_quantile, static_argnums=0)(p, jnp.asarray(weights), jnp.asarray(means),
                                                          jnp.asarray(scales)))
    cdf = sum(w * 0.5 * math.erfc(-(x - m) / (s * math.sqrt(2))) for w, m, s in zip(weights, means, scales,
                                                                                   strict=True))
    density = sum(w * math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                  for w, m, s in zip(weights, means, scales, strict=True))
    assert abs(cdf - p) < 1e-9 or density < 1e-6  # flat regions: any point of the plateau is a quantile


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=n * n, max_size=n * n),
    st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))))
def test_the_unpivoted_solve_matches_lapack_on_diagonally_dominant_systems(entries):
    """I + P with P row-stochastic (the Sinkhorn Newton step's Jacobian) and any right-hand side."""
    raw, rhs = entries
    n = len(rhs)
    gibbs = np.asarray(raw).reshape(n, n) + 1e-3
    matrix = np.eye(n) + gibbs / gibbs.sum(axis=1, keepdims=True)
    solved = np.asarray(solve_diagonally_dominant(jnp.asarray(matrix), jnp.asarray(rhs, dtype=jnp.float64)))
    np.testing.assert_allclose(solved, np.linalg.solve(matrix, rhs), rtol=1e-10, atol=1e-9)
