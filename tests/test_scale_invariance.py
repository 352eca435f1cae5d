"""Every floor is relative to the series' own scale: a series scaled by 1e-15 (or 1e-60) gets the
same forecasts and intervals, scaled by the same factor, and the same coverage.

Before the fix, kernel D floored its scale at an absolute 1e-12: on this series at 1e-15 the
interval was 90× too wide on average (up to 448× on single ticks) and covered 97% instead of 95%.
"""

from __future__ import annotations

import numpy as np
from usp import ColumnarBatch, FunctionalPredictor, PredictorConfig
from usp.adapters.clocks import ReplayClock

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                        kernel_a_order=4, enabled_kernels=("A", "D"))
T0 = 1_800_000_000_000_000_000
MS = 1_000_000
SCALES = np.array([1.0, 1e-15, 1e-60])  # one asset each, side by side in one batch
BURN_IN = 200
#: In exact arithmetic the core is scale-equivariant, so the only differences are rounding
#: (1e-15 is not a power of two): measured ≤ 4e-15 relative per tick. 1e-9 leaves six orders of
#: magnitude for other platforms' rounding, while any floor that binds shows up as a factor.
RTOL = 1e-9


def test_a_series_scaled_by_1e_minus_15_gets_the_same_relative_intervals_and_coverage():
    series = 50.0 + np.cumsum(np.random.default_rng(7).standard_t(4, 1500))  # heavy tails, level ≈ 50
    predictor = FunctionalPredictor(SMALL, clock=ReplayClock())
    states = predictor.init_state(len(SCALES))
    rows = []
    for i, value in enumerate(series):
        states, batch = predictor.step_batch(states, ColumnarBatch(value * SCALES, np.full(len(SCALES), T0 + i * MS)))
        rows.append(np.stack([batch.reference_prediction, batch.confidence_lower, batch.confidence_upper])
                    / SCALES)  # back to the unit scale: [3 (prediction, lower, upper), assets]
    forecasts = np.asarray(rows)[BURN_IN:]  # [T, 3, assets]
    width = forecasts[:, 2] - forecasts[:, 1]
    target = series[BURN_IN + 1:, None]
    covered = ((target >= forecasts[:-1, 1]) & (target <= forecasts[:-1, 2])).mean(axis=0)
    assert abs(covered[0] - SMALL.confidence_level) < 0.02  # calibrated at scale 1
    np.testing.assert_allclose(width, np.broadcast_to(width[:, :1], width.shape), rtol=RTOL)
    np.testing.assert_allclose(forecasts[:, 0], np.broadcast_to(forecasts[:, 0, :1], width.shape), rtol=RTOL)
    np.testing.assert_array_equal(covered, covered[0])
