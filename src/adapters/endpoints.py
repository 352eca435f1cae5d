"""Endpoint specs of ``usp serve``: which source or sink a ``--source`` / ``--sink`` names.

A spec is one of:

* a path ending ``.csv`` or ``.jsonl`` (any case): :class:`~usp.adapters.sources.FileSource`
  (``follow`` tails it) or a file sink (:class:`~usp.adapters.sinks.CsvSink`,
  :class:`~usp.adapters.sinks.JsonLinesSink`);
* ``-``: stdin (:class:`~usp.adapters.sources.StdinSource`) or stdout as JSON lines;
* ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]?stream=NAME`` (``rediss://`` for TLS), plus
  ``&group=NAME`` and optionally ``&consumer=NAME`` (default ``usp``) for a source: a
  :class:`~usp.adapters.sources.RedisStreamSource` or
  :class:`~usp.adapters.sinks.RedisStreamSink`. No other query key is accepted.

A spec that names nothing usable raises :class:`EndpointError` with a one-line message naming
the spec (its password, if any, replaced by ``***``). Opening may still fail afterwards as the
adapter does: ``OSError`` for a missing source file, ``SinkOpenError`` for an unwritable sink,
``BrokerError`` for an unreachable Redis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs

from ..ports.ingestion import ObservationSource, SourceEventCallback
from ..ports.prediction_sink import PredictionSink
from .sinks import CsvSink, JsonLinesSink, RedisStreamSink, SinkOpenError
from .sources import BrokerError, EndpointError, FileSource, RedisStreamSource, StdinSource, redact_url

Role = Literal["source", "sink"]
_SCHEMES = ("redis", "rediss")
_FILE_SUFFIXES = (".csv", ".jsonl")
_QUERY_KEYS: dict[str, tuple[str, ...]] = {"source": ("stream", "group", "consumer"), "sink": ("stream",)}
_FORMS = "a path ending .csv or .jsonl, '-', or redis://HOST:PORT/DB?stream=NAME"


@attrs.frozen
class Endpoint:
    """A parsed spec: ``kind`` ``"file"`` (``path``), ``"std"`` (``-``) or ``"redis"`` (``url``
    without its query, ``stream``, and for a source ``group`` and ``consumer``)."""

    kind: Literal["file", "std", "redis"]
    spec: str
    path: Path | None = None
    url: str | None = None
    stream: str | None = None
    group: str | None = None
    consumer: str | None = None

    def same_place(self, other: Endpoint) -> bool:
        """Whether both name one file, or one stream of one Redis database."""
        if self.kind == other.kind == "file":
            assert self.path is not None and other.path is not None
            return _same_file(self.path, other.path)
        if self.kind == other.kind == "redis":
            assert self.url is not None and other.url is not None
            return _redis_place(self.url) == _redis_place(other.url) and self.stream == other.stream
        return False


def parse_endpoint(spec: str, role: Role) -> Endpoint:
    """The endpoint ``spec`` names for a ``role`` (``"source"`` or ``"sink"``); :class:`EndpointError` if none."""
    if not isinstance(spec, str) or not spec.strip():
        raise EndpointError(f"{role} {spec!r}: empty; give {_FORMS}")
    if spec == "-":
        return Endpoint("std", spec)
    if "://" in spec:
        return _redis_endpoint(spec, role)
    if spec.lower().endswith(_FILE_SUFFIXES):
        return Endpoint("file", spec, path=Path(spec))
    raise EndpointError(f"{role} {spec!r}: not a known endpoint; give {_FORMS}")


def _redis_endpoint(spec: str, role: Role) -> Endpoint:
    shown = redact_url(spec) if "@" in spec else spec
    where = f"{role} {shown!r}"
    try:
        parts = urlsplit(spec)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise EndpointError(f"{where}: not a valid URL ({exc})") from None
    if parts.scheme not in _SCHEMES:
        raise EndpointError(f"{where}: unsupported scheme {parts.scheme!r}; give {_FORMS}")
    if not parts.hostname:
        raise EndpointError(f"{where}: no host; give redis://HOST:PORT/DB?stream=NAME")
    if parts.fragment:
        raise EndpointError(f"{where}: a URL fragment ('#...') is not understood")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise EndpointError(f"{where}: the database {database!r} is not a number")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise EndpointError(f"{where}: unreadable query ({exc})") from None
    allowed = _QUERY_KEYS[role]
    query: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise EndpointError(f"{where}: unknown parameter {key!r} (a {role} takes "
                                f"{', '.join(k + '=' for k in allowed)})")
        if key in query:
            raise EndpointError(f"{where}: {key}= is given twice")
        if not value:
            raise EndpointError(f"{where}: {key}= is empty")
        query[key] = value
    if "stream" not in query:
        raise EndpointError(f"{where}: no stream; add ?stream=NAME")
    if role == "source" and "group" not in query:
        raise EndpointError(f"{where}: no consumer group; add &group=NAME")
    url = urlunsplit((parts.scheme, parts.netloc, f"/{database}" if database else "", "", ""))
    return Endpoint("redis", spec, url=url, stream=query["stream"], group=query.get("group"),
                    consumer=query.get("consumer", "usp") if role == "source" else None)


def open_source(spec: str, *, follow: bool = False, stdin: IO[bytes] | None = None,
                on_event: SourceEventCallback | None = None) -> ObservationSource:
    """The source ``spec`` names, opened. ``follow`` tails a file (refused for other sources);
    ``stdin`` replaces ``sys.stdin.buffer`` for ``-``; ``on_event`` receives malformed records."""
    endpoint = parse_endpoint(spec, "source")
    if follow and endpoint.kind != "file":
        raise EndpointError(f"source {spec if endpoint.kind == 'std' else redact_url(spec)!r}: only a file "
                            "source can be followed")
    if endpoint.kind == "std":
        return StdinSource(stdin, on_event=on_event)
    if endpoint.kind == "file":
        assert endpoint.path is not None
        return FileSource(endpoint.path, follow=follow, on_event=on_event)
    assert endpoint.url is not None and endpoint.stream and endpoint.group and endpoint.consumer
    return RedisStreamSource(endpoint.url, endpoint.stream, endpoint.group, endpoint.consumer, on_event=on_event)


def open_sink(spec: str, *, stdout: IO[bytes] | None = None, source: str | None = None) -> PredictionSink:
    """The sink ``spec`` names, opened. ``stdout`` replaces ``sys.stdout.buffer`` for ``-``;
    ``source``, the source's spec, is checked not to be the same file or stream (the service
    would read its own output)."""
    endpoint = parse_endpoint(spec, "sink")
    if source is not None and endpoint.same_place(parse_endpoint(source, "source")):
        shown = redact_url(spec) if endpoint.kind == "redis" else spec
        raise EndpointError(f"sink {shown!r} is also the source; write elsewhere")
    if endpoint.kind == "std":
        return JsonLinesSink(stdout if stdout is not None else sys.stdout.buffer)
    if endpoint.kind == "file":
        assert endpoint.path is not None
        if endpoint.path.suffix.lower() == ".csv":
            return CsvSink(endpoint.path)
        return JsonLinesSink(endpoint.path)
    assert endpoint.url is not None and endpoint.stream
    return RedisStreamSink(endpoint.url, endpoint.stream)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def _redis_place(url: str) -> tuple[str | None, int, str]:
    parts = urlsplit(url)
    return (parts.hostname, parts.port or 6379, parts.path.strip("/") or "0")


__all__ = ["BrokerError", "Endpoint", "EndpointError", "SinkOpenError", "open_sink", "open_source",
           "parse_endpoint"]
