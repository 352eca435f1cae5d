"""usp.domain.levy: the CMS stable sampler against scipy, strong orders on GBM, the scheme choice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kstwo, levy_stable
from usp.domain import levy

DRAWS = 100_000
#: The CDF is evaluated at every STRIDE-th order statistic; D is bounded above between them.
STRIDE = 20


def _ks_upper_bound(sample: np.ndarray, cdf) -> float:
    """An upper bound of the Kolmogorov–Smirnov statistic sup|F_n − F| from F at every STRIDE-th
    order statistic: between x_(i) and x_(j), F_n ≤ j/n and F ≥ F(x_(i)) (and the mirror), so
    the bound exceeds the exact D by at most STRIDE/n (2e-4 here, the p = 0.01 critical value
    being 5.2e-3). The p-value of the bound is a lower bound of the exact one."""
    x = np.sort(sample)
    n = x.size
    idx = np.r_[np.arange(0, n, STRIDE), n - 1]
    f = cdf(x[idx])
    above = idx[1:] / n - f[:-1]
    below = f[1:] - (idx[:-1] + 1) / n
    return float(max(above.max(), below.max(), f[0], 1.0 - f[-1]))


@pytest.fixture
def exact_scipy_cdf(monkeypatch):
    """scipy's piecewise CDF replaces x by ζ when |x − ζ| < 0.005·α^{1/α} (in S1 coordinates:
    around x = 0), a flat spot that is off by up to ~2e-3 there; the documented
    ``piecewise_x_tol_near_zeta`` attribute narrows it to a negligible width."""
    monkeypatch.setattr(levy_stable, "piecewise_x_tol_near_zeta", 1e-7)


def test_scipy_default_is_s1():
    assert levy_stable.parameterization == "S1"


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_cms_sampler_matches_scipy_levy_stable(alpha, beta, exact_scipy_cdf):
    key = jax.random.fold_in(jax.random.PRNGKey(18), int(alpha * 100) * 10 + int(beta * 10))
    sample = np.asarray(levy.sample_stable(key, alpha, beta, (DRAWS,)))
    assert np.all(np.isfinite(sample))
    d = _ks_upper_bound(sample, lambda x: levy_stable.cdf(x, alpha, beta))
    p = float(kstwo.sf(d, DRAWS))
    assert p > 0.01, (alpha, beta, d, p)


def test_alpha_one_branch_matches_scipy(exact_scipy_cdf):
    sample = np.asarray(levy.sample_stable(jax.random.PRNGKey(5), 1.0, 0.5, (20_000,)))
    d = _ks_upper_bound(sample, lambda x: levy_stable.cdf(x, 1.0, 0.5))
    assert kstwo.sf(d, sample.size) > 0.01, d


def test_alpha_two_is_normal_of_variance_two():
    sample = np.asarray(levy.sample_stable(jax.random.PRNGKey(6), 2.0, 0.0, (50_000,)))
    assert np.var(sample) == pytest.approx(2.0, rel=0.03)


def test_sampler_is_jittable_with_traced_alpha_and_deterministic():
    draw = jax.jit(lambda key, a, b: levy.sample_stable(key, a, b, (64,)))
    key = jax.random.PRNGKey(3)
    first = np.asarray(draw(key, 1.5, 0.5))
    assert np.array_equal(first, np.asarray(draw(key, 1.5, 0.5)))
    np.testing.assert_allclose(first, np.asarray(levy.sample_stable(key, 1.5, 0.5, (64,))), rtol=1e-12)
    batched = jax.vmap(lambda a: levy.sample_stable(key, a, 0.0, (64,)))(jnp.array([1.0, 1.5]))
    assert np.all(np.isfinite(np.asarray(batched)))


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (2.5, 0.0), (1.5, 1.5), (1.5, -2.0)])
def test_bad_parameters_raise(alpha, beta):
    with pytest.raises(ValueError, match=r"alpha|beta"):
        levy.sample_stable(jax.random.PRNGKey(0), alpha, beta, (3,))


# -- strong convergence on geometric Brownian motion -------------------------------------------

GBM_A, GBM_B, GBM_X0, HORIZON = 1.0, 1.0, 1.0, 1.0
FINEST = 2**10
PATHS = 2000


def _strong_errors(step) -> tuple[np.ndarray, np.ndarray]:
    """Mean |X_T^h − X_T| over PATHS paths for h = T/2^k, k = 4..8 (exact solution on the finest
    Brownian increments)."""
    dw = np.random.default_rng(11).normal(0.0, np.sqrt(HORIZON / FINEST), (PATHS, FINEST))
    exact = GBM_X0 * np.exp((GBM_A - 0.5 * GBM_B**2) * HORIZON + GBM_B * dw.sum(axis=1))

    def drift(x):
        return GBM_A * x

    def diffusion(x):
        return GBM_B * x

    sizes, errors = [], []
    for k in range(4, 9):
        steps = 2**k
        h = HORIZON / steps
        coarse = jnp.asarray(dw.reshape(PATHS, steps, FINEST // steps).sum(axis=2))

        def body(x, w, h=h):
            return step(drift, diffusion, x, h, w), None

        end, _ = jax.lax.scan(body, jnp.full(PATHS, GBM_X0), coarse.T)
        sizes.append(h)
        errors.append(np.mean(np.abs(np.asarray(end) - exact)))
    return np.asarray(sizes), np.asarray(errors)


@pytest.mark.parametrize(("scheme", "order"), [(levy.euler_maruyama_step, 0.5), (levy.milstein_step, 1.0)])
def test_strong_order_on_gbm(scheme, order):
    sizes, errors = _strong_errors(scheme)
    fitted = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert abs(fitted - order) <= 0.1, (fitted, errors)


def test_trapezoidal_is_stable_where_euler_explodes():
    kappa, h, x = 1e4, 1e-2, jnp.ones(4)

    def drift(y):
        return -kappa * y

    def diffusion(y):
        return jnp.zeros_like(y)

    zero = jnp.zeros(4)
    euler = x
    for _ in range(10):
        euler = levy.euler_maruyama_step(drift, diffusion, euler, h, zero)
    assert np.all(np.abs(np.asarray(euler)) > 1e10)
    # the fixed-point corrector needs |b'| h / 2 < 1: on a mild drift it converges to the
    # trapezoidal solution (1 − κh/2)/(1 + κh/2)
    mild = 10.0
    y, residual = levy.trapezoidal_step(lambda v: -mild * v, diffusion, x, h, zero, iterations=30)
    np.testing.assert_allclose(np.asarray(y), (1 - mild * h / 2) / (1 + mild * h / 2), rtol=1e-12)
    assert float(residual) < 1e-12


# -- stiffness and the scheme choice -----------------------------------------------------------

def test_stiffness_of_a_linear_drift():
    s = levy.stiffness(lambda y: 3.0 - 250.0 * y, jnp.float64(0.7), 2.0, 1e-6)
    assert float(s) == pytest.approx(500.0, rel=1e-6)


@pytest.mark.parametrize(("holder", "low", "high"), [
    (0.0, 100.0, 1000.0),      # 25/(1−0)² = 25 < 100: the floors
    (0.5, 100.0, 1000.0),      # 25/0.25 = 100 exactly: the floor and the rough term meet
    (0.8, 625.0, 6250.0),      # 25/0.04, 250/0.04
    (0.95, 10_000.0, 100_000.0),
    (1.3, 10_000.0, 100_000.0),  # clamped to 0.95
    (-0.4, 100.0, 1000.0),     # clamped to 0
])
def test_thresholds_follow_the_holder_exponent(holder, low, high):
    theta_l, theta_h = levy.stiffness_thresholds(holder)
    assert float(theta_l) == pytest.approx(low, rel=1e-12)
    assert float(theta_h) == pytest.approx(high, rel=1e-12)


@pytest.mark.parametrize("holder", [0.3, 0.8])
def test_scheme_choice_at_the_boundaries(holder):
    low, high = (float(t) for t in levy.stiffness_thresholds(holder))
    share = lambda s: float(levy.implicit_share(s, holder))  # noqa: E731
    assert share(low) == 0.0 and share(low * (1 - 1e-9)) == 0.0  # explicit up to θ_L
    assert 0.0 < share(low * (1 + 1e-6)) < 1e-3                     # the blend starts
    assert share(0.5 * (low + high)) == pytest.approx(0.5)
    assert 0.999 < share(high * (1 - 1e-6)) < 1.0
    assert share(high) == 1.0 and share(10 * high) == 1.0           # implicit from θ_H


def test_higher_holder_exponent_raises_the_thresholds():
    stiff = 800.0  # between the floors θ_L = 100 and θ_H = 1000
    assert 0.0 < float(levy.implicit_share(stiff, 0.2)) < 1.0
    assert float(levy.implicit_share(stiff, 0.9)) == 0.0  # θ_L = 2500 there


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1e6), st.floats(0.0, 1e6), st.floats(-1.0, 2.0))
def test_implicit_share_is_a_monotone_weight(s1, s2, holder):
    a, b = sorted((s1, s2))
    wa, wb = float(levy.implicit_share(a, holder)), float(levy.implicit_share(b, holder))
    assert 0.0 <= wa <= wb <= 1.0


def test_holder_exponent_of_a_random_walk_and_of_a_smooth_path():
    rng = np.random.default_rng(2)
    walk = jnp.asarray(np.cumsum(rng.standard_normal(2048)))
    assert float(levy.holder_exponent(walk, jnp.ones(2048))) == pytest.approx(0.5, abs=0.05)
    smooth = jnp.asarray(np.cumsum(np.cumsum(rng.standard_normal(2048))))
    assert float(levy.holder_exponent(smooth, jnp.ones(2048))) > 0.9
    assert float(levy.holder_exponent(jnp.full(64, 3.0), jnp.ones(64))) == 0.5
