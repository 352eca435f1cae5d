"""The kernel ``fit`` contract, as the predictors honour it: ``fit_history`` streams the history
through the core's scan (every ``update`` sees each tick), then calls each kernel's ``fit`` once
with the whole history (per asset, with its own row, for a batched state) and keeps its state."""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from usp import FunctionalPredictor, PredictorConfig, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.kernel import KernelForecast, KernelSpec, Window, pytree

CONFIG = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                         enabled_kernels=("F",))
T = 80


@pytree
class RecorderState:
    """What the contract promises, recorded: ticks updated, fit calls, updates seen by fit."""

    last: jax.Array
    updates: jax.Array
    fits: jax.Array
    updates_at_fit: jax.Array
    history_mean: jax.Array


def init(config, key) -> RecorderState:
    del config, key
    return RecorderState(jnp.float64(0.0), jnp.int32(0), jnp.int32(0), jnp.int32(-1), jnp.float64(0.0))


def update(state: RecorderState, window: Window, config) -> RecorderState:
    del config
    return attrs.evolve(state, last=window.values[-1], updates=state.updates + 1)


def predict(state: RecorderState, window: Window, config) -> KernelForecast:
    del config
    return KernelForecast(mean=window.values[-1], scale=jnp.float64(1.0))


def fit(state: RecorderState, history: jax.Array, config) -> RecorderState:
    del config
    return attrs.evolve(state, fits=state.fits + 1, updates_at_fit=state.updates, history_mean=jnp.mean(history))


RECORDER = KernelSpec(name="F", init=init, update=update, predict=predict, fit=fit)


def _histories(rows: int) -> np.ndarray:
    steps = np.random.default_rng(7).standard_normal((rows, T))
    return np.cumsum(steps, axis=1) + 10.0 * np.arange(rows)[:, None]  # one mean per row


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(CONFIG, clock=ReplayClock(), kernels=(RECORDER,))


def test_fit_runs_once_after_the_scan_on_the_whole_history(functional):
    history = _histories(1)[0]
    state, _ = functional.fit_history(functional.init_state(), history)
    recorded = state.kernels[0]
    assert int(recorded.fits) == 1
    assert int(recorded.updates) == T and int(recorded.updates_at_fit) == T  # every update came before fit
    assert float(recorded.history_mean) == pytest.approx(history.mean(), rel=1e-12)
    assert float(recorded.last) == history[-1]


def test_fit_runs_per_asset_with_its_own_row_for_a_batched_state(functional):
    histories = _histories(3)
    states, _ = functional.fit_history(functional.init_state(3), histories)
    recorded = states.kernels[0]
    np.testing.assert_array_equal(np.asarray(recorded.fits), [1, 1, 1])
    np.testing.assert_array_equal(np.asarray(recorded.updates_at_fit), [T, T, T])
    np.testing.assert_allclose(np.asarray(recorded.history_mean), histories.mean(axis=1), rtol=1e-12)


def test_the_rest_of_the_state_is_the_scans(functional):
    history = _histories(1)[0]
    fitted, last = functional.fit_history(functional.init_state(), history)
    scanned, outputs = functional._scan(functional.init_state(), history)
    np.testing.assert_array_equal(last, np.asarray(outputs[-1]))
    expected = attrs.evolve(scanned, kernels=(fit(scanned.kernels[0], jnp.asarray(history), CONFIG),))
    for a, b in zip(jax.tree_util.tree_leaves(fitted), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_universal_predictor_fits_once_per_fit_history_call():
    predictor = UniversalPredictor(CONFIG, ReplayClock(), kernels=(RECORDER,))
    history = _histories(1)[0]
    predictor.fit_history(history)
    assert int(predictor.state.kernels[0].fits) == 1
    predictor.fit_history(history)
    assert int(predictor.state.kernels[0].fits) == 2 and int(predictor.state.kernels[0].updates_at_fit) == 2 * T


def test_a_fit_that_changes_the_state_layout_is_refused_naming_the_kernel():
    def widen(state, history, config):
        return attrs.evolve(state, history_mean=jnp.zeros(2))

    def narrow(state, history, config):
        return attrs.evolve(state, updates=state.updates.astype(jnp.int16))

    for bad in (widen, narrow):
        predictor = FunctionalPredictor(CONFIG, clock=ReplayClock(), kernels=(attrs.evolve(RECORDER, fit=bad),))
        with pytest.raises(TypeError, match=r"kernel 'F': fit changed leaf .* fit must keep shapes and dtypes"):
            predictor.fit_history(predictor.init_state(), _histories(1)[0])

    def restructure(state, history, config):
        return (state, history)

    predictor = FunctionalPredictor(CONFIG, clock=ReplayClock(), kernels=(attrs.evolve(RECORDER, fit=restructure),))
    with pytest.raises(TypeError, match="kernel 'F': fit returned a state of another structure"):
        predictor.fit_history(predictor.init_state(), _histories(1)[0])
