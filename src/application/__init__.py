"""Use cases wiring the domain core and the ports: the predictors, with explicit dependencies.

``FunctionalPredictor(config, clock=, kernels=, device=)`` and ``UniversalPredictor(functional,
stores)`` take every adapter and the resolved kernels as arguments, and so does ``Service``
(the loop of ``usp serve``: a source, sinks, a store and telemetry); ``usp.FunctionalPredictor``
and ``usp.UniversalPredictor`` (``usp.composition``) build them from a config.
"""

from .functional import FunctionalPredictor
from .results import BatchPrediction, result_from_output
from .service import ServeSummary, Service
from .snapshot_session import SnapshotStores
from .types import (
    EVENT_TYPES,
    ColumnarBatch,
    Event,
    OperatingMode,
    PredictionResult,
    ProcessState,
    Telemetry,
    decode_events,
)
from .universal import UniversalPredictor

__all__ = [
    "EVENT_TYPES", "BatchPrediction", "ColumnarBatch", "Event", "FunctionalPredictor", "OperatingMode",
    "PredictionResult", "ProcessState", "ServeSummary", "Service", "SnapshotStores", "Telemetry",
    "UniversalPredictor", "decode_events", "result_from_output",
]
