"""Observation sources of ``usp serve``: files (replayed and followed), stdin, Redis streams."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import time

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usp import DomainError
from usp.adapters import sources
from usp.adapters.csv_reader import TIMESTAMP_MAX_NS, TIMESTAMP_MIN_NS
from usp.adapters.sinks import RedisStreamSink, format_timestamp
from usp.adapters.sources import BrokerError, EndpointError, FileSource, RedisStreamSource, StdinSource
from usp.ports.ingestion import MalformedObservationEvent, ObservationSource
from usp.ports.prediction_sink import PredictionRecords

from .services import free_port, redis_server, redis_url

__all__ = ["redis_url"]  # the session's redis-server, through the fixture below


@pytest.fixture
def server(request) -> str:
    """URL of the real redis-server of this test session."""
    return request.getfixturevalue("redis_url")


T0 = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z


def _drain(source, max_rows=3, timeout_s=0.0):
    """Every tick of a non-following source, read ``max_rows`` at a time, as (asset, ns, value)."""
    out = []
    while (batch := source.read(max_rows, timeout_s)) is not None:
        assert len(batch) <= max_rows
        out += zip(batch.assets, batch.timestamps_ns.tolist(), batch.values.tolist(), strict=True)
    return out


def _events():
    events: list[MalformedObservationEvent] = []
    return events, events.append


# --- files: replay ---------------------------------------------------------------------------------


def test_a_csv_replay_reads_every_row_in_order_then_ends(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_bytes(b"\xef\xbb\xbfasset,timestamp,value\r\n"
                     b"BTC,2024-01-01T00:00:00Z,101.5\r\n"
                     b"\r\n"
                     b' EUR/USD ,2024-01-01T01:00:00.000000001+01:00, 1.25 \n'
                     b'"a,b",1704067200000000002,nan\n'
                     b"BTC,1704067200000000003,-inf")  # a last line without its newline is read at the end
    events, on_event = _events()
    source = FileSource(path, on_event=on_event)
    assert isinstance(source, ObservationSource) and source.live is False and source.name == str(path)
    ticks = _drain(source, max_rows=2)
    assert [(a, t) for a, t, _ in ticks] == [("BTC", T0), ("EUR/USD", T0 + 1), ("a,b", T0 + 2), ("BTC", T0 + 3)]
    values = [v for *_, v in ticks]
    assert values[:2] == [101.5, 1.25] and math.isnan(values[2]) and values[3] == -math.inf
    assert events == []
    assert source.read(10, 0.0) is None  # still ended
    source.close()
    source.close()
    assert source.read(10, 0.0) is None


def test_batches_are_numpy_columns_of_the_port_types(tmp_path):
    path = tmp_path / "ticks.jsonl"
    path.write_text("".join(json.dumps({"asset": f"A{i % 3}", "timestamp": T0 + i, "value": i / 2}) + "\n"
                            for i in range(10)))
    batch = FileSource(path).read(100, 0.0)
    assert batch is not None and len(batch) == 10 and batch.receipts == ()
    assert batch.timestamps_ns.dtype == np.int64 and batch.values.dtype == np.float64
    np.testing.assert_array_equal(batch.timestamps_ns, T0 + np.arange(10))
    np.testing.assert_array_equal(batch.values, np.arange(10) / 2)


def test_a_jsonl_replay_takes_strings_and_numbers(tmp_path):
    path = tmp_path / "ticks.jsonl"
    lines = [{"asset": "X", "timestamp": "2024-01-01T00:00:00Z", "value": 1},
             {"asset": "Y", "timestamp": T0 + 1, "value": "2.5", "note": "other keys are ignored"},
             {"asset": "Z", "timestamp": str(T0 + 2), "value": float("nan")}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    ticks = _drain(FileSource(path))
    assert [(a, t) for a, t, _ in ticks] == [("X", T0), ("Y", T0 + 1), ("Z", T0 + 2)]
    assert ticks[0][2] == 1.0 and ticks[1][2] == 2.5 and math.isnan(ticks[2][2])


CSV_BAD = [
    ("C,2024-01-01T00:00:00,1.0", "no timezone"),
    ("C,2024-01-01T00:00:00Z,abc", "value 'abc' is not a number"),
    ("C,1.0", "2 field(s), expected 3"),
    ("C,1,2,3", "4 field(s), expected 3"),
    (",1,2", "empty asset id"),
    ("A" * 201 + ",1,2", "asset id of 201 characters (at most 200)"),
    ("A\x07B,1,2", "holds control characters"),
    ('"open,1,2', "not readable as CSV"),
    ("C,yesterday,2", "cannot parse timestamp 'yesterday'"),
    ("C,99999999999999999999,2", "outside int64 nanoseconds"),
    ("C," + "9" * 300 + ",2", "cannot be read exactly within int64 nanoseconds"),
    ("C,2024-01-01T00:00:00.0000000001Z,2", "has 10 digits after the seconds"),
    ("C,1,\x002", "holds NUL bytes"),
]


@pytest.mark.parametrize(("line", "reason"), CSV_BAD)
def test_a_malformed_csv_line_is_reported_with_file_and_line_and_skipped(tmp_path, line, reason):
    path = tmp_path / "ticks.csv"
    path.write_text(f"asset,timestamp,value\nA,1,1.0\n{line}\nB,2,2.0\n")
    events, on_event = _events()
    assert _drain(FileSource(path, on_event=on_event)) == [("A", 1, 1.0), ("B", 2, 2.0)]
    assert len(events) == 1
    assert events[0].source == str(path) and events[0].location == f"{path}:3"
    assert reason in events[0].reason
    assert len(events[0].reason) < 300  # never the whole input


@pytest.mark.parametrize(("line", "reason"), [
    ("[1, 2, 3]", "not a JSON object but a list"),
    ('{"asset": "A", "timestamp": 1}', "without 'value'"),
    ('{"asset": "A", "timestamp": 1, "value": true}', "value must be a number, got bool"),
    ('{"asset": "A", "timestamp": 1, "value": null}', "value must be a number, got NoneType"),
    ('{"asset": "A", "timestamp": 1.5, "value": 1}', "timestamp must be a string or integer"),
    ('{"asset": "A", "timestamp": 99999999999999999999, "value": 1}', "outside int64 nanoseconds"),
    ('{"asset": "A", "timestamp": "2024-01-01T00:00:00", "value": 1}', "no timezone"),
    ('{"asset": 7, "timestamp": 1, "value": 1}', "asset must be a string"),
    ('{"asset": "A", "timestamp": 1, "value": "abc"}', "value 'abc' is not a number"),
    ('{"asset": "A", "timestamp": 1, "value": ' + "9" * 400 + "}", "does not fit a float64"),
    ('{"asset": "A", "timestamp": 1, "value": 1', "not a JSON object"),
    ("A,1,1.0", "not a JSON object"),
])
def test_a_malformed_json_line_is_reported_and_skipped(tmp_path, line, reason):
    path = tmp_path / "ticks.jsonl"
    path.write_text('{"asset": "A", "timestamp": 1, "value": 1.0}\n' + line + '\n{"asset": "B", "timestamp": 2, '
                    '"value": 2.0}\n')
    events, on_event = _events()
    assert _drain(FileSource(path, on_event=on_event)) == [("A", 1, 1.0), ("B", 2, 2.0)]
    assert [e.location for e in events] == [f"{path}:2"] and reason in events[0].reason


def test_lines_that_are_not_utf8_or_too_long_are_reported_and_the_rest_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 64)
    path = tmp_path / "ticks.csv"
    path.write_bytes(b"A,1,1.0\nB,2,2.5 \xb0C\n" + b"C," + b"7" * 500 + b",3\nD,4,4.0\n")
    events, on_event = _events()
    assert _drain(FileSource(path, on_event=on_event)) == [("A", 1, 1.0), ("D", 4, 4.0)]
    assert [e.location for e in events] == [f"{path}:2", f"{path}:3"]
    assert "not UTF-8 text (byte 0xB0 at column 9)" in events[0].reason
    assert "line longer than 64 bytes" in events[1].reason


def test_only_the_first_nonblank_line_may_be_a_header(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text("\n\nasset,timestamp,value\nA,1,1.0\nasset,timestamp,value\n")
    events, on_event = _events()
    assert _drain(FileSource(path, on_event=on_event)) == [("A", 1, 1.0)]
    assert [e.location for e in events] == [f"{path}:5"]
    path.write_text("A,2024-01-01T00:00:00Z,price\nB,1,2.0\n")  # a real timestamp: a bad tick, not a header
    events.clear()
    assert _drain(FileSource(path, on_event=on_event)) == [("B", 1, 2.0)]
    assert [e.location for e in events] == [f"{path}:1"] and "value 'price' is not a number" in events[0].reason


def test_what_cannot_be_opened_raises_at_open(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(IsADirectoryError):
        FileSource(tmp_path / "dir.csv")
    utf16 = tmp_path / "wide.csv"
    utf16.write_bytes("A,1,1.0\n".encode("utf-16"))
    with pytest.raises(DomainError, match=r"wide\.csv: UTF-16 text"):
        FileSource(utf16)
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(EndpointError, match="is a pipe or a device"):
        FileSource(tmp_path / "pipe.csv")
    other = tmp_path / "ticks.txt"
    other.write_text("A,1,1.0\n")
    with pytest.raises(EndpointError, match=r"a file source is a \.csv or \.jsonl file"):
        FileSource(other)
    source = FileSource(_ok(tmp_path))
    with pytest.raises(ValueError, match="max_rows"):
        source.read(0, 0.0)
    source.close()


def _ok(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("A,1,1.0\n")
    return path


def test_a_callback_that_raises_does_not_stop_the_source(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text("A,1,x\nB,2,2.0\n")

    def broken(event):
        raise RuntimeError("callback bug")

    assert _drain(FileSource(path, on_event=broken)) == [("B", 2, 2.0)]


# --- property: what is written is read back exactly, in order -------------------------------------

_ASSETS = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufeff"), min_size=1,
                  max_size=20).map(str.strip).filter(bool)
_STAMPS = st.integers(TIMESTAMP_MIN_NS + 86_400 * 10**9, TIMESTAMP_MAX_NS - 86_400 * 10**9)
_VALUES = st.floats(allow_nan=True, allow_infinity=True)
_OFFSETS = st.sampled_from([None, "Z", "+05:30", "-11:00", "+00:00"])


def _stamp_text(ns: int, offset: str | None) -> str:
    """``ns`` as integer text (offset None) or as RFC 3339 in the zone ``offset``."""
    if offset is None:
        return str(ns)
    sign = -1 if offset.startswith("-") else 1
    minutes = 0 if offset == "Z" else sign * (int(offset[1:3]) * 60 + int(offset[4:6]))
    return format_timestamp(ns + minutes * 60 * 10**9)[:-1] + offset


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:2] == y[:2] and (x[2] == y[2] or (math.isnan(x[2]) and math.isnan(y[2])))
                                    for x, y in zip(a, b, strict=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ticks=st.lists(st.tuples(_ASSETS, _STAMPS, _VALUES, _OFFSETS), max_size=30), header=st.booleans(),
       max_rows=st.integers(1, 7), crlf=st.booleans())
def test_csv_and_jsonl_files_give_back_exactly_what_was_written(tmp_path, ticks, header, max_rows, crlf):
    expected = [(a, t, v) for a, t, v, _ in ticks]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n" if crlf else "\n")
    if header:
        writer.writerow(["asset", "timestamp", "value"])
    writer.writerows((a, _stamp_text(t, z), repr(v)) for a, t, v, z in ticks)
    (tmp_path / "t.csv").write_text(text.getvalue(), encoding="utf-8", newline="")
    (tmp_path / "t.jsonl").write_text("".join(
        json.dumps({"asset": a, "timestamp": t if z is None else _stamp_text(t, z), "value": v}) + "\n"
        for a, t, v, z in ticks), encoding="utf-8")
    for name in ("t.csv", "t.jsonl"):
        events, on_event = _events()
        got = _drain(FileSource(tmp_path / name, on_event=on_event), max_rows=max_rows)
        assert events == [] and _same(got, expected), name


# --- files: follow ---------------------------------------------------------------------------------


def test_a_followed_file_yields_appended_lines_and_holds_a_half_written_one(tmp_path):
    path = tmp_path / "live.csv"
    path.write_text("asset,timestamp,value\nA,1,1.0\n")
    source = FileSource(path, follow=True, poll_s=0.01)
    assert source.live is True
    batch = source.read(100, 1.0)
    assert batch is not None and batch.assets == ("A",)
    with path.open("ab") as out:
        out.write(b"B,2,2.0\nC,3,")  # the second line is half written
        out.flush()
        assert _ticks(source.read(100, 0.2)) == [("B", 2, 2.0)]
        started = time.monotonic()
        assert _ticks(source.read(100, 0.2)) == []  # nothing complete arrived: waits its timeout, returns empty
        assert time.monotonic() - started >= 0.15
        out.write(b"3.0\n")
        out.flush()
        assert _ticks(source.read(100, 1.0)) == [("C", 3, 3.0)]
    source.close()
    assert source.read(1, 0.0) is None


def test_following_while_another_thread_appends(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text("")
    lines = [json.dumps({"asset": f"A{i % 4}", "timestamp": T0 + i, "value": float(i)}) + "\n" for i in range(200)]
    lines[100] = "this is not json\n"

    def writer():
        with path.open("ab") as out:
            for i, line in enumerate(lines):
                data = line.encode()
                if i % 7 == 0:  # some lines in two halves, with a pause between
                    out.write(data[:10])
                    out.flush()
                    time.sleep(0.002)
                    data = data[10:]
                out.write(data)
                out.flush()
                if i % 25 == 0:
                    time.sleep(0.01)

    events, on_event = _events()
    source = FileSource(path, follow=True, poll_s=0.005, on_event=on_event)
    thread = threading.Thread(target=writer)
    thread.start()
    got: list = []
    deadline = time.monotonic() + 30
    while len(got) < 199 and time.monotonic() < deadline:
        batch = source.read(16, 0.05)
        assert batch is not None  # a followed file never ends
        got += _ticks(batch)
    thread.join()
    assert got == [(f"A{i % 4}", T0 + i, float(i)) for i in range(200) if i != 100]
    assert [e.location for e in events] == [f"{path}:101"]
    source.close()


def test_a_truncated_followed_file_is_read_again_from_its_start(tmp_path):
    path = tmp_path / "live.csv"
    path.write_text("A,1,1.0\nA,2,2.0\n")
    source = FileSource(path, follow=True, poll_s=0.01)
    assert len(source.read(10, 0.5)) == 2
    path.write_text("B,3,3.0\n")  # truncated and rewritten, shorter
    assert _ticks(source.read(10, 1.0)) == [("B", 3, 3.0)]
    source.close()


def _ticks(batch):
    return list(zip(batch.assets, batch.timestamps_ns.tolist(), batch.values.tolist(), strict=True))


# --- stdin ------------------------------------------------------------------------------------------


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    reader, writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    yield reader, writer
    for end in (writer, reader):
        if not end.closed:
            end.close()


def test_stdin_reads_csv_and_json_lines_honours_its_timeout_and_ends_at_eof(pipe):
    reader, writer = pipe
    events, on_event = _events()
    source = StdinSource(reader, on_event=on_event)
    assert isinstance(source, ObservationSource) and source.live and source.name == "-"
    started = time.monotonic()
    assert len(source.read(10, 0.2)) == 0  # nothing written: an empty batch after the timeout
    assert time.monotonic() - started >= 0.15
    writer.write(b'asset,timestamp,value\nA,1,1.0\n{"asset": "B", "timestamp": 2, "value": 2.0}\nbad line\nC,3')
    writer.flush()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        got += _ticks(source.read(10, 0.5))
    assert got == [("A", 1, 1.0), ("B", 2, 2.0)]
    assert _ticks(source.read(10, 0.1)) == []  # "C,3" is not a line yet
    assert [e.location for e in events] == ["-:4"] and "1 field(s)" in events[0].reason
    writer.write(b",3.0\nD,4,4.0")
    writer.close()  # end of stream: the last line, without its newline, is read too
    got = []
    while (batch := source.read(1, 1.0)) is not None:
        got += _ticks(batch)
    assert got == [("C", 3, 3.0), ("D", 4, 4.0)]
    assert source.read(1, 0.0) is None


def test_stdin_hands_out_at_most_max_rows_per_read(pipe):
    reader, writer = pipe
    source = StdinSource(reader)
    writer.write(b"".join(b"A,%d,1.5\n" % i for i in range(1000)))
    writer.close()
    sizes = []
    while (batch := source.read(300, 1.0)) is not None:
        sizes.append(len(batch))
    assert sum(sizes) == 1000 and max(sizes) <= 300
    source.close()


def test_a_read_error_on_stdin_is_raised_by_read():
    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise OSError(5, "Input/output error")

    source = StdinSource(io.BufferedReader(Failing()))
    with pytest.raises(OSError, match="Input/output error"):
        for _ in range(50):
            source.read(10, 0.1)
    assert source.read(10, 0.1) is None


# --- Redis streams ------------------------------------------------------------------------------------


@pytest.fixture
def stream(server, request):
    name = f"ticks:{request.node.name}"
    client = redis.Redis.from_url(server)
    client.delete(name)
    yield client, name
    client.delete(name)
    client.close()


def _add(client, name, *rows):
    return [client.xadd(name, dict(zip(("asset", "timestamp", "value"), row, strict=True))).decode()
            for row in rows]


def test_a_redis_source_reads_in_order_and_acknowledges(server, stream):
    client, name = stream
    events, on_event = _events()
    source = RedisStreamSource(server, name, "g", on_event=on_event)  # creates the stream and the group
    assert isinstance(source, ObservationSource) and source.live
    assert client.exists(name) and [g["name"] for g in client.xinfo_groups(name)] == [b"g"]
    ids = _add(client, name, ("A", "2024-01-01T00:00:00Z", "1.5"), ("B", str(T0 + 1), "nan"),
               ("C", "2024-01-01T00:00:00", "2"), ("D", str(T0 + 3), "4"))
    client.xadd(name, {"asset": "E", "value": "1"})
    client.xadd(name, {"asset": "F", "timestamp": "5", "value": b"\xff1"})
    batch = source.read(10, 1.0)
    assert batch.assets == ("A", "B", "D") and batch.receipts == (ids[0], ids[1], ids[3])
    assert batch.timestamps_ns.tolist() == [T0, T0 + 1, T0 + 3] and math.isnan(batch.values[1])
    assert events[0].reason.startswith("timestamp '2024-01-01T00:00:00' has no timezone")
    assert events[0].location == ids[2] and "without 'timestamp'" in events[1].reason
    assert "field 'value': not UTF-8 text (byte 0xFF at column 1)" in events[2].reason
    assert client.xpending(name, "g")["pending"] == 3  # the malformed ones were acknowledged at once
    source.acknowledge([batch])
    assert client.xpending(name, "g")["pending"] == 0
    started = time.monotonic()
    assert len(source.read(10, 0.2)) == 0  # BLOCK for the timeout, then an empty batch
    assert time.monotonic() - started >= 0.15
    source.close()
    source.close()


def test_what_was_read_but_not_acknowledged_is_redelivered_first_after_a_restart(server, stream):
    client, name = stream
    first = RedisStreamSource(server, name, "g", "worker")
    ids = _add(client, name, *[(f"A{i}", str(i), str(i)) for i in range(6)])
    assert first.read(2, 1.0).receipts == tuple(ids[:2])
    second = first.read(2, 1.0)
    first.acknowledge([second])  # only ids 2 and 3 are durable
    first.close()  # a crash: ids 0 and 1 were read but never acknowledged
    again = RedisStreamSource(server, name, "g", "worker")  # BUSYGROUP is fine
    got = []
    while len(got) < 4:
        batch = again.read(1, 1.0)
        got += batch.receipts
        again.acknowledge([batch])
    assert got == [ids[0], ids[1], ids[4], ids[5]]
    assert client.xpending(name, "g")["pending"] == 0
    assert len(again.read(10, 0.05)) == 0
    again.close()


def test_a_pending_entry_deleted_from_the_stream_is_reported_and_acknowledged(server, stream):
    client, name = stream
    source = RedisStreamSource(server, name, "g", "w")
    ids = _add(client, name, ("A", "1", "1"), ("B", "2", "2"))
    source.read(10, 1.0)
    source.close()
    client.xdel(name, ids[0])
    events, on_event = _events()
    again = RedisStreamSource(server, name, "g", "w", on_event=on_event)
    batch = again.read(10, 1.0)
    assert batch.receipts == (ids[1],)
    assert [e.location for e in events] == [ids[0]] and "deleted" in events[0].reason
    again.acknowledge([batch])
    assert client.xpending(name, "g")["pending"] == 0
    again.close()


def test_an_unreachable_redis_is_a_broker_error_naming_the_url():
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerError) as caught:
        RedisStreamSource(url, "ticks", "g")
    message = str(caught.value)
    assert "127.0.0.1" in message and "secret" not in message and "\n" not in message
    assert "connecting failed" in message


def test_a_stream_key_of_another_type_is_a_broker_error(server, stream):
    client, name = stream
    client.set(name, "not a stream")
    with pytest.raises(BrokerError, match="creating the consumer group failed"):
        RedisStreamSource(server, name, "g")


def test_a_redis_lost_while_reading_is_a_broker_error():
    with redis_server() as url:
        source = RedisStreamSource(url, "ticks", "g")
        sink = RedisStreamSink(url, "out")
    try:  # the server has stopped
        with pytest.raises(BrokerError, match=r"XREADGROUP failed") as caught:
            source.read(10, 0.1)
        assert "\n" not in str(caught.value) and url.split("//")[1] in str(caught.value)
        with pytest.raises(BrokerError, match="XADD failed"):
            sink.write(_one_record())
    finally:
        source.close()
        sink.close()


def _one_record():
    return PredictionRecords(("A",), np.array([1], dtype=np.int64), np.array([1.0]), np.array([0.0]),
                             np.array([2.0]), ("inference",), ((),))
