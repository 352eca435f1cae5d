"""Endpoint specs of ``usp serve``: parsing, refusals, and opening real sources and sinks."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import redis
from usp import USPError
from usp.adapters.endpoints import EndpointError, open_sink, open_source, parse_endpoint
from usp.adapters.sinks import CsvSink, JsonLinesSink, RedisStreamSink
from usp.adapters.sources import FileSource, RedisStreamSource, StdinSource
from usp.ports.prediction_sink import PredictionRecords

from .services import redis_url

__all__ = ["redis_url"]  # the session's redis-server, through the fixture below


@pytest.fixture
def server(request) -> str:
    """URL of the real redis-server of this test session."""
    return request.getfixturevalue("redis_url")


@pytest.mark.parametrize(("spec", "role", "message"), [
    ("", "source", "source '': empty"),
    ("   ", "sink", "empty"),
    ("ticks.txt", "source", "source 'ticks.txt': not a known endpoint; give a path ending .csv or .jsonl"),
    ("ticks", "sink", "not a known endpoint"),
    ("kafka://broker:9092/ticks", "source", "unsupported scheme 'kafka'"),
    ("redis://localhost:6379/0", "sink", r"no stream; add \?stream=NAME"),
    ("redis://localhost:6379/0?stream=ticks", "source", "no consumer group; add &group=NAME"),
    ("redis://localhost:6379/0?stream=ticks&group=g&block=5", "source", "unknown parameter 'block'"),
    ("redis://localhost:6379/0?stream=out&group=g", "sink", r"unknown parameter 'group' \(a sink takes stream=\)"),
    ("redis://localhost:6379/0?stream=a&stream=b", "sink", "stream= is given twice"),
    ("redis://localhost:6379/0?stream=", "sink", "stream= is empty"),
    ("redis://localhost:6379/0?stream", "sink", "unreadable query"),
    ("redis://localhost:port/0?stream=s", "sink", "not a valid URL"),
    ("redis://localhost:6379/zero?stream=s", "sink", "the database 'zero' is not a number"),
    ("redis://localhost:6379/0?stream=s#x", "sink", "fragment"),
    ("redis:///0?stream=s", "sink", "no host"),
])
def test_a_bad_spec_is_an_endpoint_error_naming_it_on_one_line(spec, role, message):
    with pytest.raises(EndpointError, match=message) as caught:
        parse_endpoint(spec, role)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, USPError) and isinstance(error, ValueError)
    assert "\n" not in str(error) and str(error).startswith(f"{role} {spec!r}")


def test_a_password_in_a_spec_never_appears_in_an_error():
    with pytest.raises(EndpointError) as caught:
        parse_endpoint("redis://user:hunter2@localhost:6379/0?stream=s&bad=1", "sink")
    assert "hunter2" not in str(caught.value) and "user:***@localhost:6379" in str(caught.value)


def test_good_specs_parse():
    assert parse_endpoint("-", "source").kind == "std"
    endpoint = parse_endpoint("data/TICKS.CSV", "source")
    assert endpoint.kind == "file" and str(endpoint.path) == "data/TICKS.CSV"
    redis_source = parse_endpoint("rediss://u:p@host:6380/2?stream=ticks&group=svc&consumer=c1", "source")
    assert (redis_source.url, redis_source.stream, redis_source.group, redis_source.consumer) == (
        "rediss://u:p@host:6380/2", "ticks", "svc", "c1")
    assert parse_endpoint("redis://host?stream=t&group=g", "source").consumer == "usp"
    assert parse_endpoint("redis://host/1?stream=out", "sink").group is None


def test_open_source_opens_files_stdin_and_redis(tmp_path, server):
    path = tmp_path / "ticks.csv"
    path.write_text("A,1,1.5\n")
    events = []
    replay = open_source(str(path), on_event=events.append)
    assert isinstance(replay, FileSource) and not replay.live
    assert replay.read(10, 0.0).assets == ("A",) and replay.read(10, 0.0) is None
    followed = open_source(str(path), follow=True)
    assert isinstance(followed, FileSource) and followed.live
    followed.close()
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        stdin = open_source("-", stdin=reader)
        assert isinstance(stdin, StdinSource)
        writer.write(b'{"asset": "B", "timestamp": 2, "value": 2.5}\n')
        writer.flush()
        assert stdin.read(10, 5.0).assets == ("B",)
        stdin.close()
    stream = open_source(f"{server}?stream=endpoint-ticks&group=g")
    assert isinstance(stream, RedisStreamSource) and stream.consumer == "usp"
    client = redis.Redis.from_url(server)
    client.xadd("endpoint-ticks", {"asset": "C", "timestamp": "3", "value": "x"})
    stream.read(10, 1.0)
    stream.close()
    client.delete("endpoint-ticks")
    client.close()
    with pytest.raises(EndpointError, match="only a file source can be followed"):
        open_source("-", follow=True)
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.jsonl"))


def _records():
    return PredictionRecords(("A",), np.array([5], dtype=np.int64), np.array([1.0]), np.array([0.5]),
                             np.array([1.5]), ("inference",), ((),))


def test_open_sink_opens_stdout_files_and_redis(tmp_path, server):
    stdout = io.BytesIO()
    sink = open_sink("-", stdout=stdout)
    assert isinstance(sink, JsonLinesSink)
    sink.write(_records())
    sink.close()
    assert json.loads(stdout.getvalue())["timestamp"] == "1970-01-01T00:00:00.000000005Z"
    for name, kind in (("out.csv", CsvSink), ("out.JSONL", JsonLinesSink)):
        sink = open_sink(str(tmp_path / name))
        assert isinstance(sink, kind)
        sink.close()
    sink = open_sink(f"{server}?stream=endpoint-out")
    assert isinstance(sink, RedisStreamSink)
    sink.close()


def test_a_sink_that_is_the_source_is_refused(tmp_path):
    path = tmp_path / "ticks.jsonl"
    path.write_text("")
    with pytest.raises(EndpointError, match="is also the source"):
        open_sink(str(path), source=str(path))
    with pytest.raises(EndpointError, match="is also the source"):
        open_sink(str(tmp_path / "sub" / ".." / "ticks.jsonl"), source=str(path))
    with pytest.raises(EndpointError, match="is also the source"):
        open_sink("redis://127.0.0.1/0?stream=s", source="redis://127.0.0.1:6379?stream=s&group=g")
    other = open_sink(str(tmp_path / "out.jsonl"), source=str(path))  # a different file is fine
    other.close()
