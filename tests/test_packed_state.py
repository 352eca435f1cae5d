"""The packed state (``domain._pytree.Packing``, ``FunctionalPredictor.step_packed``): one buffer
per dtype at the compiled boundary instead of one array per leaf, exactly the same numbers.

``UniversalPredictor`` keeps its state packed between ticks, so these tests also pin down that
its ticks, its ``state`` and its setter behave as with the unpacked state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from usp import FunctionalPredictor, PredictorConfig, ProcessState, UniversalPredictor
from usp.adapters.clocks import ReplayClock
from usp.domain._pytree import packing

from .helpers import random_walk

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                        kernel_a_order=4)
MS = 1_000_000
T0 = 1_800_000_000_000_000_000

dtypes = st.sampled_from([np.float64, np.int32, np.int64, np.bool_, np.uint32])
leaf = dtypes.flatmap(lambda dtype: arrays(dtype, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
trees = st.recursive(leaf, lambda children: st.one_of(st.lists(children, min_size=1, max_size=4).map(tuple),
                                                      st.dictionaries(st.sampled_from("abcde"), children,
                                                                      min_size=1)), max_leaves=12)


def _same(a, b) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).shape == np.asarray(y).shape
        and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(leaves_a, leaves_b, strict=True))


@settings(deadline=None, max_examples=60)
@given(trees)
def test_unpack_inverts_pack_bit_for_bit_with_one_buffer_per_dtype(tree):
    layout = packing(tree)
    buffers = layout.pack(tree)
    assert len(buffers) == len({np.asarray(x).dtype for x in jax.tree_util.tree_leaves(tree)})
    assert _same(layout.unpack(buffers), tree)


def test_extended_dtype_leaves_travel_on_their_own():
    tree = {"key": jax.random.key(3), "x": jnp.arange(3.0), "n": jnp.int32(4), "y": jnp.ones((2, 2))}
    layout = packing(tree)
    buffers = jax.jit(layout.pack)(tree)
    assert len(buffers) == 3  # float64, int32, then the key
    back = jax.jit(layout.unpack)(buffers)
    assert np.array_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))
    assert _same({k: v for k, v in back.items() if k != "key"}, {k: v for k, v in tree.items() if k != "key"})


def test_pack_names_what_differs_from_the_layout():
    layout = packing({"a": jnp.zeros(3), "b": jnp.int32(0)})
    with pytest.raises(TypeError, match="structure"):
        layout.pack({"a": jnp.zeros(3)})
    with pytest.raises(TypeError, match=r"float64\[4\]"):
        layout.pack({"a": jnp.zeros(4), "b": jnp.int32(0)})
    with pytest.raises(TypeError, match="int64"):
        layout.pack({"a": jnp.zeros(3), "b": jnp.int64(0)})


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(SMALL, clock=ReplayClock())


def _observations(length: int = 260):
    """A random walk with a NaN, a 10⁴σ spike and an out-of-order timestamp; refresh ticks every
    8 accepted ticks once the 64-tick buffer is full."""
    values = random_walk(length, 5)
    values[90] = np.nan
    values[150] += 1e4
    stamps = T0 + np.arange(length) * MS
    stamps[200] = stamps[198]
    return [ProcessState(float(v), int(t)) for v, t in zip(values, stamps, strict=True)]


def test_the_packed_step_gives_the_unpacked_steps_outputs_and_state_bit_for_bit(functional):
    state = functional.init_state()
    packed = functional.pack_state(state)
    refreshes = 0
    for obs in _observations():
        refreshes += packed.refresh_due
        assert packed.refresh_due == functional.refresh_due(state)
        state, output, _ = functional.step_raw(state, obs)
        packed, packed_output, _ = functional.step_packed(packed, obs)
        assert np.array_equal(output, packed_output, equal_nan=True)
    assert refreshes >= 20
    assert _same(functional.unpack_state(packed), state)


def test_pack_state_refuses_a_state_of_other_kernels(functional):
    other = FunctionalPredictor(PredictorConfig(**{**_small_fields(), "enabled_kernels": ("A", "D")}),
                                clock=ReplayClock())
    with pytest.raises(TypeError, match="structure"):
        functional.pack_state(other.init_state())
    with pytest.raises(TypeError):
        functional.pack_state(functional.init_state(3))


def _small_fields() -> dict:
    return {"window_size": 64, "wtmm_buffer_size": 64, "wtmm_refresh_steps": 8, "kurtosis_window": 32,
            "kernel_a_order": 4}


def test_the_stateful_predictor_ticks_as_the_functional_one_and_shows_its_state(functional):
    predictor = UniversalPredictor(SMALL, clock=ReplayClock())
    state = functional.init_state()
    for i, obs in enumerate(_observations()):
        if np.isfinite(obs.magnitude):  # NaN: a rejected tick, returned not raised
            output, _ = predictor.step_raw(obs)
            state, expected, _ = functional.step_raw(state, obs)
            assert np.array_equal(output, expected, equal_nan=True)
        if i % 50 == 0:
            seen = predictor.state
            assert _same(seen, state)
            assert predictor.state is seen  # unpacked once per state, not per read
    assert _same(predictor.state, state)


def test_the_state_setter_refuses_a_foreign_state_and_keeps_its_own():
    predictor = UniversalPredictor(SMALL, clock=ReplayClock())
    for i, value in enumerate(random_walk(80, 2)):
        predictor.step(ProcessState(float(value), T0 + i * MS))
    before = predictor.state
    with pytest.raises(TypeError):
        predictor.state = {"not": jnp.zeros(2)}
    assert predictor.state is before
    restored = jax.tree_util.tree_map(jnp.array, before)
    predictor.state = restored
    assert predictor.state is restored
    result = predictor.step(ProcessState(1.0, T0 + 80 * MS))
    assert np.isfinite(result.reference_prediction)
