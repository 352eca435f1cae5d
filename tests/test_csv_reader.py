"""The CSV reader of observations: headers, typos, encodings, and no row lost unreported."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from usp import ConfigError, DomainError, TimestampError, USPError
from usp.adapters.csv_reader import (
    MAX_ASSET_CHARS,
    HeaderRow,
    TickFields,
    excerpt,
    is_utf16,
    read_observations,
    undecodable,
)

BOM = "\ufeff"


def _read(path, interval=1.0):
    headers: list[HeaderRow] = []
    rows = list(read_observations(path, interval, on_header=headers.append))
    return rows, headers


def test_a_bom_before_a_first_value_keeps_the_value(tmp_path):
    data = tmp_path / "v.csv"
    data.write_bytes((BOM + "101.5\n102.0\n").encode())
    rows, headers = _read(data)
    assert [v for _, v in rows] == [101.5, 102.0] and headers == []
    data.write_bytes((BOM + "timestamp,value\n2026-01-02T00:00:00Z,1.5\n").encode())
    rows, headers = _read(data)
    assert rows == [(1_767_312_000 * 10**9, 1.5)] and headers == [HeaderRow(1, ("timestamp", "value"))]


def test_a_one_column_header_is_reported_and_a_mistyped_first_value_is_an_error(tmp_path):
    data = tmp_path / "v.csv"
    data.write_text("price\n1.0\n2.0\n")
    rows, headers = _read(data, 0.5)
    assert [s for s, _ in rows] == [0, 500_000_000] and headers == [HeaderRow(1, ("price",))]
    for typo in ("1O0.5", "-1.5e", ".5x"):
        data.write_text(f"{typo}\n1.0\n")
        with pytest.raises(DomainError, match=rf"v.csv, line 1: '{typo}' is not a number"):
            _read(data)


@pytest.mark.parametrize(("content", "error", "message"), [
    ("timestamp,value\n2026-01-02T00:00:00Z,1.0\n2026-01-02T00:00:01Z,abc\n", DomainError, "line 3: value 'abc'"),
    ("2026-01-02T00:00:00Z,1O0.5\n", DomainError, "line 1: value '1O0.5' is not a number"),
    ("2026-01-02T00:00:00,1.0\n", TimestampError, "line 1: timestamp .* has no timezone"),
    ("99999999999999999999,1.0\n", TimestampError, "outside int64 nanoseconds"),
    ("9999-01-01T00:00:00Z,1.0\n", TimestampError, "outside int64 nanoseconds"),
    ("1.0\n2026-01-02T00:00:00Z,2.0\n", DomainError, "line 2: 2 fields, but the file has 1 column"),
    ("1,2,3\n", DomainError, "line 1: expected 'timestamp,value' or one value column, got 3 fields"),
    ("1.0\n\x002.0\n", DomainError, r"line 2: value '\\x002.0' is not a number \(it holds NUL bytes: UTF-16"),
    ("1.0\n" + "9" * 200_000 + "\n", DomainError, "line 2: not readable as CSV: field larger than field limit"),
])
def test_bad_rows_are_errors_naming_file_and_line(tmp_path, content, error, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    with pytest.raises(error, match=message):
        _read(data)


@pytest.mark.parametrize(("cell", "expected"), [
    ("2024-01-01T00:00:00.000000999Z", 1_704_067_200_000_000_999),    # used to read as ...000000000
    ("2024-01-01T00:00:00.123456789+05:00", 1_704_049_200_123_456_789),
    ("2024-01-01 00:00:00,5-01:00", 1_704_070_800_500_000_000),       # a comma (quoted), a space, one digit
    ("20240101T000000.0000001Z", 1_704_067_200_000_000_100),           # basic format, 7 digits
    ("2024-01-01T00:00:00Z", 1_704_067_200_000_000_000),
    ("2024-01-01T00:00:00+05:00:00.5", 1_704_049_199_500_000_000),     # an offset with a fraction
    ("1677-09-21T00:12:43.145224193Z", -(2**63) + 1),                  # the ends of int64 nanoseconds
    ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
])
def test_iso_fractions_of_a_second_are_read_to_the_nanosecond(tmp_path, cell, expected):
    data = tmp_path / "v.csv"
    quoted = f'"{cell}"' if "," in cell else cell
    data.write_text(f"timestamp,value\n{quoted},1.5\n")
    assert _read(data)[0] == [(expected, 1.5)]


@pytest.mark.parametrize(("cell", "message"), [
    ("2024-01-01T00:00:00.0000000001Z", "has 10 digits after the seconds; at most 9"),
    ("2024-01-01T00:00:00.123456789123+00:00", "has 12 digits after the seconds; at most 9"),
    ("2024-01-01T00:00:00+05:00:00.1234567", "UTC offset has a fraction of a second finer than a microsecond"),
    ("1677-09-21T00:12:43.145224192Z", "outside int64 nanoseconds"),
    ("2262-04-11T23:47:16.854775808Z", "outside int64 nanoseconds"),
])
def test_iso_fractions_that_cannot_be_read_exactly_are_errors_naming_the_line(tmp_path, cell, message):
    data = tmp_path / "v.csv"
    data.write_text(f"timestamp,value\n2024-01-01T00:00:00Z,1.0\n{cell},1.5\n")
    with pytest.raises(TimestampError, match=rf"v\.csv, line 3: timestamp '{re.escape(cell)}'.*{message}"):
        _read(data)


def test_other_encodings_are_errors_naming_the_file(tmp_path):
    data = tmp_path / "latin.csv"
    data.write_bytes("valeur\n1.5\n2.5 °C\n".encode("latin-1"))
    with pytest.raises(DomainError, match=r"latin.csv, line 3: not UTF-8 text \(byte 0xB0 at column 5\)"):
        _read(data)
    data.write_bytes("value\n1.5\n".encode("utf-16"))
    with pytest.raises(DomainError, match=r"latin\.csv: UTF-16 text"):
        _read(data)


def test_spacing_beyond_int64_names_the_key(tmp_path):
    data = tmp_path / "v.csv"
    data.write_text("1\n2\n3\n")
    with pytest.raises(ConfigError, match=r"line 3: tick 2.*signal_sampling_interval"):
        _read(data, 5e9)
    with pytest.raises(ConfigError, match=r"signal_sampling_interval .* below 1 ns"):
        _read(data, 1e-12)


# --- property: random content never gives a traceback, and never loses a readable row -----------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_OFFSETS = st.sampled_from(["Z", "+00:00", "+05:30", "-11:00", "+14:00", "-0930"])


def _offset(text: str) -> dt.timedelta:
    if text == "Z":
        return dt.timedelta(0)
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))


@st.composite
def iso_cells(draw) -> str:
    """An ISO 8601 timestamp with a timezone and a fraction of 0 to 12 digits, near int64's range."""
    moment = draw(st.datetimes(dt.datetime(1677, 9, 20), dt.datetime(2262, 4, 13)))
    size = draw(st.sampled_from([0, 1, 3, 6, 7, 8, 9, 9, 9, 10, 12]))  # mostly up to 9 digits, the ones read
    digits = draw(st.text("0123456789", min_size=size, max_size=size))
    return f"{moment:%Y-%m-%dT%H:%M:%S}" + (f".{digits}" if digits else "") + draw(_OFFSETS)


def _iso_oracle(cell: str) -> int | None:
    """What a cell drawn by ``iso_cells`` must read as: UTC ns, or None when it must be refused."""
    text = cell.strip().strip(BOM).strip()
    found = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)", text)
    assert found is not None, cell
    whole = dt.datetime.strptime(found[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC) - _offset(found[3])
    digits = found[2] or ""
    stamp = (whole - _EPOCH) // dt.timedelta(seconds=1) * 10**9 + int(digits.ljust(9, "0") or 0)
    return stamp if len(digits) <= 9 and -(2**63) < stamp < 2**63 else None


_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    iso_cells(),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["value", "timestamp", "1O0.5", "nan", "-inf", " 7 ", "", "1e400", "²", "1_0", BOM + "3.5",
                     "2026-01-02T09:30:00Z", "2026-01-02T09:30:00", "2026-01-02T09:30:00+05:00", "0x10",
                     '"4,5"', "é", "9999-12-31T23:59:59+00:00"]),
    st.text(string.printable, max_size=6),
)
_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])


@st.composite
def csv_files(draw) -> bytes:
    """A file's bytes: rows of 1–3 random cells (or of ISO timestamps and values) in a random encoding,
    maybe with stray bytes."""
    width = draw(st.integers(1, 2))
    if width == 2 and draw(st.booleans()):  # a timestamped file, mostly readable: ISO times and values
        rows = draw(st.lists(st.tuples(iso_cells(), st.floats(-1e6, 1e6).map(repr)), max_size=12))
    else:
        rows = draw(st.lists(st.lists(_CELLS, min_size=width, max_size=width + draw(st.sampled_from([0, 0, 1]))),
                             max_size=12))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = (BOM if draw(st.booleans()) else "") + newline.join(",".join(row) for row in rows) + newline
    data = text.encode(draw(_ENCODINGS), errors="replace")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at:]
    return draw(st.one_of(st.just(data), st.binary(max_size=64))) if draw(st.booleans()) else data


def _nonblank_rows(data: bytes) -> list[list[str]] | None:
    """The rows an independent reading of ``data`` finds (None when it is not UTF-8)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    rows = csv.reader(io.StringIO(text, newline=""))
    return [row for row in rows if any(c.strip().strip(BOM).strip() for c in row)]


_ISO_CELL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)")


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=csv_files())
@example(data=b"\xef")  # a truncated BOM (a decoder for utf-8-sig drops it silently)
@example(data=b"\xef\xbb\xbf1.5\n\xef\xbb\xbf2.5\n2\xc3")
def test_random_content_never_tracebacks_and_never_loses_a_row_silently(tmp_path, data):
    path = tmp_path / "random.csv"
    path.write_bytes(data)
    try:
        rows, headers = _read(path, 0.001)
    except USPError as exc:
        assert str(path) in str(exc)  # a refused file is named, with the reason
        return
    except csv.Error as exc:  # pragma: no cover - the reader must translate these
        raise AssertionError(f"csv.Error escaped: {exc}") from exc
    expected = _nonblank_rows(data)
    assert expected is not None, "a file that is not UTF-8 was read"
    assert len(rows) + len(headers) == len(expected)  # every row is an observation or the reported header
    assert len(headers) <= 1 and all(h.line >= 1 for h in headers)
    data_rows = expected[len(headers):]
    for (stamp, value), row in zip(rows, data_rows, strict=True):
        assert _same(value, float(row[-1].strip().strip(BOM).strip()))
        if len(row) == 2 and _ISO_CELL.fullmatch(row[0].strip().strip(BOM).strip()):
            assert stamp == _iso_oracle(row[0])  # exactly, to the nanosecond (None: it had to be refused)
    if headers:  # a header is never a number
        assert all(_not_a_number(cell) for cell in headers[0].cells[-1:])


def _not_a_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return True
    return False


# --- ticks of many assets (``asset,timestamp,value``): the same cell rules ---------------------------


def test_tick_fields_read_assets_timestamps_and_values():
    fields = TickFields()
    assert fields.csv_tick(" EUR/USD ,2024-01-01T00:00:00.5+01:00, 1.25 ") == ("EUR/USD", 1_704_063_600_500_000_000,
                                                                               1.25)
    assert fields.csv_tick('"a,""b""",17,-3') == ('a,"b"', 17, -3.0)
    assert fields.asset(BOM + "BTC") == "BTC" and fields.asset("x" * MAX_ASSET_CHARS) == "x" * 200
    assert math.isnan(fields.value("nan")) and fields.value(" -inf ") == -math.inf  # numbers, not malformed
    assert fields.timestamp("2024-01-01T00:00:00Z") == fields.timestamp("2024-01-01T00:00:00Z") == 1_704_067_200 * 10**9


@pytest.mark.parametrize(("line", "error", "message"), [
    ("A,1", DomainError, r"2 field\(s\), expected 3: asset,timestamp,value"),
    (" ,1,2", DomainError, "empty asset id"),
    ("x" * 201 + ",1,2", DomainError, "asset id of 201 characters"),
    ("A\tB,1,2", DomainError, "holds control characters"),
    ("A\x85B,1,2", DomainError, "holds control characters"),
    ("A,2024-01-01T00:00:00,2", TimestampError, "has no timezone"),
    ("A,soon,2", DomainError, "cannot parse timestamp 'soon'"),
    ("A," + "1" * 100 + ",2", TimestampError, r"'1{80}'… cannot be read exactly"),
    ("A,1,1O0.5", DomainError, "value '1O0.5' is not a number"),
    ("A,1," + "z" * 100, DomainError, r"value 'z{80}'… is not a number"),
    ('A,1,"2', DomainError, "not readable as CSV"),
])
def test_tick_fields_refuse_bad_cells_with_a_short_reason(line, error, message):
    with pytest.raises(error, match=message) as caught:
        TickFields().csv_tick(line)
    assert len(str(caught.value)) < 300


def test_a_tick_header_is_what_a_two_column_header_is():
    assert TickFields.is_csv_header("asset,timestamp,value")
    assert TickFields.is_csv_header(BOM + "id , time , price")
    assert not TickFields.is_csv_header("A,2024-01-01T00:00:00Z,price")  # a tick with a bad value
    assert not TickFields.is_csv_header("A,2024-01-01T00:00:00,price")   # a naive timestamp is still one
    assert not TickFields.is_csv_header("asset,timestamp,1.5")
    assert not TickFields.is_csv_header("asset,value")


def test_tick_helpers():
    assert excerpt("abc") == "'abc'" and excerpt("y" * 81) == repr("y" * 80) + "…"
    assert undecodable("é".encode()) is None
    assert undecodable(b"ab\xff") == ("not UTF-8 text (byte 0xFF at column 3); save the file as UTF-8, the only "
                                      "encoding read")
    assert is_utf16("x".encode("utf-16")) and not is_utf16(b"\xef\xbb\xbfx")


_PLAIN_CELLS = _CELLS.filter(lambda cell: not set(cell) & set(',"\r\n'))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stamp=_PLAIN_CELLS, value=_PLAIN_CELLS)
def test_a_tick_row_reads_its_cells_as_a_timestamped_row_of_usp_run_does(tmp_path, stamp, value):
    """The one reader: ``asset,T,V`` gives the timestamp and value that ``T,V`` gives ``usp run``,
    or both refuse it."""
    path = tmp_path / "row.csv"
    path.write_text(f"timestamp,value\n{stamp},{value}\n", encoding="utf-8")
    try:
        expected = list(read_observations(path, 1.0))
    except USPError:
        expected = None
    try:
        asset, got_stamp, got_value = TickFields().csv_tick(f"A,{stamp},{value}")
    except USPError:
        assert expected is None or len(expected) == 0
        return
    assert expected is not None and len(expected) == 1 and asset == "A"
    assert got_stamp == expected[0][0] and _same(got_value, expected[0][1])


def _field(low: int, high: int, width: int = 2) -> st.SearchStrategy[str]:
    """Mostly in ``[low, high]``, sometimes any ``width`` digits (out of range)."""
    return st.one_of(st.integers(low, high), st.integers(low, high), st.integers(0, 10**width - 1)).map(
        lambda n: f"{n:0{width}d}")


_ZONES = st.one_of(st.just("Z"), st.just("+05:30"),
                   st.tuples(st.sampled_from("+-"), _field(0, 23), _field(0, 59)).map("{0[0]}{0[1]}:{0[2]}".format),
                   st.sampled_from(["", "z", "+0530", "+05:30:15"]))


@settings(max_examples=200, deadline=None)
@given(date=st.tuples(_field(1677, 2262, 4), _field(1, 12), _field(1, 31)).map("-".join),
       clock=st.tuples(_field(0, 23), _field(0, 59), _field(0, 59)).map(":".join),
       fraction=st.text("0123456789", max_size=11), zone=_ZONES, separator=st.sampled_from("TTT t"))
@example(date="2024-02-29", clock="23:59:59", fraction="999999999", zone="+23:59", separator="T")
@example(date="2023-02-29", clock="00:00:00", fraction="", zone="Z", separator="T")
def test_the_fast_rfc3339_reading_agrees_with_the_general_one(date, clock, fraction, zone, separator):
    from usp.adapters.csv_reader import _iso_ns, _rfc3339_ns

    text = f"{date}{separator}{clock}{'.' + fraction if fraction else ''}{zone}"
    fast = _rfc3339_ns(text)
    if fast is not None:  # (None: the general reading decides, e.g. "+05:75", which it reads as +06:15)
        assert fast == _iso_ns(text)
    elif separator == "T" and zone in ("Z", "+05:30") and len(fraction) <= 9 and _iso_ns(text) is not None:
        assert int(clock[:2]) > 23 or int(clock[3:5]) > 59 or int(clock[6:]) > 59  # only out-of-range fields


def test_the_fast_rfc3339_reading_takes_the_common_shapes():
    from usp.adapters.csv_reader import _rfc3339_ns

    assert _rfc3339_ns("2024-01-01T00:00:00Z") == 1_704_067_200 * 10**9
    assert _rfc3339_ns("2024-01-01T05:30:00.000000001+05:30") == 1_704_067_200 * 10**9 + 1
    assert _rfc3339_ns("2024-01-01T00:00:00+05:75") is None  # left to fromisoformat
