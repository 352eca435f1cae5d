"""LoggingTelemetry: a few lines when something happens, none per tick in normal operation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from usp import EventCode
from usp.adapters.log_telemetry import LoggingTelemetry, name_some
from usp.application.telemetry_queue import TelemetryQueue
from usp.ports.telemetry import (
    DeviceMemoryTelemetry,
    MalformedTelemetry,
    ParityHashTelemetry,
    ShutdownTelemetry,
    SnapshotTelemetry,
    TelemetrySink,
)

from .test_prometheus import ASSETS, predictor_records

LOGGER = "usp.test.telemetry"


@pytest.fixture
def sink(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return LoggingTelemetry(logging.getLogger(LOGGER))


def _lines(caplog, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and (level is None or r.levelno == level)]


def test_it_satisfies_the_port():
    sink = LoggingTelemetry()
    assert isinstance(sink, TelemetrySink) and sink.name == "logging" and sink.logger.name == "usp.telemetry"


def test_predictor_batches_log_only_what_happened(sink, caplog):
    records = predictor_records()
    quiet = 0
    for record in records:
        before = len(caplog.records)
        sink.publish([record])
        written = caplog.records[before:]
        events = np.asarray(record.events)
        if not events.any() and len(written) == 0:
            quiet += 1
        assert len(written) <= 6  # a summary per kind of happening, never a line per tick
        rejected = int(np.count_nonzero(events & int(EventCode.rejected())))
        summaries = [r for r in written if "ticks rejected" in r.getMessage()]
        assert len(summaries) == (1 if rejected else 0)
        if rejected:
            assert summaries[0].levelno == logging.WARNING
            assert summaries[0].getMessage().startswith(f"{rejected} of {len(ASSETS)} ticks rejected")
    assert quiet > len(records) // 2  # most batches are silent
    warnings = _lines(caplog, logging.WARNING)
    assert any(line.startswith("1 assets entered emergency mode: 'noise'") for line in warnings)
    assert any(line.startswith("1 assets entered degraded inference mode: 'late'") for line in warnings)
    assert "2 of 4 ticks rejected" not in " ".join(warnings)  # one rejected tick per batch here
    assert sum("non_finite 1" in line for line in warnings) == 2
    assert sum("magnitude 1" in line for line in warnings) == 2
    assert sum("out_of_order 1" in line for line in warnings) == 2
    regimes = sum(int(np.count_nonzero(np.asarray(r.events) & int(EventCode.REGIME_CHANGED))) for r in records)
    logged = sum(int(line.split()[0]) for line in _lines(caplog, logging.INFO) if "regime changes" in line)
    assert regimes > 0 and logged == regimes


def test_leaving_a_mode_is_logged_at_info(sink, caplog):
    last = predictor_records()[-1]
    sink.publish([last])
    cleared = type(last)(last.assets, last.timestamps_ns, last.modes, np.zeros_like(last.events), last.weights,
                         last.kernel_names, np.zeros_like(last.emergency), np.zeros_like(last.degraded), 0.001)
    caplog.clear()
    sink.publish([cleared, cleared])
    assert _lines(caplog) == ["1 assets left emergency mode: 'noise'", "1 assets left degraded inference mode: 'late'"]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_device_memory_is_logged_when_its_level_changes(sink, caplog):
    total = 1000
    for used in (500, 860, 900, 960, 970, 400, 400):
        sink.publish([DeviceMemoryTelemetry("gpu:0", used, total)])
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in levels] == [logging.WARNING, logging.ERROR, logging.INFO]
    assert "86.0%" in levels[0][1] and "96.0%" in levels[1][1] and "40.0%" in levels[2][1]
    sink.publish([DeviceMemoryTelemetry("gpu:1", 990, total)])  # devices are tracked apart
    assert caplog.records[-1].levelno == logging.ERROR and "gpu:1" in caplog.records[-1].getMessage()


def test_service_events(sink, caplog):
    sink.publish([
        MalformedTelemetry(0), MalformedTelemetry(3),
        SnapshotTelemetry(assets=5, seconds=0.1, ok=True),
        SnapshotTelemetry(assets=5, seconds=0.2, ok=False, error="No space left on device"),
        ParityHashTelemetry(step=1000, digest="ab" * 32),
        ShutdownTelemetry(graceful=True, seconds=1.25, residual_observations=0),
        ShutdownTelemetry(graceful=False, seconds=26.0, residual_observations=12),
    ])
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (logging.WARNING, "3 unreadable source records skipped"),
        (logging.DEBUG, "snapshot of 5 assets written in 0.100 s"),
        (logging.ERROR, "snapshot of 5 assets failed after 0.200 s: No space left on device"),
        (logging.DEBUG, f"parity hash at step 1000: {'ab' * 32}"),
        (logging.INFO, "graceful shutdown completed in 1.25 s"),
        (logging.WARNING, "shutdown was not graceful: 26.00 s, 12 observations not applied"),
    ]


def test_an_unknown_record_is_a_type_error():
    with pytest.raises(TypeError, match="not a telemetry record: int"):
        LoggingTelemetry().publish([3])  # type: ignore[list-item]


def test_it_runs_behind_the_queue(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    queue = TelemetryQueue([LoggingTelemetry(logging.getLogger(LOGGER))], maxlen=1000)
    for record in predictor_records():
        queue.offer(record)
    queue.offer(ShutdownTelemetry(graceful=True, seconds=0.5, residual_observations=0))
    assert queue.close(10.0)
    assert queue.delivered() == {"logging": len(predictor_records()) + 1}
    assert _lines(caplog)[-1] == "graceful shutdown completed in 0.50 s"


def test_name_some_limits_the_ids_named():
    assert name_some(["a", "b"]) == "'a', 'b'"
    assert name_some([str(i) for i in range(13)], limit=3) == "'0', '1', '2' and 10 more"
