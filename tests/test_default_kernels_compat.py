"""Snapshots written when the default kernels were A and D keep loading (docs/persistence.md).

``tests/data/snapshot_default_kernels_a_d.snap`` was written by ``UniversalPredictor(PredictorConfig())``
when ``enabled_kernels`` defaulted to ("A", "D"), after 400 ticks of a random walk (seed 13, steps
of 0.5 from 100, 10 ms apart from T0). Restored into a predictor that names those kernels, it gives
the prediction the writer gave on the next tick.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from usp import PredictorConfig, ProcessState, ReplayClock, UniversalPredictor
from usp.adapters.stores import FileStore

SNAPSHOT = Path(__file__).parent / "data" / "snapshot_default_kernels_a_d.snap"
T0, DT = 1_700_000_000_000_000_000, 10_000_000
#: What the writer returned for the next tick (value 101.97005656729435 at T0 + 400·DT).
NEXT_VALUE = 101.97005656729435
EXPECTED = (102.01486202489055, 100.94291744009283, 103.08571196587813)  # prediction, lower, upper


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    (tmp_path / "old").mkdir()
    shutil.copy(SNAPSHOT, tmp_path / "old" / "000000000001.snap")
    return FileStore(tmp_path)


def test_the_old_default_snapshot_loads_into_a_predictor_naming_its_kernels(store):
    predictor = UniversalPredictor(PredictorConfig(enabled_kernels=("A", "D")), ReplayClock())
    assert predictor.load_snapshot("old", store=store)
    result = predictor.step(ProcessState(NEXT_VALUE, T0 + 400 * DT))
    got = (result.reference_prediction, result.confidence_lower, result.confidence_upper)
    assert got == pytest.approx(EXPECTED, rel=1e-12, abs=1e-12)


def test_the_new_default_refuses_it_with_a_message_naming_the_kernels(store):
    assert PredictorConfig().enabled_kernels != ("A", "D")
    predictor = UniversalPredictor(PredictorConfig(), ReplayClock())
    with pytest.raises(ValueError, match="enabled_kernels"):
        predictor.load_snapshot("old", store=store)
