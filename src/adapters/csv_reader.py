"""Reading observations from a CSV file: the one reader of the command line and of file sources.

A file holds either ``timestamp,value`` rows (ISO 8601 with a timezone, or integer UTC
nanoseconds) or a single column of values, spaced ``signal_sampling_interval`` seconds apart
from the epoch. It must be UTF-8 (a leading byte-order mark is allowed). Blank rows are ignored.

Rules that keep a row from being lost unseen:

* the first non-blank row is a header only when it is not data: its value is not a number
  (after stripping whitespace and a BOM) and, with two columns, its timestamp is not a
  timestamp either; a header is passed to ``on_header`` (the command line prints a note for a
  one-column header, which is the ambiguous case);
* a one-column first row that starts like a number but is not one (a typo such as ``1O0.5``)
  is an error, not a header;
* every later row is an observation or an error naming the file and line: nothing is skipped.

Every problem with the content raises a :class:`DomainError` (or :class:`TimestampError`,
:class:`ConfigError`) whose message names the file and the line; I/O problems (a missing file,
a directory) raise ``OSError`` as ``open`` does.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from ..domain import ConfigError, DomainError, TimestampError

NS_PER_SECOND = 1_000_000_000
#: Timestamps are int64 nanoseconds; the smallest int64 is reserved (the core's "untimed").
TIMESTAMP_MIN_NS, TIMESTAMP_MAX_NS = -(2**63) + 1, 2**63 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
#: A one-column first row matching this is a mistyped number, never a header.
_NUMBER_LIKE = re.compile(r"[+-]?\.?[0-9]", re.ASCII)
#: The UTC offset that ends an ISO timestamp ("Z", "+05:00", "-0330", "+05:00:00.5"), and a
#: fraction of a second ("." or "," and digits) at the end of the part before it.
_ISO_OFFSET = re.compile(r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2}(?:[.,][0-9]*)?)?)?)\Z", re.ASCII)
_FRACTION = re.compile(r"[.,]([0-9]*)\Z", re.ASCII)
_BOM = "\ufeff"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@attrs.frozen
class HeaderRow:
    """The first non-blank row of a file, read as column names rather than as an observation."""

    line: int                 # 1-based line number in the file
    cells: tuple[str, ...]    # the names, stripped of whitespace and BOM


def _clean(cell: str) -> str:
    return cell.strip().strip(_BOM).strip()


def parse_number(cell: str) -> float | None:
    """The float a cell holds (``nan`` and ``inf`` included), or None when it is not a number."""
    try:
        return float(_clean(cell))
    except ValueError:
        return None


def parse_timestamp_ns(cell: str) -> int | None:
    """UTC nanoseconds from integer nanoseconds or ISO 8601; None when the cell is neither.

    A fraction of a second is read exactly, to the nanosecond: up to 9 digits
    (``2024-01-01T00:00:00.000000999Z`` is 999 ns after the second).

    Raises TimestampError for an ISO timestamp without a timezone, with more than 9 digits in
    its fraction of a second (or more than 6 in a UTC offset's), and for a time outside int64
    nanoseconds (about the years 1678 to 2262).
    """
    text = _clean(cell)
    if _INTEGER.fullmatch(text):
        stamp = int(text) if len(text) <= 20 else TIMESTAMP_MAX_NS + 1  # (int() refuses > 4300 digits)
    else:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise TimestampError(f"timestamp {text!r} has no timezone (write e.g. {text}Z or {text}+00:00)")
        fraction_ns = _fraction_ns(text, moment)
        try:
            delta = moment.replace(microsecond=0) - _EPOCH
        except OverflowError:
            delta = dt.timedelta.max
        # (delta.microseconds: those of a UTC offset such as +05:00:00.5; the time's own are in fraction_ns)
        stamp = (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000 + fraction_ns
    if not TIMESTAMP_MIN_NS <= stamp <= TIMESTAMP_MAX_NS:
        raise TimestampError(f"timestamp {text!r} is outside int64 nanoseconds (about 1678 to 2262)")
    return stamp


def _fraction_ns(text: str, moment: dt.datetime) -> int:
    """The fraction of a second of the ISO timestamp ``text`` (which parses as ``moment``) in
    nanoseconds: ``datetime`` keeps only microseconds, so the digits are read from the text."""
    offset = _ISO_OFFSET.search(text)
    clock, zone = (text, "") if offset is None else (text[:offset.start()], text[offset.start():])
    if (zone_fraction := _FRACTION.search(zone)) and len(zone_fraction[1]) > 6:
        raise TimestampError(f"timestamp {text!r}: its UTC offset has a fraction of a second finer than a "
                             "microsecond")
    fraction = _FRACTION.search(clock)
    if fraction is None:
        if moment.microsecond:  # a form this reading does not know: refused rather than rounded
            raise TimestampError(f"timestamp {text!r}: cannot read its fraction of a second exactly")
        return 0
    digits = fraction[1]
    if len(digits) > 9:
        raise TimestampError(f"timestamp {text!r} has {len(digits)} digits after the seconds; at most 9 "
                             "(nanoseconds) are read exactly")
    if int(digits[:6].ljust(6, "0")) != moment.microsecond:  # (as above)
        raise TimestampError(f"timestamp {text!r}: cannot read its fraction of a second exactly")
    return int(digits.ljust(9, "0"))


def read_observations(path: str | Path, sampling_interval_s: float, *,
                      on_header: Callable[[HeaderRow], None] | None = None) -> Iterator[tuple[int, float]]:
    """Yield ``(timestamp_ns, value)`` for each data row of the CSV file at ``path``, in order.

    Args:
        path: a UTF-8 CSV file, ``timestamp,value`` or one value column (see the module doc).
        sampling_interval_s: spacing in seconds of a file without timestamps (tick i is at
            ``i * round(sampling_interval_s * 1e9)`` ns); unused when the file has timestamps.
        on_header: called once with the header row when the first row is one.

    Raises:
        DomainError, TimestampError, ConfigError: bad content, naming the file and the line.
        OSError: the file cannot be opened or read.
    """
    path = Path(path)
    step_ns = round(sampling_interval_s * NS_PER_SECOND)
    with path.open("rb") as raw:
        head = raw.read(3)
        _refuse_utf16(head[:2], path)
        raw.seek(3 if head == codecs.BOM_UTF8 else 0)  # (utf-8-sig would drop a lone b"\xef" at EOF)
        rows = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        width = index = 0
        try:
            for row in rows:
                cells = [_clean(cell) for cell in row]
                if not any(cells):
                    continue
                where = f"{path}, line {rows.line_num}"
                if not width:
                    width = _width(cells, where)
                    if width == 1 and step_ns < 1:
                        raise ConfigError(f"{where}: a file without timestamps is spaced by [numerical] "
                                          f"signal_sampling_interval = {sampling_interval_s!r} s, below 1 ns")
                    if _is_header(cells, where):
                        if on_header is not None:
                            on_header(HeaderRow(rows.line_num, tuple(cells)))
                        continue
                elif len(cells) != width:
                    raise DomainError(f"{where}: {len(cells)} fields, but the file has {width} column(s)")
                value = parse_number(cells[-1])
                if value is None:
                    raise DomainError(f"{where}: value {cells[-1]!r} is not a number{_nul_hint(cells[-1])}")
                yield (_row_timestamp(cells[0], where) if width == 2 else _spaced(index, step_ns, where)), value
                index += 1
        except UnicodeDecodeError:
            raise DomainError(_not_utf8(path)) from None
        except csv.Error as exc:
            raise DomainError(f"{path}, line {rows.line_num}: not readable as CSV: {exc}") from None


def _nul_hint(cell: str) -> str:
    return " (it holds NUL bytes: UTF-16 text? save the file as UTF-8)" if "\x00" in cell else ""


def _width(cells: list[str], where: str) -> int:
    if len(cells) > 2:
        raise DomainError(f"{where}: expected 'timestamp,value' or one value column, got {len(cells)} fields")
    return len(cells)


def _is_header(cells: list[str], where: str) -> bool:
    """Whether the first non-blank row names the columns (see the module doc)."""
    if parse_number(cells[-1]) is not None:
        return False
    if len(cells) == 1:
        if _NUMBER_LIKE.match(cells[0]):
            raise DomainError(f"{where}: {cells[0]!r} is not a number (a one-column file's header must "
                              "not start like a number)")
        return True
    try:
        is_timestamp = parse_timestamp_ns(cells[0]) is not None
    except TimestampError:
        is_timestamp = True
    if is_timestamp:
        raise DomainError(f"{where}: value {cells[-1]!r} is not a number{_nul_hint(cells[-1])}")
    return True


def _row_timestamp(cell: str, where: str) -> int:
    try:
        stamp = parse_timestamp_ns(cell)
    except TimestampError as exc:
        raise TimestampError(f"{where}: {exc}") from None
    if stamp is None:
        raise DomainError(f"{where}: cannot parse timestamp {cell!r} (ISO 8601 with a timezone, or integer "
                          "UTC nanoseconds)")
    return stamp


def _spaced(index: int, step_ns: int, where: str) -> int:
    stamp = index * step_ns
    if stamp > TIMESTAMP_MAX_NS:
        raise ConfigError(f"{where}: tick {index}, spaced {step_ns:_} ns apart by [numerical] "
                          "signal_sampling_interval, falls beyond int64 nanoseconds (the year 2262); give the "
                          "file timestamps or a shorter interval")
    return stamp


def _refuse_utf16(head: bytes, path: Path) -> None:
    if head in _UTF16_BOMS:
        raise DomainError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save the file as UTF-8")


def _not_utf8(path: Path) -> str:
    """The message for a file that is not UTF-8, naming the first line that does not decode."""
    with path.open("rb") as raw:
        for number, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path}, line {number}: not UTF-8 text (byte 0x{line[exc.start]:02X} at column "
                        f"{exc.start + 1}); save the file as UTF-8, the only encoding read")
    return f"{path}: not UTF-8 text; save the file as UTF-8, the only encoding read"


__all__ = ["HeaderRow", "parse_number", "parse_timestamp_ns", "read_observations"]
