"""usp.domain.diffusion: the backward Kolmogorov solver against closed forms, its monotonicity,
the drift/diffusion regression, the entropy, the DGM network, its training and the gate."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.domain import diffusion as df

THETA, SIGMA, MU, HORIZON = 1.0, 1.0, 2.0, 1.0
SD = SIGMA / np.sqrt(2.0 * THETA)


def _ou_grid(n: int = 241) -> tuple[np.ndarray, float]:
    x = np.linspace(MU - 8.0 * SD, MU + 8.0 * SD, n)
    return x, float(x[1] - x[0])


@functools.partial(jax.jit, static_argnames=("max_explicit", "implicit"))
def _solve(drift, diffusion, dx, terminal, *, max_explicit, implicit):
    return df.solve_backward(drift, diffusion, dx, HORIZON, terminal, max_explicit=max_explicit, implicit=implicit)


def _ou_errors(max_explicit: int, implicit: int) -> tuple[float, float, df.Solution]:
    """Largest relative errors of the conditional mean and variance on |x − μ| ≤ 3 sd."""
    x, dx = _ou_grid()
    terminal = jnp.stack([jnp.asarray(x), jnp.asarray((x - MU) ** 2)], axis=1)
    sol = _solve(jnp.asarray(THETA * (MU - x)), jnp.full(x.size, SIGMA**2), dx, terminal,
                 max_explicit=max_explicit, implicit=implicit)
    u = np.asarray(sol.values)
    mean = MU + (x - MU) * np.exp(-THETA * HORIZON)
    var = SIGMA**2 / (2.0 * THETA) * (1.0 - np.exp(-2.0 * THETA * HORIZON))
    inner = np.abs(x - MU) <= 3.0 * SD
    return (float(np.max(np.abs(u[inner, 0] / mean[inner] - 1.0))),
            float(np.max(np.abs((u[inner, 1] - (u[inner, 0] - MU) ** 2) / var - 1.0))), sol)


def test_finite_differences_match_the_closed_form_ou_mean_and_variance():
    mean_error, var_error, sol = _ou_errors(max_explicit=4096, implicit=16)
    assert not bool(sol.implicit) and 1000 < int(sol.steps) <= 4096
    assert mean_error < 1e-3 and var_error < 1e-3, (mean_error, var_error)


def test_implicit_steps_converge_at_first_order():
    errors = [_ou_errors(max_explicit=8, implicit=k)[:2] for k in (100, 200, 400)]
    ratios = [(errors[i][j] / errors[i + 1][j]) for i in range(2) for j in range(2)]
    assert all(1.7 < r < 2.3 for r in ratios), errors  # backward Euler: error ∝ Δt
    assert max(errors[-1]) < 3e-3


def test_explicit_steps_respect_the_cfl_bound_and_switch_to_implicit():
    x, dx = _ou_grid(61)
    drift, diffusion = jnp.asarray(THETA * (MU - x)), jnp.full(x.size, SIGMA**2)
    bound = float(df.cfl_step(drift, diffusion, dx))
    assert bound == pytest.approx(df.C_SAFE * dx**2 / (2 * SIGMA**2 + np.max(np.abs(THETA * (MU - x))) * dx))
    needed = int(np.ceil(HORIZON / bound))
    terminal = jnp.asarray(x)[:, None]
    explicit = _solve(drift, diffusion, dx, terminal, max_explicit=needed, implicit=4)
    implicit = _solve(drift, diffusion, dx, terminal, max_explicit=needed - 1, implicit=4)
    assert int(explicit.steps) == needed and not bool(explicit.implicit)
    assert HORIZON / int(explicit.steps) <= bound
    assert int(implicit.steps) == 4 and bool(implicit.implicit)


_N = 24
_coefficients = st.lists(st.floats(-50.0, 50.0), min_size=_N, max_size=_N)
_diffusions = st.lists(st.floats(0.0, 20.0), min_size=_N, max_size=_N)


@given(_coefficients, _diffusions, st.lists(st.floats(-5.0, 5.0), min_size=_N, max_size=_N),
       st.lists(st.floats(0.0, 3.0), min_size=_N, max_size=_N), st.sampled_from([2, 512]))
def test_the_scheme_is_monotone(drift, diffusion, terminal, bump, max_explicit):
    """Comparison and maximum principles, explicit or implicit: g ≤ h gives u_g ≤ u_h, and u stays
    within [min g, max g]; every off-diagonal of the operator is ≥ 0."""
    b, a = jnp.asarray(drift), jnp.asarray(diffusion)
    dx = 0.1
    lower, upper = df.generator(b, a, dx)
    assert np.all(np.asarray(lower) >= 0) and np.all(np.asarray(upper) >= 0)
    dt = float(df.cfl_step(b, a, dx))
    assert np.all(1.0 - dt * np.asarray(lower + upper) >= 0.0)  # every Euler coefficient ≥ 0
    g = np.asarray(terminal)
    h = g + np.asarray(bump)
    sol = _solve(b, a, dx, jnp.stack([jnp.asarray(g), jnp.asarray(h)], axis=1), max_explicit=max_explicit, implicit=8)
    u = np.asarray(sol.values)
    slack = 1e-9 * (1.0 + np.max(np.abs(h)))
    assert np.all(u[:, 0] <= u[:, 1] + slack)
    assert np.all(u[:, 0] >= g.min() - slack) and np.all(u[:, 0] <= g.max() + slack)


def _ou_pairs(n: int, a: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    phi = np.exp(-a)
    x = np.empty(n)
    x[0] = 0.0
    for t in range(1, n):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal()
    return x


_estimate = jax.jit(df.estimate_coefficients, static_argnums=(5,))


def test_regression_recovers_an_ou_drift_and_diffusion():
    a = 0.5
    x = _ou_pairs(4000, a, 3)
    lo, hi = -4.0, 4.0
    n = 48
    dx = (hi - lo) / (n - 1)
    co = _estimate(jnp.asarray(x[:-1]), jnp.asarray(np.diff(x)), jnp.ones(x.size - 1), lo, dx, n)
    nodes = lo + dx * np.arange(n)
    inner = np.abs(nodes) <= 1.5
    slope = np.polyfit(nodes[inner], np.asarray(co.drift)[inner], 1)[0]
    assert slope == pytest.approx(np.exp(-a) - 1.0, rel=0.1)  # E[d | x] = (e^{−a} − 1) x
    assert np.asarray(co.diffusion)[inner] == pytest.approx(1.0 - np.exp(-2 * a), rel=0.15)
    assert float(co.bandwidth) >= 6.0  # a linear drift takes a wide window


def test_regression_picks_a_narrow_bandwidth_for_a_curved_drift():
    rng = np.random.default_rng(4)
    levels = rng.uniform(-2.0, 2.0, 4000)
    increments = 0.5 * np.sin(3.0 * levels) + 0.05 * rng.standard_normal(levels.size)
    co = _estimate(jnp.asarray(levels), jnp.asarray(increments), jnp.ones(levels.size), -2.0, 4.0 / 47, 48)
    assert float(co.bandwidth) <= 3.0
    nodes = -2.0 + 4.0 / 47 * np.arange(48)
    assert np.max(np.abs(np.asarray(co.drift) - 0.5 * np.sin(3.0 * nodes))[3:-3]) < 0.05


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=40), st.integers(0, 39))
def test_regression_is_bounded_and_finite_for_any_finite_window(values, dropped):
    v = np.zeros(40)
    v[:len(values)] = values
    weights = (np.arange(39) < len(values) - 1).astype(float)
    weights[dropped % (len(values) - 1)] = 0.0
    d = np.diff(v)
    lo, hi = min(values) - 1.0, max(values) + 1.0
    co = _estimate(jnp.asarray(v[:-1]), jnp.asarray(d), jnp.asarray(weights), lo, (hi - lo) / 15, 16)
    drift, diffusion = np.asarray(co.drift), np.asarray(co.diffusion)
    assert np.all(np.isfinite(drift)) and np.all(np.isfinite(diffusion)) and np.all(diffusion > 0)
    largest = np.max(np.abs(d * weights))
    assert np.all(np.abs(drift) <= largest * (1 + 1e-12) + 1e-300)
    assert np.all(diffusion <= max(largest**2, float(diffusion.min())) * (1 + 1e-12))


def test_short_or_flat_windows_fall_back_to_constants():
    levels = jnp.asarray([0.0, 0.5, 0.2, 0.9])
    increments = jnp.asarray([0.5, -0.3, 0.7, 0.1])
    short = df.estimate_coefficients(levels, increments, jnp.ones(4), -1.0, 0.2, 16)
    assert np.allclose(np.asarray(short.drift), 0.25) and float(short.bandwidth) == 0.0
    assert np.allclose(np.asarray(short.diffusion), np.var([0.5, -0.3, 0.7, 0.1]))
    flat = df.estimate_coefficients(jnp.zeros(30), jnp.zeros(30), jnp.ones(30), -1.0, 0.2, 16)
    assert np.all(np.asarray(flat.drift) == 0.0) and np.all(np.asarray(flat.diffusion) > 0.0)


def test_spacing_entropy():
    n = 48
    x = jnp.arange(n, dtype=jnp.float64)
    assert float(df.spacing_entropy(x, 1.0)) == pytest.approx(np.log(n - 1))
    shuffled = jnp.asarray(np.random.default_rng(0).permutation(np.arange(n, dtype=float)))
    assert float(df.spacing_entropy(shuffled, 1.0)) == pytest.approx(np.log(n - 1))
    assert float(df.spacing_entropy(1e-9 * x, 1e-9)) == pytest.approx(np.log(n - 1))
    half = float(df.spacing_entropy(0.5 * x, 1.0))
    assert half == pytest.approx(np.log(n - 1) + np.log(0.5))
    assert float(df.spacing_entropy(jnp.full(n, 3.0), 1.0)) == pytest.approx(np.log((n - 1) * 1e-12))


# -- the DGM network ------------------------------------------------------------------------------
SHAPE = df.DgmShape(width=16, depth=2, activation="tanh")


@pytest.mark.parametrize("activation", df.ACTIVATIONS)
def test_forward_derivatives_match_autodiff(activation):
    shape = df.DgmShape(width=12, depth=3, activation=activation)
    params = df.dgm_init(jax.random.PRNGKey(3), shape, 6)
    params = params + 0.3 * jax.random.normal(jax.random.PRNGKey(4), params.shape)  # no zero weights
    tau, eta = jnp.asarray([0.0, 0.3, 0.9]), jnp.asarray([-0.7, 0.1, 1.0])

    @jax.jit
    def both(tau, eta):
        def one(t, x):
            return df.dgm_apply(params, shape, jnp.int32(6), t[None], x[None])[0][0]

        auto = jax.vmap(lambda t, x: (one(t, x), jax.jacfwd(one, 0)(t, x), jax.jacfwd(one, 1)(t, x),
                                      jax.jacfwd(jax.jacfwd(one, 1), 1)(t, x)))(tau, eta)
        return df.dgm_apply(params, shape, jnp.int32(6), tau, eta), auto, df.dgm_values(params, shape, jnp.int32(6),
                                                                                          tau, eta)

    forward, auto, values = both(tau, eta)
    for mine, reference in zip(forward, auto, strict=True):
        assert np.allclose(np.asarray(mine), np.asarray(reference), rtol=1e-9, atol=1e-12)
    assert np.array_equal(np.asarray(values), np.asarray(forward[0]))


def test_widening_keeps_the_function_and_masked_neurons_are_inert():
    params = df.dgm_init(jax.random.PRNGKey(0), SHAPE, 8)
    tau, eta = jnp.linspace(0, 1, 7), jnp.linspace(-1, 1, 7)
    narrow = np.asarray(df.dgm_values(params, SHAPE, jnp.int32(8), tau, eta))
    assert np.array_equal(narrow, np.asarray(df.dgm_values(params, SHAPE, jnp.int32(16), tau, eta)))
    (w, b), *rest = SHAPE.unpack(params)
    noise = jax.random.normal(jax.random.PRNGKey(1), w.shape)
    for rows, inert in ((slice(8, None), True), (slice(0, 8), False)):  # inactive, then active neurons
        layers = [(w.at[rows].add(noise[rows]), b), *rest]
        moved = jnp.concatenate([jnp.concatenate([lw.ravel(), lb]) for lw, lb in layers])
        out = np.asarray(df.dgm_values(moved, SHAPE, jnp.int32(8), tau, eta))
        assert np.array_equal(out, narrow) == inert


def _ou_problem(n: int = 48) -> tuple[df.DgmProblem, np.ndarray]:
    """An OU backward equation in the normalised square, and its finite-difference reference
    ``u(τ, ·)`` at τ = 0, 0.1, ..., 0.9 (both outputs): float64[10, n, 2]."""
    eta = np.linspace(-1.0, 1.0, n)
    half_width, theta, level = 5.0, 0.5, 0.3
    beta, alpha = theta * (level - eta), np.full(n, 1.0 / half_width**2)
    problem = df.DgmProblem(beta=jnp.asarray(beta), alpha=jnp.asarray(alpha), centre=jnp.float64(0.1))
    terminal = jnp.stack([jnp.asarray(eta), jnp.asarray((eta - 0.1) ** 2)], axis=1)
    reference = np.stack([np.asarray(df.solve_backward(problem.beta, problem.alpha, eta[1] - eta[0], 1.0 - tau,
                                                       terminal, max_explicit=4096, implicit=16).values)
                          for tau in np.arange(10) / 10])
    return problem, reference


@functools.partial(jax.jit, static_argnames=("collocation", "iterations"))
def _train(params, problem, *, collocation, iterations):
    return df.dgm_train(params, SHAPE, jnp.int32(8), problem, jax.random.PRNGKey(1), jnp.float64(1e-2),
                        jnp.int32(0), iterations=iterations, collocation=collocation)


def test_dgm_matches_the_finite_difference_reference_and_improves_with_collocation():
    problem, reference = _ou_problem()
    eta = jnp.linspace(-1.0, 1.0, reference.shape[1])
    start = df.dgm_init(jax.random.PRNGKey(0), SHAPE, 8)
    errors, ratios = [], None
    for collocation in (2, 8, 128):
        trained = _train(start, problem, collocation=collocation, iterations=1500)
        assert int(trained.halvings) == 0 and np.isfinite(float(trained.loss))
        values = np.stack([np.asarray(df.dgm_values(trained.params, SHAPE, jnp.int32(8), jnp.full(eta.shape, tau), eta))
                           for tau in np.arange(10) / 10])
        error = np.max(np.abs(values - reference), axis=1) / np.max(np.abs(reference), axis=1)  # [τ, output]
        errors.append(float(error.max()))
        ratios = np.var(values, axis=1) / np.var(reference, axis=1)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, errors
    assert np.all(ratios >= 0.10) and np.median(ratios) >= 0.5, ratios


def test_sustained_clipping_halves_the_learning_rate():
    problem, _ = _ou_problem()
    wild = df.DgmProblem(beta=1e4 * problem.beta, alpha=problem.alpha, centre=problem.centre)
    start = df.dgm_init(jax.random.PRNGKey(0), SHAPE, 8)
    train = jax.jit(lambda problem, it: df.dgm_train(start, SHAPE, jnp.int32(8), problem, jax.random.PRNGKey(2),
                                                     jnp.float64(1e-2), jnp.int32(0), iterations=it, collocation=16))
    five, six, tame = train(wild, 5), train(wild, 6), train(problem, 50)
    assert int(five.halvings) == 0 and int(five.streak) == 5 and float(five.learning_rate) == 1e-2
    assert int(six.halvings) == 1 and int(six.streak) == 0 and float(six.learning_rate) == 5e-3
    assert int(tame.halvings) == 0 and float(tame.learning_rate) == 1e-2


# -- the gate ---------------------------------------------------------------------------------------
def _bump(carry, amount):
    return {"value": carry["value"] + amount, "count": carry["count"] + 1}


def test_when_due_runs_the_step_only_for_due_rows():
    carry = {"value": jnp.arange(4.0), "count": jnp.zeros(4, jnp.int32)}
    due = jnp.asarray([True, False, True, False])
    amount = jnp.asarray([10.0, 20.0, 30.0, 40.0])
    batched = jax.jit(jax.vmap(lambda d, c, a: df.when_due(d, _bump, c, a)))(due, carry, amount)
    assert np.array_equal(np.asarray(batched["value"]), [10.0, 1.0, 32.0, 3.0])
    assert np.array_equal(np.asarray(batched["count"]), [1, 0, 1, 0])
    for i in range(4):
        single = jax.jit(lambda d, c, a: df.when_due(d, _bump, c, a))(
            due[i], jax.tree_util.tree_map(lambda x, i=i: x[i], carry), amount[i])
        assert float(single["value"]) == float(batched["value"][i])
    idle = jax.jit(jax.vmap(lambda c, a: df.when_due(jnp.bool_(False), _bump, c, a)))(carry, amount)
    assert np.array_equal(np.asarray(idle["value"]), np.arange(4.0))
