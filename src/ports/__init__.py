"""Ports: typing.Protocol interfaces the application depends on (clock, state storage,
ingestion, prediction output, telemetry)."""

from .clock import Clock
from .ingestion import MalformedObservationEvent, ObservationBatch, ObservationSource
from .prediction_sink import PredictionRecords, PredictionSink
from .telemetry import TelemetryRecord, TelemetrySink

__all__ = ["Clock", "MalformedObservationEvent", "ObservationBatch", "ObservationSource", "PredictionRecords",
           "PredictionSink", "TelemetryRecord", "TelemetrySink"]
