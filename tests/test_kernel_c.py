"""Kernel C: the contract, Merton jump-diffusion acceptance, instability fallback, the ensemble."""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import FunctionalPredictor, PredictorConfig, ProcessState, Window
from usp.domain import levy
from usp.domain._core import Out
from usp.kernel import KernelEvent
from usp.plugins import kernel_c
from usp.plugins.kernel_a import KERNEL_A
from usp.plugins.kernel_c import KERNEL_C
from usp.plugins.kernel_d import KERNEL_D
from usp.plugins.manager import build_plugin_manager, resolve_kernels
from usp.testing import check_kernel

CONFIG = PredictorConfig(enabled_kernels=("C",), confidence_level=0.9)
TICKS = 2500
WARMUP = 400
JUMP_MEAN, JUMP_SCALE, SIGMA = 5.0, 1.0, 1.0
#: (λ per step, μ per step): μ + λm makes the last value ≥ 15% worse than the oracle.
CASES = ((0.05, 0.4), (0.2, 0.1))
SEEDS = (1, 2)


def merton(ticks: int, lam: float, mu: float, seed: int) -> tuple[np.ndarray, float]:
    """A Merton jump diffusion sampled at Δt = 1 and its oracle one-step drift μ + λm."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(lam, ticks)
    jumps = JUMP_MEAN * counts + JUMP_SCALE * np.sqrt(counts) * rng.standard_normal(ticks)
    return 100.0 + np.cumsum(mu + SIGMA * rng.standard_normal(ticks) + jumps), mu + lam * JUMP_MEAN


@pytest.fixture(scope="module")
def alone() -> FunctionalPredictor:
    return FunctionalPredictor(CONFIG, kernels=[KERNEL_C])


def _estimates(series: np.ndarray) -> dict[str, np.ndarray]:
    """Kernel C's estimates at every tick, fed through its contract (jit + scan)."""
    size = CONFIG.window_size

    def body(carry, y):
        state, window, count = carry
        window = jnp.where(count == 0, jnp.full(size, y), jnp.roll(window, -1).at[-1].set(y))
        count = count + 1
        view = Window(window, jnp.minimum(count, size).astype(jnp.int32), jnp.bool_(False), jnp.bool_(False))
        state = kernel_c.update(state, view, CONFIG)
        return (state, window, count), {"lam": state.lam, "jump_mean": state.jump_mean}

    init = (kernel_c.init(CONFIG, jax.random.PRNGKey(0)), jnp.zeros(size), jnp.int32(0))
    _, out = jax.jit(lambda xs: jax.lax.scan(body, init, xs))(jnp.asarray(series))
    return {name: np.asarray(v)[size:] for name, v in out.items()}


def test_registered_as_builtin_c():
    config = attrs.evolve(CONFIG, enabled_kernels=("A", "C", "D"))
    kernels = resolve_kernels(config, build_plugin_manager(entry_points=False))
    assert [k.name for k in kernels] == ["A", "C", "D"] and kernels[1].update is kernel_c.update
    assert kernels[1].source == "builtin"


def test_passes_check_kernel():
    report = check_kernel(KERNEL_C)
    assert "no_recompilation" in report.passed


@pytest.mark.parametrize(("lam", "mu"), CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_merton_forecast_interval_and_estimates(alone, lam, mu, seed):
    series, drift = merton(TICKS, lam, mu, seed)
    _, outputs = alone._scan(alone.init_state(), series)
    outputs = np.asarray(outputs)
    target = series[WARMUP + 1:]
    oracle = np.mean((target - series[WARMUP:-1] - drift) ** 2)
    naive = np.mean((target - series[WARMUP:-1]) ** 2)
    assert naive >= 1.15 * oracle  # the drift matters: the last value is ≥ 15% worse
    mse = np.mean((target - outputs[WARMUP:-1, Out.PREDICTION]) ** 2)
    assert mse <= 1.05 * oracle, (mse / oracle, naive / oracle)
    covered = (outputs[WARMUP:-1, Out.LOWER] <= target) & (target <= outputs[WARMUP:-1, Out.UPPER])
    assert 0.88 <= covered.mean() <= 0.92, covered.mean()
    est = _estimates(series)  # each tick's estimate from its own window, averaged over the run
    assert abs(est["lam"].mean() / lam - 1.0) <= 0.30, est["lam"].mean()
    assert abs(est["jump_mean"].mean() / JUMP_MEAN - 1.0) <= 0.25, est["jump_mean"].mean()


def test_random_walk_within_5_percent_of_the_last_value(alone):
    series = np.cumsum(np.random.default_rng(9).standard_normal(TICKS))
    _, outputs = alone._scan(alone.init_state(), series)
    errors = series[WARMUP + 1:] - np.asarray(outputs)[WARMUP:-1, Out.PREDICTION]
    ratio = np.mean(errors**2) / np.mean(np.diff(series)[WARMUP:] ** 2)
    assert ratio <= 1.05, ratio


def test_fused_acd_beats_ad_on_merton_and_reports_c():
    """Pooled over Merton paths of both intensities and several seeds, the mixture with C has the
    lower one-step MSE (A+D alone is already within about 1% of the oracle on these paths, so the
    margin is small; per path, C wins most of them)."""
    config = attrs.evolve(CONFIG, enabled_kernels=("A", "C", "D"))
    with_c = FunctionalPredictor(config, kernels=[KERNEL_A, KERNEL_C, KERNEL_D])
    without = FunctionalPredictor(attrs.evolve(config, enabled_kernels=("A", "D")), kernels=[KERNEL_A, KERNEL_D])
    squared: dict[str, list[float]] = {"ACD": [], "AD": []}
    for lam, mu in CASES:
        for seed in SEEDS:
            series, _ = merton(TICKS, lam, mu, seed=seed)
            for name, predictor in (("ACD", with_c), ("AD", without)):
                _, outputs = predictor._scan(predictor.init_state(), series)
                squared[name].append(float(np.mean(
                    (series[WARMUP + 1:] - np.asarray(outputs)[WARMUP:-1, Out.PREDICTION]) ** 2)))
    assert sum(squared["ACD"]) < sum(squared["AD"]), squared
    wins = sum(acd < ad for acd, ad in zip(squared["ACD"], squared["AD"], strict=True))
    assert wins > len(squared["AD"]) / 2, squared
    series, _ = merton(TICKS, 0.2, 0.1, seed=7)
    # telemetry names C's own forecast, and stepping after warm-up compiles nothing
    state = with_c.init_state()
    with_c.warm_up(state)
    state, result = with_c.step(state, ProcessState(float(series[0]), 1_000_000_000))
    assert set(result.telemetry.kernel_predictions) == {"A", "C", "D"}
    before = with_c._step._cache_size()
    for t in range(1, 6):
        state, result = with_c.step(state, ProcessState(float(series[t]), (t + 1) * 1_000_000_000))
        assert np.isfinite(result.telemetry.kernel_predictions["C"])
        # the scheme telemetry: shares of ticks per scheme, stiffness, implicit sweeps and residual
        diagnostics = result.telemetry.kernel_diagnostics["C"]
        assert tuple(diagnostics) == kernel_c.DIAGNOSTICS
        assert all(np.isfinite(v) for v in diagnostics.values())
        shares = [diagnostics[f"{s}_share"] for s in ("explicit", "blended", "implicit")]
        assert sum(shares) == pytest.approx(1.0) and diagnostics["max_stiffness"] >= 0.0
        assert result.telemetry.kernel_events == {"C": ()}
    assert with_c._step._cache_size() == before


def _model(**changes) -> kernel_c.JumpDiffusion:
    f = jnp.float64
    base = {"mu": f(0.0), "sigma": f(0.01), "kappa": f(0.0), "level": f(0.0), "lam": f(0.05),
            "jump_mean": f(0.0), "jump_scale": f(0.02), "stable": jnp.bool_(False), "alpha": f(2.0),
            "beta": f(0.0), "stable_scale": f(0.0), "jumps": f(0.0), "holder": f(0.5)}
    base.update({k: jnp.asarray(v, base[k].dtype) for k, v in changes.items()})
    return kernel_c.JumpDiffusion(**base)


@pytest.mark.parametrize(("kappa", "expected_share"), [(0.5, 0.0), (500.0, (500 - 100) / 900), (1e5, 1.0)])
def test_scheme_follows_the_stiffness(kappa, expected_share):
    sim = kernel_c.simulate(jax.random.PRNGKey(1), jnp.float64(0.3), _model(kappa=kappa), n_paths=64,
                            substeps=4, max_events=16, epsilon=1e-6)
    assert float(sim.stiffness) == pytest.approx(kappa, rel=1e-6)
    assert float(sim.implicit_share) == pytest.approx(expected_share, abs=1e-9)


def test_a_step_far_beyond_the_stability_bound_is_detected_and_falls_back():
    model = _model(kappa=1e5)  # |b'| Δt = 1e5: explicit Euler amplifies by (1 − 2.5e4)^4 per step
    reference = kernel_c.analytic_scale(model)
    explicit = kernel_c.simulate(jax.random.PRNGKey(2), jnp.float64(0.3), model, n_paths=64, substeps=4,
                                 max_events=16, epsilon=1e-6, share=jnp.float64(0.0))
    scale, unstable = kernel_c.interval_scale(explicit.endpoints - 0.3, 0.9, reference)
    assert bool(unstable) and float(scale) == float(reference) and np.isfinite(float(scale))
    implicit = kernel_c.simulate(jax.random.PRNGKey(2), jnp.float64(0.3), model, n_paths=64, substeps=4,
                                 max_events=16, epsilon=1e-6)  # the rule picks the implicit scheme
    scale, unstable = kernel_c.interval_scale(implicit.endpoints - 0.3, 0.9, reference)
    assert not bool(unstable) and np.all(np.isfinite(np.asarray(implicit.endpoints)))
    nan = kernel_c.interval_scale(jnp.array([0.0, jnp.nan, 1.0]), 0.9, reference)
    assert bool(nan[1]) and float(nan[0]) == float(reference)


def test_a_diverged_step_raises_the_unstable_event_and_keeps_the_state_finite():
    """The whole update path: a forced explicit step of a stiff model diverges; the new state is
    finite, counts it, and the report raises KernelEvent.UNSTABLE (the core's KernelUnstableEvent)."""
    size = CONFIG.window_size
    values = 1.0 + 0.01 * jnp.sin(jnp.arange(size, dtype=jnp.float64))
    window = Window(values, jnp.int32(size), jnp.bool_(False), jnp.bool_(False))
    state = kernel_c.init(CONFIG, jax.random.PRNGKey(0))
    stiff = _model(kappa=1e5, level=1.0)
    forced = kernel_c.advance(state, window, stiff, CONFIG, share=jnp.float64(0.0))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(forced))
    assert bool(forced.unstable) and int(forced.unstable_count) == 1
    report = kernel_c.report(forced, CONFIG)
    assert int(report.events) == int(KernelEvent.UNSTABLE)
    assert float(report.values[kernel_c.DIAGNOSTICS.index("unstable_count")]) == 1.0
    assert float(report.values[kernel_c.DIAGNOSTICS.index("max_stiffness")]) == pytest.approx(1e5, rel=1e-6)
    chosen = kernel_c.advance(state, window, stiff, CONFIG)  # the rule picks the implicit scheme: stable
    assert not bool(chosen.unstable) and int(kernel_c.report(chosen, CONFIG).events) == 0
    assert float(kernel_c.report(chosen, CONFIG).values[kernel_c.DIAGNOSTICS.index("implicit_share")]) == 1.0


def test_stable_jumps_when_the_tails_call_for_it():
    estimate = jax.jit(lambda u: kernel_c.estimate(u, jnp.ones(1024), 0.05, 0.0, 0.1, 16))
    heavy, normal = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        where = rng.random(1024) < 0.15
        draws = np.asarray(levy.sample_stable(jax.random.PRNGKey(seed), 1.3, 0.0, (1024,)))
        u = np.cumsum(0.01 * rng.standard_normal(1024) + np.where(where, 0.05 * draws, 0.0))
        heavy.append(estimate(jnp.asarray(u / np.abs(u).max())))
        g = np.cumsum(0.01 * rng.standard_normal(1024) + np.where(where, 0.06 + 0.01 * rng.standard_normal(1024), 0.0))
        normal.append(estimate(jnp.asarray(g / np.abs(g).max())))
    found = [m for m in heavy if bool(m.stable)]
    assert len(found) >= 4, [float(m.alpha) for m in heavy]  # α = 1.3 jumps: stable in most windows
    assert all(1.1 <= float(m.alpha) < 1.95 for m in found)
    assert not any(bool(m.stable) for m in normal)  # normal jumps never
    assert all(float(m.jumps) > 100 for m in normal)


def test_keys_are_split_each_tick_and_replays_are_identical():
    values = jnp.asarray(np.cumsum(np.random.default_rng(5).standard_normal(CONFIG.window_size)))
    view = Window(values, jnp.int32(CONFIG.window_size), jnp.bool_(False), jnp.bool_(False))
    step = jax.jit(lambda s: kernel_c.update(s, view, CONFIG))
    first = step(kernel_c.init(CONFIG, jax.random.PRNGKey(8)))
    second = step(first)
    assert not np.array_equal(np.asarray(first.key), np.asarray(second.key))
    assert float(first.log_scale) != float(step(kernel_c.init(CONFIG, jax.random.PRNGKey(9))).log_scale)
    again = step(step(kernel_c.init(CONFIG, jax.random.PRNGKey(8))))
    for a, b in zip(jax.tree_util.tree_leaves(second), jax.tree_util.tree_leaves(again), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    frozen = kernel_c.update(second, Window(values, view.count, jnp.bool_(True), jnp.bool_(False)), CONFIG)
    assert np.array_equal(np.asarray(frozen.key), np.asarray(second.key)) and float(frozen.mean) == float(second.mean)
