"""Use cases wiring the domain core and the ports: the predictors."""

from .predictors import BatchPrediction, FunctionalPredictor, UniversalPredictor, result_from_output
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

__all__ = [
    "EVENT_TYPES", "BatchPrediction", "ColumnarBatch", "Event", "FunctionalPredictor", "OperatingMode",
    "PredictionResult", "ProcessState", "Telemetry", "UniversalPredictor", "decode_events",
    "result_from_output",
]
