"""A row's numbers do not depend on the batch it is stepped in: ``FunctionalPredictor.step_batch``
gives each asset bitwise the same outputs and new state whatever the batch width and wherever
the asset sits in the batch (``batching.chunked_vmap`` runs every batch as chunks of one fixed
width). The service pads rounds to power-of-two buckets, so without this a restarted service
could drift by an ulp from an uninterrupted one.

States are warm (past the roughness buffer), with their refresh ticks spread over every phase
(rejected NaN ticks stagger them), so that the gathered roughness reads run too.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import usp
from hypothesis import given, settings
from hypothesis import strategies as st
from usp import ColumnarBatch, PredictorConfig
from usp.adapters.clocks import ReplayClock

CONFIG = PredictorConfig(window_size=32, wtmm_buffer_size=32, wtmm_refresh_steps=8, kurtosis_window=16,
                         kernel_a_order=4, enabled_kernels=("A", "D"))
T0, DT = 1_800_000_000_000_000_000, 10_000_000
ROWS, WARM = 100, 48
WIDTHS = (1, 3, 16, 64, 100)


@pytest.fixture(scope="module")
def warm():
    """(predictor, batched state of ROWS assets after WARM ticks, the next tick's time index)."""
    functional = usp.FunctionalPredictor(CONFIG, clock=ReplayClock())
    rng = np.random.default_rng(11)
    scales = 10.0 ** rng.uniform(-2, 3, ROWS)
    walks = (np.cumsum(rng.standard_normal((WARM, ROWS)), axis=0) + 100.0) * scales
    walks[rng.random(walks.shape) < 0.1] = np.nan  # rejected ticks: refresh phases spread out
    states = functional.init_state(ROWS)
    for k in range(WARM):
        states, _ = functional.step_batch(states, ColumnarBatch(walks[k], np.full(ROWS, T0 + k * DT, np.int64)))
    due = functional.refresh_due(states)
    assert 0 < np.count_nonzero(due) < ROWS // 2  # some refresh on the next tick (gathered reads)
    return functional, jax.tree_util.tree_map(np.asarray, jax.device_get(states)), walks[-1]


def _rows(tree, rows):
    return jax.tree_util.tree_map(lambda leaf: leaf[rows], tree)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True)
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


@settings(max_examples=8)
@given(st.integers(0, 2**32 - 1))
def test_a_rows_outputs_and_new_state_are_bitwise_the_same_at_every_batch_width(warm, seed):
    functional, states, last = warm
    rng = np.random.default_rng(seed)
    order = rng.permutation(ROWS)  # which assets, and where each sits in its batch
    values = last * (1.0 + rng.normal(0.0, 0.02, ROWS))
    values[rng.random(ROWS) < 0.05] = np.nan
    stamps = np.full(ROWS, T0 + WARM * DT, np.int64) - (rng.random(ROWS) < 0.05) * 5 * DT  # some out of order
    results = {}
    for width in WIDTHS:
        rows = order[:width]
        new, prediction = functional.step_batch(_rows(states, rows), ColumnarBatch(values[rows], stamps[rows]))
        results[width] = (jax.tree_util.tree_map(np.asarray, jax.device_get(new)), prediction.outputs)
    widest_state, widest_out = results[WIDTHS[-1]]
    for width in WIDTHS[:-1]:
        new, outputs = results[width]
        assert np.array_equal(outputs, widest_out[:width], equal_nan=True), width
        assert _same(new, _rows(widest_state, np.arange(width))), width
