"""Kernel B: the contract, forecasts against the oracle on OU, CIR and double-well diffusions and
a random walk, the fused mixture, telemetry, mode collapse and gradient instability."""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import FunctionalPredictor, PredictorConfig, ProcessState, Window
from usp.adapters.stores import FileStore
from usp.application.results import result_from_output
from usp.application.snapshot import decode_snapshot
from usp.application.types import GradientInstabilityEvent, ModeCollapseEvent
from usp.domain import diffusion
from usp.domain._core import Out
from usp.plugins import kernel_b
from usp.plugins.kernel_a import KERNEL_A
from usp.plugins.kernel_b import KERNEL_B, Counter, Scalar
from usp.plugins.kernel_d import KERNEL_D
from usp.plugins.manager import build_plugin_manager, resolve_kernels
from usp.testing import check_config, check_kernel

TICKS, WARMUP = 2500, 400
SEEDS = (1, 2, 3)
#: Mean reversion per step (θΔt ≥ 0.3: the last value is ≥ 15% worse than the oracle).
REVERSION = 0.5
#: Double well dX = (X − X³) dt + σ dW sampled every Δt.
WELL_STEP, WELL_SIGMA = 1.0, 0.6
CONFIG = PredictorConfig(enabled_kernels=("B",))


# -- paths and their oracles ------------------------------------------------------------------------
def ou(seed: int, mu: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """An Ornstein–Uhlenbeck path (exact transitions, stationary sd 1) and its oracle one-step mean."""
    rng = np.random.default_rng(seed)
    phi = np.exp(-REVERSION)
    x = np.empty(TICKS)
    x[0] = mu
    for t in range(1, TICKS):
        x[t] = mu + phi * (x[t - 1] - mu) + np.sqrt(1 - phi**2) * rng.standard_normal()
    return x, mu + phi * (x[:-1] - mu)


def cir(seed: int, mu: float = 1.0, sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A Cox–Ingersoll–Ross path dX = θ(μ − X)dt + σ√X dW (exact noncentral χ² transitions)."""
    rng = np.random.default_rng(seed)
    decay = np.exp(-REVERSION)
    c = sigma**2 * (1 - decay) / (4 * REVERSION)
    dof = 4 * REVERSION * mu / sigma**2
    x = np.empty(TICKS)
    x[0] = mu
    for t in range(1, TICKS):
        x[t] = c * rng.noncentral_chisquare(dof, x[t - 1] * decay / c)
    return x, mu + decay * (x[:-1] - mu)


def double_well(seeds: tuple[int, ...], substeps: int = 50) -> np.ndarray:
    """Double-well paths (Euler with ``substeps`` substeps per sample), float64[len(seeds), TICKS]."""
    rngs = [np.random.default_rng(100 + s) for s in seeds]
    h = WELL_STEP / substeps
    y = np.ones(len(seeds))
    x = np.empty((len(seeds), TICKS))
    x[:, 0] = y
    for t in range(1, TICKS):
        noise = np.stack([r.standard_normal(substeps) for r in rngs]) * WELL_SIGMA * np.sqrt(h)
        for k in range(substeps):
            y = y + (y - y**3) * h + noise[:, k]
        x[:, t] = y
    return x


def well_oracle(levels: np.ndarray) -> np.ndarray:
    """E[X_{t+Δt} | X_t] of the double well, by the finite-difference solver on a fine grid with
    the true coefficients (the solver matches closed forms to 1e-6: tests/test_diffusion.py)."""
    grid = np.linspace(-3.0, 3.0, 601)
    solution = diffusion.solve_backward(jnp.asarray(grid - grid**3), jnp.full(grid.size, WELL_SIGMA**2),
                                        grid[1] - grid[0], WELL_STEP, jnp.asarray(grid)[:, None],
                                        max_explicit=100_000, implicit=16)
    return np.interp(levels, grid, np.asarray(solution.values)[:, 0])


def forecasts(spec, config: PredictorConfig, series: np.ndarray) -> np.ndarray:
    """The kernel's one-step forecasts on each row of ``series`` (float64[N, T]), through its
    contract: a jitted scan of update + predict over the window, vmapped over the rows."""
    size = config.window_size

    def run(xs):
        def body(carry, y):
            state, window, count = carry
            window = jnp.where(count == 0, jnp.full(size, y), jnp.roll(window, -1).at[-1].set(y))
            count = count + 1
            view = Window(window, jnp.minimum(count, size).astype(jnp.int32), jnp.bool_(False), jnp.bool_(False))
            state = spec.update(state, view, config)
            return (state, window, count), spec.predict(state, view, config).mean

        start = (spec.init(config, jax.random.PRNGKey(0)), jnp.zeros(size), jnp.int32(0))
        return jax.lax.scan(body, start, xs)[1]

    return np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(series)))


@pytest.fixture(scope="module")
def paths() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Every path (rows) with its oracle one-step mean (None: a random walk), and B's forecasts."""
    made = [ou(s) for s in SEEDS] + [cir(s) for s in SEEDS]
    wells = double_well(SEEDS[:2])
    walks = np.cumsum(np.random.default_rng(9).standard_normal((2, TICKS)), axis=1)
    series = np.concatenate([np.stack([m[0] for m in made]), wells, walks])
    oracles = [m[1] for m in made] + [well_oracle(w[:-1]) for w in wells] + [None, None]
    b = forecasts(KERNEL_B, CONFIG, series)
    rows = {"ou": range(0, 3), "cir": range(3, 6), "well": range(6, 8), "walk": range(8, 10)}
    return {"series": series, "oracles": oracles, "B": b, "rows": rows}


def _mse(target: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.mean((target[WARMUP + 1:] - forecast[WARMUP:]) ** 2))


# -- the contract -----------------------------------------------------------------------------------
def test_registered_as_builtin_b():
    config = attrs.evolve(CONFIG, enabled_kernels=("A", "B", "D"))
    kernels = resolve_kernels(config, build_plugin_manager(entry_points=False))
    assert [k.name for k in kernels] == ["A", "B", "D"] and kernels[1].update is kernel_b.update
    assert kernels[1].source == "builtin" and kernels[1].fit is kernel_b.fit
    assert kernels[1].diagnostics[0] == "dgm_entropy"


def test_passes_check_kernel():
    # a small network, trained by fit only: the periodic refresh (the same training) runs in the
    # predictor tests below, jitted, vmapped and stepped
    config = attrs.evolve(check_config(KERNEL_B), kernel_b_refit_steps=4, kernel_b_dgm_refresh_iterations=0,
                          kernel_b_dgm_fit_iterations=10, kernel_b_dgm_collocation=4, kernel_b_dgm_width=4,
                          kernel_b_dgm_depth=1)
    report = check_kernel(KERNEL_B, config)
    assert "no_recompilation" in report.passed and "fit_honoured" in report.passed and not report.notes


def test_state_stays_within_64_kb_per_asset():
    largest = attrs.evolve(CONFIG, kernel_b_dgm_width=16, kernel_b_dgm_depth=4)
    for config in (CONFIG, largest):
        shapes = jax.eval_shape(lambda k, c=config: KERNEL_B.init(c, k), jax.random.PRNGKey(0))
        size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(shapes))
        assert size <= 64 * 1024, size


# -- forecasts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["ou", "cir"])
def test_mean_reverting_paths_within_5_percent_of_the_oracle(paths, process):
    for row in paths["rows"][process]:
        x, oracle = paths["series"][row], paths["oracles"][row]
        best = _mse(x, oracle)
        assert _mse(x, x[:-1]) >= 1.15 * best  # the reversion matters: the last value is ≥ 15% worse
        assert _mse(x, paths["B"][row][:-1]) <= 1.05 * best, (process, row, _mse(x, paths["B"][row][:-1]) / best)


def test_double_well_beats_kernel_a_and_is_within_10_percent_of_the_oracle(paths):
    rows = list(paths["rows"]["well"])
    a = forecasts(KERNEL_A, CONFIG, paths["series"][rows])
    for i, row in enumerate(rows):
        x = paths["series"][row]
        best, mse_b, mse_a = _mse(x, paths["oracles"][row]), _mse(x, paths["B"][row][:-1]), _mse(x, a[i][:-1])
        assert mse_b < mse_a, (mse_b / best, mse_a / best)
        assert mse_b <= 1.10 * best, mse_b / best


def test_random_walk_within_5_percent_of_the_last_value(paths):
    for row in paths["rows"]["walk"]:
        x = paths["series"][row]
        assert _mse(x, paths["B"][row][:-1]) <= 1.05 * _mse(x, x[:-1])


# -- in the mixture ---------------------------------------------------------------------------------
#: The double well sampled at Δt = 1 reads as rough to the identification engine (H ≈ 0.4), and the
#: circuit breaker would put all the weight on D in both mixtures: it is told not to.
MIXED = attrs.evolve(CONFIG, enabled_kernels=("A", "B", "D"), kernel_b_refit_steps=4,
                     kernel_b_dgm_refresh_steps=256, kernel_b_dgm_refresh_iterations=64,
                     robustness_force_kernel_d=False)
SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def mixed() -> FunctionalPredictor:
    return FunctionalPredictor(MIXED, kernels=[KERNEL_A, KERNEL_B, KERNEL_D])


@pytest.fixture(scope="module")
def well_state(mixed, paths):
    """The mixture after streaming the first double-well path, and that path's scan outputs."""
    state, outputs = mixed._scan(mixed.init_state(), paths["series"][6])
    return state, np.asarray(outputs)


def result_from(predictor: FunctionalPredictor, output: np.ndarray):
    """The prediction (with telemetry) of one scanned output row."""
    return result_from_output(output, predictor.kernel_names, None, reports=predictor.kernel_reports)


def test_fused_abd_beats_ad_on_the_double_well(paths, well_state, mixed):
    series = paths["series"][6]
    without = FunctionalPredictor(attrs.evolve(MIXED, enabled_kernels=("A", "D")), kernels=[KERNEL_A, KERNEL_D])
    _, outputs = without._scan(without.init_state(), series)
    outputs_abd = well_state[1]
    assert _mse(series, outputs_abd[:-1, Out.PREDICTION]) < _mse(series, np.asarray(outputs)[:-1, Out.PREDICTION])
    # B's own forecast is in every tick's output (and beats A's there); its entropy is always finite
    n = len(mixed.kernel_names)
    means = outputs_abd[:-1, Out.SIZE + n:Out.SIZE + 2 * n]
    assert _mse(series, means[:, 1]) < _mse(series, means[:, 0])
    for row in outputs_abd:
        telemetry = result_from(mixed, row).telemetry
        assert np.isfinite(telemetry.kernel_predictions["B"]) and np.isfinite(telemetry.dgm_entropy)


def _tick(predictor, state, value, t):
    return predictor.step(state, ProcessState(float(value), (t + 1) * SECOND))


def _with_params(state, change):
    """The mixture state with B's network parameters changed by ``change``."""
    blocks = list(state.kernels)
    blocks[1] = attrs.evolve(blocks[1], params=change(blocks[1].params))
    return attrs.evolve(state, kernels=tuple(blocks))


def _retrain_tick(state) -> int:
    """Index of the next tick on which B's periodic refresh retrains the network."""
    steps = MIXED.kernel_b_dgm_refresh_steps
    return (steps - int(state.kernels[1].counters[Counter.TRAIN_PHASE])) % steps


def test_collapse_zeroes_b_until_retrained_and_nothing_compiles(mixed, well_state, paths, tmp_path):
    series = paths["series"][7]
    shape = kernel_b.dgm_shape(MIXED)
    output_layer = shape.size - (2 * shape.width + 2)  # its weights, then its two biases
    state = _with_params(well_state[0], lambda p: p.at[output_layer:].set(0.0).at[-2:].set(0.5))
    mixed.warm_up(state)
    compiled = mixed._step._cache_size()
    retrain = _retrain_tick(state)
    assert retrain > (kernel_b.COLLAPSE_CHECKS + 2) * MIXED.kernel_b_refit_steps
    checks, seen, store = 0, [], FileStore(tmp_path)
    for t in range(retrain + 1):
        checks += int(state.kernels[1].counters[Counter.REFIT_PHASE]) == 0
        state, result = _tick(mixed, state, series[t], t)
        seen.append((checks, result))
        if result.telemetry.mode_collapse_warning and store.load("collapsed") is None:  # the snapshot has both
            mixed.save_states(store, "collapsed", state)
            payload = decode_snapshot(store.load("collapsed"), expected_schema=MIXED.schema_version)
            assert payload["flags"]["mode_collapse"] is True
            assert payload["telemetry"]["dgm_entropy"] == result.telemetry.dgm_entropy
    first = next(i for i, (_, r) in enumerate(seen) if r.telemetry.mode_collapse_warning)
    assert seen[first][0] == kernel_b.COLLAPSE_CHECKS + 1  # raised on the 11th failed check
    raised = seen[first][1].telemetry
    assert any(isinstance(e, ModeCollapseEvent) for e in raised.events)
    assert raised.kernel_diagnostics["B"]["dgm_entropy"] < (MIXED.kernel_b_collapse_ratio
                                                            * raised.kernel_diagnostics["B"]["reference_entropy"])
    for _, r in seen[first:retrain]:  # B has no weight until the refresh retrains the network
        assert r.telemetry.mode_collapse_warning and "MODE_COLLAPSE" in r.telemetry.kernel_events["B"]
        assert r.telemetry.weights[1] < 1e-12 and abs(sum(r.telemetry.weights) - 1.0) < 1e-10
    assert not seen[retrain][1].telemetry.mode_collapse_warning
    for t in range(retrain + 1, retrain + 1 + (kernel_b.COLLAPSE_CHECKS + 1) * MIXED.kernel_b_refit_steps):
        state, result = _tick(mixed, state, series[t], t)  # the retrained network passes its checks
        assert not result.telemetry.mode_collapse_warning and result.telemetry.weights[1] > 0
    assert result.telemetry.kernel_diagnostics["B"]["collapse_checks"] == 0
    assert mixed._step._cache_size() == compiled


def test_exploding_gradients_halve_the_learning_rate_and_raise_the_event(mixed, well_state, paths):
    series = paths["series"][7]
    state = _with_params(well_state[0], lambda p: 1e3 * p)
    rate = float(state.kernels[1].scalars[Scalar.LEARNING_RATE])
    retrain = _retrain_tick(state)
    for t in range(retrain + 1):
        state, result = _tick(mixed, state, series[t], t)
        assert ("GRADIENT_INSTABILITY" in result.telemetry.kernel_events["B"]) == (t == retrain)
    assert any(isinstance(e, GradientInstabilityEvent) for e in result.telemetry.events)
    assert result.telemetry.kernel_diagnostics["B"]["dgm_learning_rate"] <= rate / 2


def test_fit_history_trains_the_network(mixed, paths):
    history = paths["series"][6]
    cold = mixed.init_state()
    state, _ = mixed.fit_history(cold, history)
    b = state.kernels[1]
    assert int(b.counters[Counter.TRAINED]) == 1 and np.isfinite(float(b.scalars[Scalar.LOSS]))
    assert float(b.scalars[Scalar.DGM_ERROR]) < 0.25
    entropy, reference = float(b.scalars[Scalar.DGM_ENTROPY]), float(b.scalars[Scalar.REFERENCE_ENTROPY])
    assert entropy >= MIXED.kernel_b_collapse_ratio * reference
    scanned, _ = mixed._scan(cold, history)
    assert not np.array_equal(np.asarray(b.params), np.asarray(scanned.kernels[1].params))
    # fit is a retrain: it clears a collapse (a constant network, its failed checks past the limit)
    shape = kernel_b.dgm_shape(MIXED)
    collapsed = _with_params(state, lambda p: p.at[shape.size - (2 * shape.width + 2):].set(0.0))
    blocks = list(collapsed.kernels)
    failed = blocks[1].counters.at[Counter.FAILED].set(kernel_b.COLLAPSE_CHECKS + 1)
    blocks[1] = attrs.evolve(blocks[1], counters=failed)
    collapsed = attrs.evolve(collapsed, kernels=tuple(blocks))
    _, result = _tick(mixed, collapsed, history[-1], len(history))
    assert result.telemetry.mode_collapse_warning
    retrained = mixed._fit_kernels(collapsed, jnp.asarray(history))
    assert int(retrained.kernels[1].counters[Counter.FAILED]) == 0
    _, result = _tick(mixed, retrained, history[-1], len(history))
    assert not result.telemetry.mode_collapse_warning and result.telemetry.weights[1] > 0
