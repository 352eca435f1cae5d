"""Prediction sinks of ``usp serve``: JSON lines, CSV, Redis streams, and RFC 3339 timestamps."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usp import USPError
from usp.adapters.csv_reader import TIMESTAMP_MAX_NS, TIMESTAMP_MIN_NS, parse_timestamp_ns
from usp.adapters.sinks import (
    CSV_HEADER,
    OUTPUT_FIELDS,
    BrokerError,
    CsvSink,
    JsonLinesSink,
    RedisStreamSink,
    SinkOpenError,
    format_timestamp,
    format_timestamps,
)
from usp.ports.prediction_sink import PredictionRecords, PredictionSink

from .services import free_port, redis_url

__all__ = ["redis_url"]  # the session's redis-server, through the fixture below


@pytest.fixture
def server(request) -> str:
    """URL of the real redis-server of this test session."""
    return request.getfixturevalue("redis_url")


T0 = 1_704_067_200 * 10**9


def _records(n=3, *, receipts=(), start=0):
    rows = range(start, start + n)
    return PredictionRecords(
        assets=tuple(f"A{i}" if i % 3 else f'x,"y" {i}' for i in rows),
        timestamps_ns=np.array([T0 + i * 500_000_000 + i for i in rows], dtype=np.int64),
        prediction=np.array([0.1 * i + 1 / 3 for i in rows]),
        lower=np.array([-math.inf if i == 1 else 1e-300 * i for i in rows]),
        upper=np.array([math.nan if i == 2 else 1e300 * i for i in rows]),
        modes=tuple("inference" if i % 2 else "calibration" for i in rows),
        events=tuple(() if i % 2 else ("regime_change", "stale_data") for i in rows),
        receipts=receipts)


# --- RFC 3339 timestamps ---------------------------------------------------------------------------


@given(st.integers(TIMESTAMP_MIN_NS, TIMESTAMP_MAX_NS))
def test_format_timestamp_round_trips_through_the_reader_for_every_int64_ns(ns):
    text = format_timestamp(ns)
    assert parse_timestamp_ns(text) == ns
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", text)  # digits only as needed


@given(st.lists(st.integers(TIMESTAMP_MIN_NS, TIMESTAMP_MAX_NS), max_size=20))
def test_the_vectorised_format_agrees_with_the_scalar_one(stamps):
    assert format_timestamps(np.array(stamps, dtype=np.int64)) == [format_timestamp(ns) for ns in stamps]


def test_format_timestamp_examples_and_limits():
    assert format_timestamp(T0) == "2024-01-01T00:00:00Z"
    assert format_timestamp(T0 + 500_000_000) == "2024-01-01T00:00:00.5Z"
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999999999Z"
    assert format_timestamp(np.int64(T0 + 1_000)) == "2024-01-01T00:00:00.000001Z"
    for bad in (-(2**63), 2**63, 10**30):
        with pytest.raises(ValueError, match="outside int64 nanoseconds"):
            format_timestamp(bad)
    with pytest.raises(TypeError):
        format_timestamp(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        format_timestamps(np.array([1.0]))


# --- JSON lines --------------------------------------------------------------------------------------


def test_json_lines_hold_the_seven_keys_with_exact_floats_and_null_for_non_finite(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    assert isinstance(sink, PredictionSink) and sink.name == str(path)
    records = _records(4)
    sink.write(records)
    sink.flush()
    lines = path.read_text(encoding="utf-8").splitlines()  # visible after flush, before close
    assert len(lines) == 4
    rows = [json.loads(line) for line in lines]
    assert all(list(row) == list(OUTPUT_FIELDS) for row in rows)
    for i, row in enumerate(rows):
        assert row["asset"] == records.assets[i]
        assert parse_timestamp_ns(row["timestamp"]) == records.timestamps_ns[i]
        assert row["prediction"] == records.prediction[i]  # repr: exact
        assert row["mode"] == records.modes[i] and row["events"] == list(records.events[i])
    assert rows[1]["lower"] is None and rows[2]["upper"] is None and rows[3]["upper"] == 3e300
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    sink.close()
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(records)


def test_a_json_lines_file_is_appended_and_a_cut_last_line_is_ended(tmp_path):
    path = tmp_path / "out.jsonl"
    first = JsonLinesSink(path)
    first.write(_records(2))
    first.close()
    with path.open("ab") as out:
        out.write(b'{"asset": "cut')  # a write interrupted by a crash
    second = JsonLinesSink(path)
    second.write(_records(2, start=2))
    second.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[2] == '{"asset": "cut'
    assert [json.loads(line)["asset"] for line in lines[3:]] == ["A2", 'x,"y" 3']


def test_a_json_lines_stream_is_written_and_flushed_but_never_closed():
    stream = io.BytesIO()
    sink = JsonLinesSink(stream)
    sink.write(_records(1))
    sink.write(_records(0))
    sink.close()
    assert not stream.closed
    assert json.loads(stream.getvalue())["timestamp"] == "2024-01-01T00:00:00Z"


def test_records_whose_columns_differ_in_length_are_refused(tmp_path):
    sink = JsonLinesSink(io.BytesIO())
    good = _records(2)
    bad = PredictionRecords(good.assets, good.timestamps_ns, good.prediction[:1], good.lower, good.upper,
                            good.modes, good.events)
    with pytest.raises(ValueError, match="different lengths"):
        sink.write(bad)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def prediction_records(draw) -> PredictionRecords:
    n = draw(st.integers(0, 8))
    floats = [np.array(draw(st.lists(_FLOATS, min_size=n, max_size=n)), dtype=np.float64) for _ in range(3)]
    return PredictionRecords(
        assets=tuple(draw(st.lists(_TEXT, min_size=n, max_size=n))),
        timestamps_ns=np.array(draw(st.lists(st.integers(TIMESTAMP_MIN_NS, TIMESTAMP_MAX_NS), min_size=n, max_size=n)),
                               dtype=np.int64),
        prediction=floats[0], lower=floats[1], upper=floats[2],
        modes=tuple(draw(st.lists(st.sampled_from(["inference", "calibration", "diagnostic"]), min_size=n,
                                  max_size=n))),
        events=tuple(tuple(e) for e in draw(st.lists(st.lists(st.sampled_from(["regime_change", "stale_data"]),
                                                                   max_size=2), min_size=n, max_size=n))))


def _same_float(read: float | None, written: float, *, null_for_non_finite: bool) -> bool:
    if not math.isfinite(written):
        return read is None if null_for_non_finite else (
            read == written or (math.isnan(read) and math.isnan(written)))
    return read == written and math.copysign(1, read) == math.copysign(1, written)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(prediction_records(), min_size=1, max_size=3))
def test_json_lines_and_csv_give_back_every_record_exactly(tmp_path, batches):
    for path in (tmp_path / "out.jsonl", tmp_path / "out.csv"):
        path.unlink(missing_ok=True)
        sink = JsonLinesSink(path) if path.suffix == ".jsonl" else CsvSink(path)
        for records in batches:
            sink.write(records)
        sink.close()
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as text:
        rows = list(csv.reader(text))[1:]
    written = [(records, i) for records in batches for i in range(len(records))]
    assert len(jsonl) == len(rows) == len(written)
    for obj, row, (records, i) in zip(jsonl, rows, written, strict=True):
        assert obj["asset"] == row[0] == records.assets[i]
        assert parse_timestamp_ns(obj["timestamp"]) == parse_timestamp_ns(row[1]) == records.timestamps_ns[i]
        for key, cell in zip(("prediction", "lower", "upper"), row[2:5], strict=True):
            value = float(getattr(records, key)[i])
            assert _same_float(obj[key], value, null_for_non_finite=True)
            assert _same_float(float(cell), value, null_for_non_finite=False)
        assert obj["mode"] == row[5] == records.modes[i]
        assert obj["events"] == list(records.events[i]) and row[6] == ";".join(records.events[i])


# --- CSV ---------------------------------------------------------------------------------------------


def test_csv_rows_round_trip_and_the_header_is_written_once(tmp_path):
    path = tmp_path / "out.csv"
    records = _records(3)
    for start in (0, 3):  # a restarted service appends to the same file
        sink = CsvSink(path)
        sink.write(_records(3, start=start))
        sink.close()
    with path.open(newline="", encoding="utf-8") as text:
        rows = list(csv.reader(text))
    assert rows[0] == CSV_HEADER.split(",") and len(rows) == 7
    assert CSV_HEADER.split(",") not in rows[1:]
    for i, row in enumerate(rows[1:4]):
        assert row[0] == records.assets[i] and parse_timestamp_ns(row[1]) == records.timestamps_ns[i]
        floats = [float(cell) for cell in row[2:5]]
        expected = [records.prediction[i], records.lower[i], records.upper[i]]
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(floats, expected, strict=True))
        assert row[5] == records.modes[i] and row[6] == ";".join(records.events[i])


def test_a_csv_file_with_other_content_is_refused(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("timestamp,value\n1,2\n")
    with pytest.raises(SinkOpenError, match=r"already holds other content"):
        CsvSink(path)
    assert path.read_text() == "timestamp,value\n1,2\n"


@pytest.mark.parametrize("kind", [CsvSink, JsonLinesSink])
def test_unusable_sink_paths_are_refused_at_open(tmp_path, kind):
    suffix = ".csv" if kind is CsvSink else ".jsonl"
    (tmp_path / f"dir{suffix}").mkdir()
    (tmp_path / "plain").write_text("")
    cases = {tmp_path / f"dir{suffix}": "is a directory",
             tmp_path / "missing" / f"out{suffix}": "its directory .* does not exist",
             tmp_path / "plain" / f"out{suffix}": "its directory .* is not a directory",
             f"/sys/usp-test{suffix}": "cannot be opened for writing"}
    for path, message in cases.items():
        with pytest.raises(SinkOpenError, match=message) as caught:
            kind(path)
        assert isinstance(caught.value, USPError) and isinstance(caught.value, OSError)


# --- Redis streams ------------------------------------------------------------------------------------


def test_a_redis_sink_adds_one_entry_per_record(server):
    client = redis.Redis.from_url(server, decode_responses=True)
    client.delete("predictions")
    sink = RedisStreamSink(server, "predictions")
    assert isinstance(sink, PredictionSink) and sink.name.endswith("?stream=predictions")
    records = _records(3, receipts=("1-0", "1-1", "2-0"))
    sink.write(records)
    sink.flush()
    sink.write(_records(1))
    entries = client.xrange("predictions")
    assert len(entries) == 4
    first = entries[0][1]
    assert set(first) == {*OUTPUT_FIELDS, "source_id"} and first["source_id"] == "1-0"
    assert first["asset"] == records.assets[0] and first["timestamp"] == "2024-01-01T00:00:00Z"
    assert float(first["prediction"]) == records.prediction[0] and json.loads(first["events"]) == list(
        records.events[0])
    assert entries[1][1]["lower"] == "-inf" and entries[2][1]["upper"] == "nan"
    assert "source_id" not in entries[3][1]
    sink.close()
    sink.close()
    client.delete("predictions")
    client.close()


def test_an_unreachable_redis_sink_is_a_broker_error():
    with pytest.raises(BrokerError, match=r"Redis redis://127\.0\.0\.1:\d+/0\?stream=out: connecting failed"):
        RedisStreamSink(f"redis://127.0.0.1:{free_port()}/0", "out")


def test_one_record_stays_one_line_whatever_its_asset_holds(tmp_path):
    odd = ("a\rb", "c\u2028d", "e\x85f", 'g"h,i')
    records = PredictionRecords(odd, np.zeros(4, dtype=np.int64), np.zeros(4), np.zeros(4), np.zeros(4),
                                ("inference",) * 4, ((),) * 4)
    jsonl, table = JsonLinesSink(tmp_path / "o.jsonl"), CsvSink(tmp_path / "o.csv")
    for sink in (jsonl, table):
        sink.write(records)
        sink.close()
    lines = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["asset"] for line in lines] == list(odd)
    with (tmp_path / "o.csv").open(newline="", encoding="utf-8") as text:
        assert [row[0] for row in csv.reader(text)][1:] == list(odd)
