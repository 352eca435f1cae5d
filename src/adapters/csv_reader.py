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

The ticks of ``usp serve`` (``asset,timestamp,value``, one record per line) are read by
:class:`TickFields` with the same cell rules: the same timestamps, numbers, BOM and header rule
(the first non-blank line is a header only when its value is not a number and its timestamp is
not a timestamp). A service must outlive one bad line, so its reader raises per line and the
source reports the line and skips it (see ``usp.adapters.sources``).
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
#: The common RFC 3339 shape, read without ``datetime.fromisoformat``: its whole seconds, then the rest.
_RFC3339_SECONDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})", re.ASCII)
_RFC3339_REST = re.compile(r"(?:\.([0-9]{1,9}))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)
#: Seconds of recently read ``YYYY-MM-DDTHH:MM:SS`` prefixes (a memo: at most 4096, then cleared).
_WHOLE_SECONDS: dict[str, int] = {}
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()
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
        read = _rfc3339_ns(text)
        if read is None:
            read = _iso_ns(text)
            if read is None:
                return None
        stamp = read
    if not TIMESTAMP_MIN_NS <= stamp <= TIMESTAMP_MAX_NS:
        raise TimestampError(f"timestamp {text!r} is outside int64 nanoseconds (about 1678 to 2262)")
    return stamp


def _iso_ns(text: str) -> int | None:
    """UTC nanoseconds of any ISO 8601 text ``datetime.fromisoformat`` reads (None otherwise),
    before the range check; raises TimestampError as :func:`parse_timestamp_ns` documents."""
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
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000 + fraction_ns


def _rfc3339_ns(text: str) -> int | None:
    """UTC nanoseconds of ``text`` in the common RFC 3339 shape (``YYYY-MM-DDTHH:MM:SS``, up to 9
    fractional digits, ``Z`` or ``±HH:MM``) with every field in range, computed without
    ``datetime.fromisoformat`` (the same value as :func:`_iso_ns`, several times faster: the
    seconds of the first 19 characters are remembered); None for any other text."""
    seconds = _WHOLE_SECONDS.get(text[:19])
    if seconds is None:
        seconds = _whole_seconds(text[:19])
        if seconds is None:
            return None
    rest = _RFC3339_REST.fullmatch(text, 19)
    if rest is None:
        return None
    fraction, sign, offset_h, offset_m = rest.groups()
    if sign is not None:
        if int(offset_h) > 23 or int(offset_m) > 59:
            return None
        seconds -= (int(offset_h) * 3600 + int(offset_m) * 60) * (1 if sign == "+" else -1)
    return seconds * NS_PER_SECOND + (int(fraction.ljust(9, "0")) if fraction else 0)


def _whole_seconds(text: str) -> int | None:
    """Seconds from the epoch of a naive ``YYYY-MM-DDTHH:MM:SS`` with its fields in range (else None)."""
    match = _RFC3339_SECONDS.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = dt.date(year, month, day).toordinal() - _EPOCH_DAY
    except ValueError:
        return None
    if len(_WHOLE_SECONDS) >= 4096:
        _WHOLE_SECONDS.clear()
    seconds = _WHOLE_SECONDS[text] = days * 86_400 + hour * 3600 + minute * 60 + second
    return seconds


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
            reason = undecodable(line)
            if reason is not None:
                return f"{path}, line {number}: {reason}"
    return f"{path}: not UTF-8 text; save the file as UTF-8, the only encoding read"


def undecodable(line: bytes) -> str | None:
    """Why ``line`` is not UTF-8 text (naming the first bad byte and its column), or None when it is."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"not UTF-8 text (byte 0x{line[exc.start]:02X} at column {exc.start + 1}); save the file as "
                "UTF-8, the only encoding read")
    return None


def is_utf16(head: bytes) -> bool:
    """Whether the first bytes of a file or stream are a UTF-16 byte-order mark (text this reader refuses)."""
    return head[:2] in _UTF16_BOMS


# --- ticks of many assets: ``asset,timestamp,value``, one record per line --------------------------

#: The longest asset id, in characters (after stripping whitespace).
MAX_ASSET_CHARS = 200
#: At most this many characters of input are echoed in a reason.
EXCERPT_CHARS = 80
TICK_FIELDS = ("asset", "timestamp", "value")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_REMEMBERED = 65_536


def excerpt(text: str) -> str:
    """``repr`` of ``text`` cut to its first :data:`EXCERPT_CHARS` characters (``…`` marks a cut)."""
    return repr(text) if len(text) <= EXCERPT_CHARS else repr(text[:EXCERPT_CHARS]) + "…"


class TickFields:
    """Reads the fields of ticks ``(asset, timestamp, value)`` by the cell rules of this module.

    * asset: a non-empty id of at most :data:`MAX_ASSET_CHARS` characters after stripping
      whitespace (and a BOM), without control characters (U+0000–U+001F, U+007F–U+009F);
    * timestamp: ISO 8601 / RFC 3339 with a UTC offset, or integer UTC nanoseconds (a naive time
      is refused), read to the nanosecond by :func:`parse_timestamp_ns`;
    * value: anything :func:`parse_number` reads (``nan`` and ``inf`` included: they are not
      malformed; the predictor rejects them as tick events).

    Each method returns the field or raises :class:`DomainError` / :class:`TimestampError` with a
    one-line reason that echoes at most :data:`EXCERPT_CHARS` characters of input; the caller adds
    the location. Valid asset cells and timestamp cells are remembered (up to 65 536 of each,
    then forgotten at once), so a feed whose assets share timestamps reads each one once.
    """

    def __init__(self) -> None:
        self._assets: dict[str, str] = {}
        self._stamps: dict[str, int] = {}

    def asset(self, cell: str) -> str:
        """The asset id in ``cell``, stripped."""
        known = self._assets.get(cell)
        if known is not None:
            return known
        text = _clean(cell)
        if not text:
            raise DomainError("empty asset id")
        if len(text) > MAX_ASSET_CHARS:
            raise DomainError(f"asset id of {len(text)} characters (at most {MAX_ASSET_CHARS}): {excerpt(text)}")
        if _CONTROL.search(text):
            raise DomainError(f"asset id {excerpt(text)} holds control characters")
        _remember(self._assets, cell, text)
        return text

    def timestamp(self, cell: str) -> int:
        """UTC nanoseconds of the timestamp in ``cell``."""
        known = self._stamps.get(cell)
        if known is not None:
            return known
        try:
            stamp = parse_timestamp_ns(cell)
        except TimestampError as exc:
            if len(cell) <= EXCERPT_CHARS:
                raise
            raise TimestampError(f"timestamp {excerpt(_clean(cell))} cannot be read exactly within int64 "
                                 "nanoseconds") from exc
        if stamp is None:
            raise DomainError(f"cannot parse timestamp {excerpt(_clean(cell))} (RFC 3339 with a UTC offset, or "
                              "integer UTC nanoseconds)")
        _remember(self._stamps, cell, stamp)
        return stamp

    @staticmethod
    def value(cell: str) -> float:
        """The number in ``cell`` (NaN and infinities included)."""
        try:
            return float(cell)  # (what parse_number reads whenever float reads the cell as it is)
        except ValueError:
            value = parse_number(cell)
        if value is None:
            raise DomainError(f"value {excerpt(_clean(cell))} is not a number{_nul_hint(cell)}")
        return value

    @staticmethod
    def csv_cells(line: str) -> list[str]:
        """The cells of one CSV line (quoted cells as ``csv`` reads them; a quote left open is an error)."""
        if '"' not in line:
            return line.split(",")
        try:
            rows = list(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise DomainError(f"not readable as CSV: {exc}") from None
        return rows[0] if rows else []

    def csv_tick(self, line: str) -> tuple[str, int, float]:
        """``(asset, timestamp_ns, value)`` of one CSV line ``asset,timestamp,value``."""
        cells = self.csv_cells(line)
        if len(cells) != len(TICK_FIELDS):
            raise DomainError(f"{len(cells)} field(s), expected 3: asset,timestamp,value")
        asset, stamp, value = cells
        return self.asset(asset), self.timestamp(stamp), self.value(value)

    @staticmethod
    def is_csv_header(line: str) -> bool:
        """Whether a first non-blank line names the columns rather than holding a tick: three cells
        whose value is not a number and whose timestamp is not a timestamp (any other line is a
        tick, or malformed)."""
        try:
            cells = TickFields.csv_cells(line)
        except DomainError:
            return False
        if len(cells) != len(TICK_FIELDS) or parse_number(cells[2]) is not None:
            return False
        try:
            return parse_timestamp_ns(cells[1]) is None
        except TimestampError:
            return False


def _remember(known: dict, cell: str, parsed: object) -> None:
    if len(known) >= _REMEMBERED:
        known.clear()
    known[cell] = parsed


__all__ = ["MAX_ASSET_CHARS", "TICK_FIELDS", "HeaderRow", "TickFields", "excerpt", "is_utf16", "parse_number",
           "parse_timestamp_ns", "read_observations", "undecodable"]
