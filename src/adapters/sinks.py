"""Prediction sinks of ``usp serve``: JSON lines (a file or stdout), CSV, a Redis stream.

Each output record carries ``asset``, ``timestamp`` (RFC 3339 in UTC with ``Z``, fractional
digits only as needed, exact to the nanosecond: :func:`format_timestamp`), ``prediction``,
``lower``, ``upper`` (float64, written with ``repr``: read back exactly), ``mode`` (its name) and
``events`` (event names), one record per row of a micro-batch, in row order.

* JSON lines: one object per line with exactly those seven keys; numbers are JSON numbers, a
  non-finite number (NaN, ±inf) is ``null``; ``events`` is a JSON list of strings.
* CSV: the header ``asset,timestamp,prediction,lower,upper,mode,events``, events joined with
  ``;``; a non-finite number is written ``nan``, ``inf`` or ``-inf`` (read back by ``float``).
* Redis stream: one ``XADD`` per record, all the records of a write in one pipeline; fields as
  in JSON lines except numbers as ``repr`` text (``nan``, ``inf``), ``events`` as a JSON list, and
  ``source_id`` (the source's entry id of the tick) when the records carry receipts. The stream
  is never trimmed here (readers trim it with ``XTRIM``).

File sinks append: a restarted service continues its file. A CSV header is written only to an
empty file, and a CSV file that holds anything else first is refused. A file whose last line has
no newline (an interrupted write) gets one before the first new record, so records never run
together. A directory, a path in a missing directory, or a file that cannot be opened for writing
is refused at open with :class:`SinkOpenError`. :meth:`flush` hands the written lines to the
operating system (``flush``, no ``fsync``); :meth:`close` flushes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..domain import USPError
from ..ports.prediction_sink import PredictionRecords
from .csv_reader import TIMESTAMP_MAX_NS, TIMESTAMP_MIN_NS
from .sources import BrokerError, broker_call, redact_url, redis_client

log = logging.getLogger("usp.ingestion")

#: The CSV sink's header, and the keys of a JSON-lines record, in order.
OUTPUT_FIELDS = ("asset", "timestamp", "prediction", "lower", "upper", "mode", "events")
CSV_HEADER = ",".join(OUTPUT_FIELDS)
_NS = 1_000_000_000
_REMEMBERED = 65_536


class SinkOpenError(USPError, OSError):
    """A sink's file cannot be used (a directory, a missing directory, unwritable, foreign content)."""


def format_timestamp(ns: int) -> str:
    """RFC 3339 text of ``ns`` UTC nanoseconds since the epoch: ``2024-01-01T00:00:00.5Z``.

    UTC with ``Z``; the fraction of a second has as many digits as needed (none for a whole
    second, at most 9), so ``parse_timestamp_ns`` reads it back exactly. Raises ValueError
    outside int64 nanoseconds less its smallest value (the core's "untimed").
    """
    if isinstance(ns, bool) or not isinstance(ns, int | np.integer):
        raise TypeError(f"a timestamp is integer nanoseconds, got {type(ns).__name__}")
    if not TIMESTAMP_MIN_NS <= int(ns) <= TIMESTAMP_MAX_NS:
        raise ValueError(f"timestamp {int(ns)} ns is outside int64 nanoseconds less its smallest value")
    return format_timestamps(np.array([ns], dtype=np.int64))[0]


def format_timestamps(ns: np.ndarray) -> list[str]:
    """:func:`format_timestamp` of each element of an int64[n] array (one vectorised conversion)."""
    stamps = np.asarray(ns)
    if stamps.dtype != np.int64 or stamps.ndim != 1:
        raise ValueError(f"timestamps must be an int64[n] array, got {stamps.dtype}{list(stamps.shape)}")
    if stamps.size and (stamps.min() < TIMESTAMP_MIN_NS or stamps.max() > TIMESTAMP_MAX_NS):
        raise ValueError("a timestamp is outside int64 nanoseconds less its smallest value (the core's untimed)")
    seconds = stamps // _NS
    fractions = (stamps % _NS).tolist()
    wholes = np.datetime_as_string(seconds.astype("datetime64[s]")).tolist()
    return [whole + "Z" if not fraction else f"{whole}.{fraction:09d}".rstrip("0") + "Z"
            for whole, fraction in zip(wholes, fractions, strict=True)]


def _number_texts(column: list[float], *, non_finite: str | None = None) -> list[str]:
    """``repr`` of each float (exact on reading back); ``non_finite`` replaces NaN and ±inf when given."""
    texts = list(map(repr, column))
    if non_finite is not None:
        for index in np.flatnonzero(~np.isfinite(np.asarray(column, dtype=np.float64))).tolist():
            texts[index] = non_finite
    return texts


#: Characters that some line splitters take for line breaks: escaped in JSON text, so one record stays one line.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _json_text(item: str | tuple[str, ...]) -> str:
    """JSON of a string (or of a tuple as a list), UTF-8 as it is, line-break characters escaped."""
    return json.dumps(list(item) if isinstance(item, tuple) else item, ensure_ascii=False).translate(_LINE_BREAKS)


def _memo(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    known: dict[Any, str] = {}

    def cached(key: Any) -> str:
        text = known.get(key)
        if text is None:
            if len(known) >= _REMEMBERED:
                known.clear()
            text = known[key] = fn(key)
        return text
    return cached


def _rows(records: PredictionRecords) -> tuple[list[str], list[float], list[float], list[float]]:
    """Timestamp texts and the float columns as Python lists, after checking every column's length."""
    n = len(records.assets)
    lengths = {len(records.timestamps_ns), len(records.prediction), len(records.lower), len(records.upper),
               len(records.modes), len(records.events)}
    if lengths != {n} or (records.receipts and len(records.receipts) != n):
        raise ValueError(f"PredictionRecords columns of different lengths for {n} assets")
    return (format_timestamps(np.asarray(records.timestamps_ns, dtype=np.int64)),
            np.asarray(records.prediction, dtype=np.float64).tolist(),
            np.asarray(records.lower, dtype=np.float64).tolist(),
            np.asarray(records.upper, dtype=np.float64).tolist())


def _open_append(path: Path, header: str | None) -> IO[bytes]:
    """``path`` opened for appending (created if missing), after the checks of the module doc.

    Writes ``header`` (and a newline) to an empty regular file, and a newline to one whose last
    byte is not one.
    """
    where = f"sink {str(path)!r}"
    if path.is_dir():
        raise SinkOpenError(f"{where} is a directory; give a file path")
    try:
        file = open(path, "ab")  # noqa: SIM115 (owned by the sink, closed by close())
    except OSError as exc:
        if not path.parent.is_dir():
            problem = "is not a directory" if path.parent.exists() else "does not exist"
            raise SinkOpenError(f"{where}: its directory {str(path.parent)!r} {problem}") from None
        raise SinkOpenError(f"{where} cannot be opened for writing: {exc.strerror or exc}") from None
    try:
        info = os.fstat(file.fileno())
        if stat.S_ISREG(info.st_mode):
            if info.st_size == 0:
                if header is not None:
                    file.write(header.encode() + b"\n")
            else:
                _continue(path, file, header, where)
    except BaseException:
        file.close()
        raise
    return file


def _continue(path: Path, file: IO[bytes], header: str | None, where: str) -> None:
    """Check a non-empty file before appending to it, and end its last line if it has no newline."""
    try:
        with open(path, "rb") as existing:
            first = existing.readline(len(CSV_HEADER) + 3)
            existing.seek(-1, os.SEEK_END)
            last = existing.read(1)
    except OSError:  # write-only: nothing to check
        return
    if header is not None and first.rstrip(b"\r\n") != header.encode():
        raise SinkOpenError(f"{where} already holds other content (its first line is not the header "
                            f"{header}); write to a new file")
    if last != b"\n":
        log.warning("%s: its last line has no newline (an interrupted write?); a line break is added", where)
        file.write(b"\n")


class _FileSink:
    """Shared by the file sinks: an owned file (or a borrowed binary stream), flush, close."""

    def __init__(self, file: IO[bytes], name: str, owned: bool) -> None:
        self._file: IO[bytes] | None = file
        self.name = name
        self._owned = owned

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"sink {self.name} is closed")
        self._file.write(data)

    def flush(self) -> None:
        """Flush the file object (the lines reach the operating system; no ``fsync``)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush, and close the file if the sink opened it (a borrowed stream stays open); idempotent."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.flush()
            finally:
                if self._owned:
                    file.close()


class JsonLinesSink(_FileSink):
    """JSON lines to a path (appended) or to a binary stream such as ``sys.stdout.buffer``."""

    def __init__(self, target: str | os.PathLike[str] | IO[bytes]) -> None:
        if isinstance(target, str | os.PathLike):
            super().__init__(_open_append(Path(target), None), str(target), owned=True)
        else:
            super().__init__(target, str(getattr(target, "name", "<stream>")), owned=False)
        self._asset = _memo(_json_text)
        self._mode = _memo(_json_text)
        self._events = _memo(_json_text)

    def write(self, records: PredictionRecords) -> None:
        """Append one JSON object per row."""
        stamps, *columns = _rows(records)
        prediction, lower, upper = (_number_texts(column, non_finite="null") for column in columns)
        asset, mode, events = self._asset, self._mode, self._events
        lines = [f'{{"asset":{asset(a)},"timestamp":"{t}","prediction":{p},"lower":{lo},"upper":{up},'
                 f'"mode":{mode(m)},"events":{events(e)}}}\n'
                 for a, t, p, lo, up, m, e in zip(records.assets, stamps, prediction, lower, upper, records.modes,
                                                   records.events, strict=True)]
        self._write("".join(lines).encode("utf-8"))


class CsvSink(_FileSink):
    """CSV rows appended to a file (the header first when the file is empty)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(_open_append(Path(path), CSV_HEADER), str(path), owned=True)

    def write(self, records: PredictionRecords) -> None:
        """Append one CSV row per record."""
        stamps, *columns = _rows(records)
        prediction, lower, upper = (_number_texts(column) for column in columns)
        text = io.StringIO()
        # (a writer ending lines with "\n" leaves a lone "\r" unquoted: such a batch quotes every cell)
        lone_cr = any("\r" in asset for asset in records.assets)
        csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_ALL if lone_cr else csv.QUOTE_MINIMAL).writerows(zip(
            records.assets, stamps, prediction, lower, upper, records.modes, map(";".join, records.events),
            strict=True))
        self._write(text.getvalue().encode("utf-8"))


class RedisStreamSink:
    """Records ``XADD`` ed to a Redis stream (see the module doc for the fields).

    Each :meth:`write` sends its records in one pipeline, so they are in the stream when it
    returns (:meth:`flush` has nothing left to send). Any Redis failure, at open (unreachable) or
    later, raises :class:`BrokerError` naming the URL (without its password).
    """

    def __init__(self, url: str, stream: str) -> None:
        if not stream:
            raise ValueError("the stream name of a Redis sink is empty")
        self.stream = stream
        self.name = f"{redact_url(url)}?stream={stream}"
        self._client: Any = redis_client(url, socket_timeout_s=30.0)
        self._events = _memo(_json_text)
        try:
            broker_call(self.name, "connecting", self._client.ping)
        except BaseException:
            self._client.close()
            raise

    def write(self, records: PredictionRecords) -> None:
        """``XADD`` one entry per record, all in one pipeline."""
        if self._client is None:
            raise ValueError(f"sink {self.name} is closed")
        stamps, prediction, lower, upper = _rows(records)
        if not stamps:
            return
        pipe = self._client.pipeline(transaction=False)
        receipts = records.receipts or (None,) * len(stamps)
        for a, t, p, lo, up, m, e, r in zip(records.assets, stamps, prediction, lower, upper, records.modes,
                                            records.events, receipts, strict=True):
            fields = {"asset": a, "timestamp": t, "prediction": repr(p), "lower": repr(lo), "upper": repr(up),
                      "mode": m, "events": self._events(e)}
            if r is not None:
                fields["source_id"] = r
            pipe.xadd(self.stream, fields)
        broker_call(self.name, "XADD", pipe.execute)

    def flush(self) -> None:
        """Nothing is buffered: every write has reached Redis when it returns."""

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


__all__ = ["CSV_HEADER", "OUTPUT_FIELDS", "BrokerError", "CsvSink", "JsonLinesSink", "RedisStreamSink",
           "SinkOpenError", "format_timestamp", "format_timestamps"]
