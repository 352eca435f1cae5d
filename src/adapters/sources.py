"""Observation sources of ``usp serve``: a file (replayed or followed), stdin, a Redis stream.

Every source hands out ticks ``(asset, timestamp, value)`` as columns
(:class:`~usp.ports.ingestion.ObservationBatch`), many rows per call, in arrival order.

Records, one per line (a line ends with ``\\n`` or ``\\r\\n``; a quoted CSV cell cannot span
lines):

* CSV ``asset,timestamp,value``, read by the one CSV reader of the command line
  (:class:`usp.adapters.csv_reader.TickFields`): an optional header as the first non-blank line
  (its value is not a number and its timestamp is not a timestamp), a UTF-8 BOM allowed;
* JSON lines ``{"asset": "...", "timestamp": ..., "value": ...}``: the timestamp is a string
  (RFC 3339 with a UTC offset, or integer nanoseconds as text) or a JSON integer (nanoseconds);
  the value a JSON number (``NaN`` and ``Infinity`` included) or a string the CSV reader reads as a
  number; other keys are ignored.

A record that cannot be read (wrong field count, a naive timestamp, a value that is not a
number, an asset id that is empty, longer than 200 characters or holds control characters, a
line that is not UTF-8 or longer than :data:`MAX_LINE_BYTES`) is skipped and reported as a
:class:`~usp.ports.ingestion.MalformedObservationEvent` (``location`` is ``file:line``, ``-:line``
for stdin, or the Redis entry id) to the ``on_event`` callback and on the ``usp.ingestion`` logger:
a long-lived service never stops on one bad line. What cannot be opened still raises at once: a
missing or unreadable file (``OSError``), a UTF-16 file (:class:`~usp.domain.DomainError`), an
unreachable Redis (:class:`BrokerError`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..domain import DomainError, TimestampError, USPError
from ..ports.ingestion import MalformedObservationEvent, ObservationBatch, SourceEventCallback
from .csv_reader import TIMESTAMP_MAX_NS, TIMESTAMP_MIN_NS, TickFields, excerpt, is_utf16, undecodable

log = logging.getLogger("usp.ingestion")

#: A line longer than this (bytes, without its newline) is reported and skipped, never buffered whole.
MAX_LINE_BYTES = 1 << 20
#: Bytes read from a file per system call.
_CHUNK_BYTES = 1 << 20
_BOM = "\ufeff"
_UTF8_BOM = b"\xef\xbb\xbf"
_JSON = json.JSONDecoder()  # (NaN and Infinity are read as floats)

Format = Literal["csv", "jsonl", "auto"]


class EndpointError(USPError, ValueError):
    """A source or sink spec that names no usable endpoint (the one-line message names the spec)."""


class BrokerError(USPError, ConnectionError):
    """The broker (Redis) could not be reached, or refused a command; the message names its URL
    (without a password) and the cause, on one line."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for names, logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


# --- lines -> ticks ------------------------------------------------------------------------------


class _Bad:
    """A line that could not even be decoded (or was too long): its reason, reported when reached."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Line = str | _Bad


class _Splitter:
    """Cuts a byte stream into complete lines (decoded), holding back a partial last line.

    A UTF-8 BOM at the very start is dropped; a line that does not decode or exceeds
    :data:`MAX_LINE_BYTES` becomes a :class:`_Bad` marker (a too-long line is dropped up to its
    newline, so memory stays bounded).
    """

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False
        self._started = False

    def feed(self, chunk: bytes) -> list[Line]:
        """The complete lines that ``chunk`` ends (in order)."""
        out: list[Line] = []
        if not self._started and chunk:
            self._started = True
            if chunk.startswith(_UTF8_BOM):
                chunk = chunk[len(_UTF8_BOM):]
        if self._skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                return out
            chunk, self._skipping = chunk[cut + 1:], False
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data
        else:
            self._partial = data[cut + 1:]
            out += _decode_lines(data[:cut])
        if len(self._partial) > MAX_LINE_BYTES:
            out.append(_Bad(_too_long()))
            self._partial, self._skipping = b"", True
        return out

    def finish(self) -> list[Line]:
        """At the end of the stream: the partial last line (a line without its newline), if any."""
        rest, self._partial = self._partial, b""
        if self._skipping or not rest:
            self._skipping = False
            return []
        return _decode_lines(rest)

    @property
    def pending_bytes(self) -> int:
        return len(self._partial)


def _decode_lines(data: bytes) -> list[Line]:
    """The lines of ``data`` (split on ``\\n``), decoded; one that is not UTF-8 or is longer than
    :data:`MAX_LINE_BYTES` becomes ``_Bad``."""
    if len(data) <= MAX_LINE_BYTES or max(map(len, data.split(b"\n"))) <= MAX_LINE_BYTES:
        try:
            return list(data.decode("utf-8").split("\n"))
        except UnicodeDecodeError:
            pass
    lines: list[Line] = []
    for raw in data.split(b"\n"):
        reason = _too_long() if len(raw) > MAX_LINE_BYTES else undecodable(raw)
        lines.append(raw.decode("utf-8") if reason is None else _Bad(reason))
    return lines


def _too_long() -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes (skipped up to its end)"


class _Columns:
    """Ticks gathered for one batch (Python lists, turned into numpy columns once)."""

    __slots__ = ("assets", "receipts", "stamps", "values")

    def __init__(self) -> None:
        self.assets: list[str] = []
        self.stamps: list[int] = []
        self.values: list[float] = []
        self.receipts: list[str] = []

    def __len__(self) -> int:
        return len(self.assets)

    def batch(self) -> ObservationBatch:
        return ObservationBatch(tuple(self.assets), np.array(self.stamps, dtype=np.int64),
                                np.array(self.values, dtype=np.float64), tuple(self.receipts))


class _Reporter:
    """Reports malformed records: the ``usp.ingestion`` logger and the ``on_event`` callback."""

    def __init__(self, source: str, on_event: SourceEventCallback | None) -> None:
        self.source = source
        self.on_event = on_event

    def __call__(self, location: str, reason: str) -> None:
        event = MalformedObservationEvent(source=self.source, location=location, reason=reason)
        log.warning("malformed record skipped at %s: %s", location, reason)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("the malformed-record callback of %s failed", self.source)


class _LineTicks:
    """Parses pending lines into ticks, up to a row budget; keeps the rest for the next call.

    ``fmt`` is ``"csv"``, ``"jsonl"`` or ``"auto"`` (a line whose first non-blank character is
    ``{`` is JSON, any other CSV). Line numbers count every line, blank ones included.
    """

    def __init__(self, where: str, fmt: Format, report: _Reporter) -> None:
        self.where = where
        self.fmt = fmt
        self.report = report
        self.fields = TickFields()
        self.line = 0            # number of the last line taken
        self._first = True       # the next non-blank line is the first (a CSV header is allowed there)
        self._lines: list[Line] = []
        self._next = 0

    def add(self, lines: Iterable[Line]) -> None:
        if self._next:
            del self._lines[:self._next]
            self._next = 0
        self._lines.extend(lines)

    def restart(self) -> None:
        """Forget everything pending and count lines from 1 again (the file was truncated)."""
        self._lines, self._next, self.line, self._first = [], 0, 0, True

    @property
    def pending(self) -> bool:
        return self._next < len(self._lines)

    def take(self, rows: _Columns, max_rows: int) -> None:
        """Parse pending lines into ``rows`` until it holds ``max_rows`` rows or none are left."""
        lines, fields = self._lines, self.fields
        assets, stamps, values = rows.assets, rows.stamps, rows.values
        csv_only = self.fmt == "csv"
        index, end = self._next, len(self._lines)
        number = self.line
        while index < end and len(assets) < max_rows:
            line = lines[index]
            index += 1
            number += 1
            try:
                if isinstance(line, _Bad):
                    raise DomainError(line.reason)
                if csv_only or (self.fmt == "auto" and not line.lstrip(" \t" + _BOM).startswith("{")):
                    if self._first:
                        if not line.strip().strip(_BOM).strip():
                            continue
                        self._first = False
                        if fields.is_csv_header(line):
                            log.info("%s:%d: header %s", self.where, number, excerpt(line.strip()))
                            continue
                    try:
                        asset, stamp, value = fields.csv_tick(line)
                    except DomainError:
                        if not line.strip().strip(_BOM).strip():  # a blank line: nothing to read
                            continue
                        raise
                else:
                    if not line.strip():
                        continue
                    self._first = False
                    asset, stamp, value = _json_tick(fields, line.lstrip(_BOM))
            except (DomainError, TimestampError) as exc:
                self.report(f"{self.where}:{number}", str(exc))
                continue
            assets.append(asset)
            stamps.append(stamp)
            values.append(value)
        self._next, self.line = index, number


def _json_tick(fields: TickFields, line: str) -> tuple[str, int, float]:
    """``(asset, timestamp_ns, value)`` of one JSON line (see the module doc)."""
    text = line.strip()
    try:
        record, end = _JSON.raw_decode(text)
    except (ValueError, RecursionError) as exc:
        raise DomainError(f"not a JSON object: {exc}") from None
    if end != len(text):
        raise DomainError(f"not a JSON object: more after its end (column {end + 1})")
    if type(record) is not dict:
        raise DomainError(f"not a JSON object but a {type(record).__name__}: {excerpt(text)}")
    try:
        asset, timestamp, value = record["asset"], record["timestamp"], record["value"]
    except KeyError:
        missing = [key for key in ("asset", "timestamp", "value") if key not in record]
        raise DomainError(f"JSON record without {', '.join(repr(k) for k in missing)}") from None
    return json_fields(fields, asset, timestamp, value)


def json_fields(fields: TickFields, asset: object, timestamp: object, value: object) -> tuple[str, int, float]:
    """Typed fields of a decoded record: ``asset`` a string, ``timestamp`` a string or integer
    nanoseconds, ``value`` a number or a string holding one (booleans and null are refused)."""
    if type(asset) is str and type(timestamp) is str and type(value) is float:  # the common case, quickly
        return fields.asset(asset), fields.timestamp(timestamp), value
    if not isinstance(asset, str):
        raise DomainError(f"asset must be a string, got {type(asset).__name__}")
    if isinstance(timestamp, str):
        stamp = fields.timestamp(timestamp)
    elif isinstance(timestamp, int) and not isinstance(timestamp, bool):
        if not TIMESTAMP_MIN_NS <= timestamp <= TIMESTAMP_MAX_NS:
            raise TimestampError(f"timestamp {excerpt(str(timestamp))} is outside int64 nanoseconds (about 1678 "
                                 "to 2262)")
        stamp = timestamp
    else:
        raise DomainError(f"timestamp must be a string or integer nanoseconds, got {type(timestamp).__name__}")
    if isinstance(value, str):
        number = fields.value(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise DomainError(f"value {excerpt(str(value))} does not fit a float64") from None
    else:
        raise DomainError(f"value must be a number, got {type(value).__name__}")
    return fields.asset(asset), stamp, number


def _format_of(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".jsonl":
        return "jsonl"
    raise EndpointError(f"source {str(path)!r}: a file source is a .csv or .jsonl file")


# --- the sources -------------------------------------------------------------------------------


class FileSource:
    """Ticks from a ``.csv`` or ``.jsonl`` file (see the module doc for the record format).

    Replay (``follow=False``): the file is read from its start to its end, many rows per call;
    a last line without its newline is read at the end; :meth:`read` then returns None. Not live
    (the service runs on replay time).

    Follow (``follow=True``): like ``tail -f``, new lines are read as they are appended; the file
    size is polled every ``poll_s`` seconds while :meth:`read` waits. A partial last line is held
    until its newline arrives. :meth:`read` never returns None (until :meth:`close`); ``live``
    is True. A file that shrinks (truncated) is read again from its start, with a warning; a
    renamed or replaced file is not followed (the open one is).

    The file is closed by :meth:`close`, and by a replay as soon as it has read the last byte.

    Raises at open: ``OSError`` when the file cannot be opened, :class:`DomainError` for UTF-16
    text, :class:`EndpointError` for another suffix or for a path that is not a regular file (a
    pipe cannot be polled nor read without blocking: pipe ticks to stdin instead).
    """

    def __init__(self, path: str | os.PathLike[str], *, follow: bool = False, poll_s: float = 0.05,
                 on_event: SourceEventCallback | None = None) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.follow = bool(follow)
        self.live = self.follow
        if not poll_s > 0:
            raise ValueError(f"poll_s must be positive, got {poll_s!r}")
        self.poll_s = float(poll_s)
        fmt = _format_of(self.path)
        mode = os.stat(self.path).st_mode  # (before opening: opening a FIFO would wait for a writer)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
            raise EndpointError(f"source {self.name!r} is a pipe or a device, not a regular file: pipe ticks to "
                                "the source - (stdin) instead")
        self._file: IO[bytes] | None = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        try:
            if not stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):
                raise EndpointError(f"source {self.name!r} is not a regular file")
            if is_utf16(os.pread(self._file.fileno(), 2, 0)):
                raise DomainError(f"{self.path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save the "
                                  "file as UTF-8")
        except BaseException:
            self._file.close()
            raise
        self._position = 0
        self._splitter = _Splitter()
        self._ticks = _LineTicks(self.name, fmt, _Reporter(self.name, on_event))
        self._ended = self._closed = False

    def read(self, max_rows: int, timeout_s: float) -> ObservationBatch | None:
        """Up to ``max_rows`` ticks; see the class doc for the end of a replay and for following."""
        _check_read(max_rows)
        if self._closed:
            return None
        rows = _Columns()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while len(rows) < max_rows:
            if self._ticks.pending:
                self._ticks.take(rows, max_rows)
                continue
            if self._ended:
                break
            chunk = self._read_chunk()
            if chunk:
                self._ticks.add(self._splitter.feed(chunk))
            elif not self.follow:
                self._ticks.add(self._splitter.finish())
                self._ended = True
                self._release()  # the whole file is read: its lines are pending here
            elif rows or not self._wait_for_growth(deadline):
                break
        if self._ended and not rows and not self._ticks.pending:
            return None
        return rows.batch()

    def _read_chunk(self) -> bytes:
        assert self._file is not None
        chunk = os.pread(self._file.fileno(), _CHUNK_BYTES, self._position)
        self._position += len(chunk)
        return chunk

    def _wait_for_growth(self, deadline: float) -> bool:
        """Poll the file size until it differs from what was read (True) or ``deadline`` (False)."""
        assert self._file is not None
        while True:
            size = os.fstat(self._file.fileno()).st_size
            if size > self._position:
                return True
            if size < self._position:
                log.warning("%s was truncated (%d bytes, %d were read): reading it again from its start",
                            self.name, size, self._position)
                self._position = 0
                self._splitter = _Splitter()
                self._ticks.restart()
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.poll_s, left))

    def acknowledge(self, batches: Sequence[ObservationBatch]) -> None:
        """Nothing to forget: a file keeps its lines."""

    def close(self) -> None:
        """Close the file (idempotent); later reads return None."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_EOF = object()


class StdinSource:
    """Ticks from a binary stream (default ``sys.stdin.buffer``), each line CSV or JSON (a line
    starting with ``{`` is JSON); live.

    A daemon thread reads the stream in chunks into a bounded queue (so a slow service holds the
    writer back instead of buffering without end), and :meth:`read` waits on that queue at most
    ``timeout_s``. At end of stream a last line without its newline is read, then :meth:`read`
    returns None. An error reading the stream is raised by the next :meth:`read`. :meth:`close`
    stops handing out ticks; it does not close the stream, and a thread blocked reading it stays
    blocked until the stream ends (it is a daemon: it never holds the process).
    """

    live = True

    def __init__(self, stream: IO[bytes] | None = None, *, on_event: SourceEventCallback | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.name = "-"
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._ticks = _LineTicks(self.name, "auto", _Reporter(self.name, on_event))
        self._ended = self._closed = False
        self._thread = threading.Thread(target=self._pump, name="usp-stdin", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        splitter = _Splitter()
        read = getattr(self.stream, "read1", None) or self.stream.readline
        try:
            while not self._closed:
                chunk = read(_CHUNK_BYTES)
                if not chunk:
                    break
                lines = splitter.feed(chunk)
                if lines:
                    self._queue.put(lines)
            self._queue.put(splitter.finish())
        except Exception as exc:
            self._queue.put(exc)
        self._queue.put(_EOF)

    def read(self, max_rows: int, timeout_s: float) -> ObservationBatch | None:
        """Up to ``max_rows`` ticks, waiting at most ``timeout_s`` for the first; None at end of stream."""
        _check_read(max_rows)
        if self._closed:
            return None
        rows = _Columns()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while len(rows) < max_rows:
            if self._ticks.pending:
                self._ticks.take(rows, max_rows)
                continue
            if self._ended:
                break
            try:
                wait = 0.0 if rows else deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._ended = True
            elif isinstance(item, Exception):
                raise item
            else:
                self._ticks.add(item)
        if self._ended and not rows and not self._ticks.pending:
            return None
        return rows.batch()

    def acknowledge(self, batches: Sequence[ObservationBatch]) -> None:
        """Nothing to forget: a stream cannot redeliver."""

    def close(self) -> None:
        """Stop handing out ticks (idempotent); the stream itself is left open."""
        self._closed = True
        with contextlib.suppress(queue.Empty):  # let a pump blocked on a full queue finish its put
            while True:
                self._queue.get_nowait()


def _check_read(max_rows: int) -> None:
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")


def redis_client(url: str, *, socket_timeout_s: float) -> Any:
    """A redis-py client (bytes replies) for ``url``, connecting within 5 s."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=5.0)


def broker_call(name: str, what: str, call: Callable[[], Any]) -> Any:
    """``call()``, with any Redis failure raised as a :class:`BrokerError` naming ``name``."""
    import redis

    try:
        return call()
    except redis.RedisError as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise BrokerError(f"Redis {name}: {what} failed: {cause}") from exc


_ENTRY_FIELDS = ("asset", "timestamp", "value")
#: The longest a blocking XREADGROUP waits (ms), kept below the socket timeout.
_MAX_BLOCK_MS = 10_000
_SOCKET_TIMEOUT_S = 30.0


class RedisStreamSource:
    """Ticks from a Redis stream read through a consumer group (``XREADGROUP`` / ``XACK``); live.

    ``url`` names the server (``redis://[USER:PASSWORD@]HOST:PORT/DB``, no query: see
    ``usp.adapters.endpoints`` for the spec with ``?stream=``). Entry fields ``asset``,
    ``timestamp``, ``value`` (UTF-8 text, read as a CSV cell is). The
    group is created when missing (``XGROUP CREATE … 0 MKSTREAM``: a new group starts at the
    beginning of the stream; an existing one is used as it is). On start the source first
    re-reads this consumer's pending entries (delivered but never acknowledged, e.g. before a
    crash), then new ones (``>``), blocking at most ``timeout_s`` (and at most 10 s per call).
    ``receipts`` are the entry ids; :meth:`acknowledge` ``XACK`` s them, so delivery is
    at-least-once for one consumer.

    A malformed entry (a missing field, text that is not a tick, an entry deleted from the stream
    while pending) is reported and acknowledged right away, so it is never redelivered.

    Every Redis failure (unreachable at open, a connection lost later, a refused command) raises
    :class:`BrokerError` naming the URL (without its password).
    """

    live = True

    def __init__(self, url: str, stream: str, group: str, consumer: str = "usp", *,
                 on_event: SourceEventCallback | None = None) -> None:
        for label, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not value:
                raise EndpointError(f"source {redact_url(url)!r}: the {label} name is empty")
        self.stream, self.group, self.consumer = stream, group, consumer
        self.name = f"{redact_url(url)}?stream={stream}&group={group}&consumer={consumer}"
        self._client = redis_client(url, socket_timeout_s=_SOCKET_TIMEOUT_S)
        self._report = _Reporter(self.name, on_event)
        self._fields = TickFields()
        self._cursor: str | None = "0"   # id after which pending entries are re-read; None once drained
        self._closed = False
        try:
            broker_call(self.name, "connecting", self._client.ping)
            broker_call(self.name, "creating the consumer group", self._create_group)
        except BaseException:
            self._client.close()
            raise

    def _create_group(self) -> None:
        import redis

        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def read(self, max_rows: int, timeout_s: float) -> ObservationBatch:
        """Up to ``max_rows`` ticks: this consumer's pending entries first, then new ones."""
        _check_read(max_rows)
        rows = _Columns()
        if self._closed:
            return rows.batch()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while not rows:
            if self._cursor is not None:
                entries = self._xreadgroup(self._cursor, max_rows, None)
                if not entries:
                    self._cursor = None
                    continue
                self._cursor = _text(entries[-1][0])
            else:
                left_ms = int((deadline - time.monotonic()) * 1000)
                entries = self._xreadgroup(">", max_rows, min(left_ms, _MAX_BLOCK_MS) if left_ms > 0 else None)
            self._parse(entries, rows)
            if not entries or time.monotonic() >= deadline:
                break
        return rows.batch()

    def _xreadgroup(self, cursor: str, count: int, block_ms: int | None) -> list[tuple[Any, Any]]:
        reply = broker_call(self.name, "XREADGROUP", lambda: self._client.xreadgroup(
            self.group, self.consumer, {self.stream: cursor}, count=count, block=block_ms))
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return list(next(iter(reply.values()), [[]])[0])
        return list(reply[0][1])

    def _parse(self, entries: list[tuple[Any, Any]], rows: _Columns) -> None:
        bad: list[str] = []
        fields = self._fields
        for raw_id, record in entries:
            entry = _text(raw_id)
            try:
                if not record:
                    raise DomainError("the entry was deleted from the stream while pending")
                try:
                    raw = record[b"asset"], record[b"timestamp"], record[b"value"]
                except KeyError:
                    found = {_text(k) for k in record}
                    missing = [key for key in _ENTRY_FIELDS if key not in found]
                    raise DomainError(f"entry without {', '.join(repr(k) for k in missing)}") from None
                asset, stamp_ns, number = json_fields(fields, *map(_field, raw, _ENTRY_FIELDS))
            except (DomainError, TimestampError) as exc:
                self._report(entry, str(exc))
                bad.append(entry)
                continue
            rows.assets.append(asset)
            rows.stamps.append(stamp_ns)
            rows.values.append(number)
            rows.receipts.append(entry)
        if bad:
            broker_call(self.name, "XACK of malformed entries", lambda: self._client.xack(self.stream, self.group,
                                                                                          *bad))

    def acknowledge(self, batches: Sequence[ObservationBatch]) -> None:
        """``XACK`` every receipt of ``batches`` (pipelined, 10 000 ids per command)."""
        ids = [receipt for batch in batches for receipt in batch.receipts]
        if not ids or self._closed:
            return
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(ids), 10_000):
            pipe.xack(self.stream, self.group, *ids[start:start + 10_000])
        broker_call(self.name, "XACK", pipe.execute)

    def close(self) -> None:
        """Close the connection (idempotent); unacknowledged entries stay pending for the next start."""
        if not self._closed:
            self._closed = True
            self._client.close()


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _field(raw: bytes, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DomainError(f"field {key!r}: {undecodable(raw)}") from None


__all__ = ["MAX_LINE_BYTES", "BrokerError", "EndpointError", "FileSource", "RedisStreamSource", "StdinSource",
           "redact_url"]
