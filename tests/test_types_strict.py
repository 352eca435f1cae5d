"""Strict types at the boundary: magnitudes, ``ColumnarBatch`` values and timestamps, history.

Whatever a caller passes either comes back as a typed error (``DomainError`` for values,
``TimestampError`` naming the row for timestamps) or reaches the core exactly as given: never a
silent conversion (a bool read as 1.0, a NaN timestamp read as "untimed", a float truncated).
"""

from __future__ import annotations

import datetime as dt
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from usp import (
    ColumnarBatch,
    DomainError,
    EventCode,
    FunctionalPredictor,
    PredictorConfig,
    ProcessState,
    TimestampError,
    UniversalPredictor,
)
from usp.adapters.clocks import ReplayClock
from usp.domain._core import Out
from usp.domain._pytree import replace

SMALL = PredictorConfig(window_size=64, wtmm_buffer_size=64, wtmm_refresh_steps=8, kurtosis_window=32,
                        kernel_a_order=4, enabled_kernels=("A", "D"))
T0 = 1_800_000_000_000_000_000
MS = 1_000_000
N = 3
AWARE = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC)
AWARE_NS = 1_800_000_000 * 10**9
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: UTC offsets of the datetimes drawn: the widest (±23:59), half hours, and UTC itself.
ZONES = st.sampled_from([dt.UTC] + [dt.timezone(dt.timedelta(minutes=m)) for m in (180, -690, 840, 1439, -1439)])
#: Aware datetimes over the whole datetime range (years 1 to 9999), and close to int64's ends.
aware_datetimes = st.one_of(
    st.datetimes(timezones=ZONES),
    st.datetimes(dt.datetime(1677, 9, 20), dt.datetime(1677, 9, 23), timezones=ZONES),
    st.datetimes(dt.datetime(2262, 4, 10), dt.datetime(2262, 4, 13), timezones=ZONES))

NOT_A_MAGNITUDE = [True, False, np.bool_(True), np.array(True), np.array([False]), "101.5", b"1", None, 1 + 2j,
                   np.complex128(1.0), np.array(["1.0"]), [None], object(), 10**400]
MAGNITUDES = [1, -3, 1.5, np.int64(7), np.int32(-2), np.uint8(5), np.float32(0.25), np.float64(2.5),
              np.array(1.5), np.array([1.5]), jnp.float64(0.5), jnp.array([0.5]), [2.0]]


def _id(value) -> str:
    """A test id that is the same in every process (no object addresses)."""
    return f"{type(value).__name__}:{value!r:.24}" if type(value) is not object else "object"


@pytest.fixture(scope="module")
def functional() -> FunctionalPredictor:
    return FunctionalPredictor(SMALL, clock=ReplayClock())


@pytest.fixture(scope="module")
def warm_batch(functional):
    """N warm assets whose last tick was timed at T0 (so earlier timestamps are out of order)."""
    history = np.cumsum(np.random.default_rng(3).standard_normal((N, 200)), axis=1)
    states, _ = functional.fit_history(functional.init_state(N), history)
    states, _ = functional.step_batch(states, ColumnarBatch(history[:, -1], np.full(N, T0)))
    return states


@pytest.mark.parametrize("magnitude", NOT_A_MAGNITUDE, ids=_id)
def test_non_numbers_are_refused_as_magnitudes(magnitude):
    with pytest.raises(DomainError, match=r"real number|float64"):
        ProcessState(magnitude, T0)


def test_a_refused_magnitude_leaves_the_predictor_untouched():
    predictor = UniversalPredictor(SMALL, clock=ReplayClock())
    before = predictor.state
    for magnitude in (True, "101.5", None):  # during calibration, where True used to bend the state
        with pytest.raises(DomainError):
            predictor.step(ProcessState(magnitude, T0))
    with pytest.raises(DomainError, match="ProcessState"):
        predictor.step(1.0)  # not an observation at all
    assert predictor.state is before


@pytest.mark.parametrize("magnitude", MAGNITUDES, ids=_id)
def test_ints_floats_and_numeric_arrays_are_magnitudes(functional, magnitude):
    state = functional.init_state()
    _, given_output, _ = functional.step_raw(state, ProcessState(magnitude, T0))
    _, float_output, _ = functional.step_raw(state, ProcessState(float(np.asarray(magnitude).reshape(())), T0))
    np.testing.assert_array_equal(given_output, float_output)


@pytest.mark.parametrize("stamp", [float(T0), math.nan, True, None, "2027-01-15", dt.datetime(2027, 1, 15),
                                   2**63, -(2**63)], ids=_id)
def test_bad_timestamps_are_refused_when_the_observation_is_built(stamp):
    with pytest.raises(TimestampError):
        ProcessState(1.0, stamp)


@pytest.mark.parametrize(("stamps", "row"), [
    (np.array([T0, math.nan, T0]), 1),            # NaN used to become the internal "untimed" value
    (np.array([T0 + 0.0, T0 + 1.0, T0 + 2.0]), 0),  # float ns used to be truncated silently
    ([T0, T0, float(T0)], 2),
    ([T0, dt.datetime(2027, 1, 15), T0], 1),        # naive
    ([T0, T0, True], 2),
    ([None, T0, T0], 0),
    (np.array([T0, T0, 2**64 - 1], dtype=np.uint64), 2),
    (np.array([T0, -(2**63), T0]), 1),            # the reserved "untimed" marker
    (np.array([T0, T0, T0], dtype="datetime64[ns]"), 0),
    (np.array([T0, "x", T0], dtype=object), 1),
])
def test_columnar_timestamps_must_be_integer_ns_or_aware_datetimes(stamps, row):
    with pytest.raises(TimestampError, match=f"row {row}\\b"):
        ColumnarBatch(np.zeros(3), stamps)


@settings(max_examples=300, deadline=None)
@given(stamp=st.one_of(aware_datetimes, st.datetimes()))
def test_process_state_times_are_refused_or_exact_over_the_whole_datetime_range(stamp):
    expected = None if stamp.tzinfo is None else _datetime_ns(stamp)
    if expected is None:  # naive, or outside int64 nanoseconds (about 1678 to 2262)
        with pytest.raises(TimestampError):
            ProcessState(1.0, stamp)
        with pytest.raises(TimestampError, match=r"row 1\b"):
            ColumnarBatch([1.0, 2.0], [T0, stamp])
        return
    assert ProcessState(1.0, stamp).timestamp_ns == expected
    assert ColumnarBatch([1.0, 2.0], [T0, stamp]).timestamps_ns.tolist() == [T0, expected]


def test_a_refused_timestamp_never_reaches_the_clock():
    clock = ReplayClock()
    predictor = UniversalPredictor(SMALL, clock=clock)
    predictor.step(ProcessState(1.0, T0))
    for bad in (dt.datetime(9999, 1, 1, tzinfo=dt.UTC), dt.datetime(1, 1, 1, tzinfo=dt.UTC),
                dt.datetime(2262, 4, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5)))):
        with pytest.raises(TimestampError, match="outside int64 nanoseconds"):
            ProcessState(1.0, bad)
        with pytest.raises(TimestampError, match=r"row 1\b.*outside int64 nanoseconds"):
            ColumnarBatch([1.0, 2.0], [T0, bad])
        checked = ProcessState(1.0, T0)
        object.__setattr__(checked, "timestamp_utc", bad)  # changed after its check: checked again, first
        with pytest.raises(TimestampError, match="outside int64 nanoseconds"):
            predictor.step(checked)
    assert clock.now_ns() == T0
    count = int(predictor.state.count)
    output, _ = predictor.step_raw(ProcessState(2.0, T0 + MS))  # later valid ticks are not poisoned
    assert int(output[Out.EVENTS]) & int(EventCode.rejected()) == 0
    assert int(predictor.state.count) == count + 1 and clock.now_ns() == T0 + MS
    batch = ColumnarBatch([1.0], [T0])
    with pytest.raises(ValueError, match="read-only"):  # a checked batch cannot be changed afterwards
        batch.timestamps_ns[0] = -(2**63)
    with pytest.raises(ValueError, match="read-only"):
        batch.values[0] = True


def test_columnar_timestamps_accept_integer_arrays_and_aware_datetimes():
    for stamps in (np.full(3, T0), np.full(3, T0, dtype=np.uint64), [T0, np.int64(T0), AWARE],
                   np.array([T0, T0, AWARE], dtype=object)):
        batch = ColumnarBatch(np.zeros(3), stamps)
        assert batch.timestamps_ns.dtype == np.int64
        assert batch.timestamps_ns[:2].tolist() == [T0, T0]
    assert ColumnarBatch([1.0], [AWARE]).timestamps_ns.tolist() == [AWARE_NS]


@pytest.mark.parametrize(("values", "stamps", "match"), [
    (np.zeros((3, 1)), np.full(3, T0), "one-dimensional"),
    (np.zeros(3), np.full((3, 1), T0), "one-dimensional"),
    (np.zeros(3), np.full(2, T0), "one length"),
    (1.0, [T0], "1-D array"),
    (np.array([True, False, True]), np.full(3, T0), "dtype bool"),
    ([1.0, True, 2.0], np.full(3, T0), "row 1"),
    ([1.0, 2.0, "3"], np.full(3, T0), "row 2"),
    (np.array(["1", "2", "3"]), np.full(3, T0), "dtype"),
])
def test_columnar_values_must_be_a_1d_numeric_array_of_the_timestamps_length(values, stamps, match):
    with pytest.raises(DomainError, match=match):
        ColumnarBatch(values, stamps)


def test_fit_history_refuses_non_numbers():
    predictor = UniversalPredictor(SMALL, clock=ReplayClock())
    before = predictor.state
    history = [0.1 * i for i in range(SMALL.wtmm_buffer_size)]
    for bad in ([*history, True], [*history, None], [*history, "1.0"], np.ones(100, dtype=bool)):
        with pytest.raises(DomainError):
            predictor.fit_history(bad)
    assert predictor.state is before


# --- property: nothing reaches the core unchecked -------------------------------------------------

class _Bad(Exception):
    """Oracle: the batch must be refused with this error type (and, for timestamps, this row)."""

    def __init__(self, kind: type[Exception], row: int | None = None) -> None:
        super().__init__(kind.__name__, row)
        self.kind, self.row = kind, row


def _expected_value(value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _Bad(DomainError)
    if isinstance(value, int) and abs(value) >= 2**1024:
        raise _Bad(DomainError)
    return float(value)


def _datetime_ns(stamp: dt.datetime) -> int | None:
    """An aware datetime's UTC nanoseconds when they fit the core's int64 (−2⁶³ excluded), else None."""
    nanoseconds = (stamp - EPOCH) // dt.timedelta(microseconds=1) * 1000
    return nanoseconds if -(2**63) < nanoseconds < 2**63 else None


def _expected_stamp(stamp, row: int) -> int:
    if isinstance(stamp, dt.datetime):
        nanoseconds = None if stamp.tzinfo is None else _datetime_ns(stamp)
        if nanoseconds is None:
            raise _Bad(TimestampError, row)
        return nanoseconds
    integer = isinstance(stamp, (int, np.integer)) and not isinstance(stamp, (bool, np.bool_))
    if integer and -(2**63) < int(stamp) < 2**63:
        return int(stamp)
    raise _Bad(TimestampError, row)


def _expected(values, stamps) -> tuple[list[float], list[int]]:
    """What ColumnarBatch must hold, or the error it must raise (values are checked first)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise _Bad(DomainError)
        floats = values.astype(np.float64).tolist()
    else:
        floats = [_expected_value(v) for v in values]
    if isinstance(stamps, np.ndarray) and stamps.dtype.kind == "f":
        nan_rows = np.flatnonzero(~np.isfinite(stamps))  # the first NaN or ±inf, else row 0
        raise _Bad(TimestampError, int(nan_rows[0]) if nan_rows.size else 0)
    ints = [_expected_stamp(s, row) for row, s in enumerate(stamps.tolist() if isinstance(stamps, np.ndarray)
                                                            else stamps)]
    if len(floats) != len(ints):
        raise _Bad(DomainError)
    return floats, ints


value_items = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10), st.sampled_from([1e101, -1e300]),
    st.integers(-(10**6), 10**6), st.just(10**400), st.booleans(), st.none(), st.text(max_size=3),
    st.sampled_from([np.float32(1.5), np.int64(3), np.bool_(True)]))
valid_values = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10),
                                  st.integers(-5, 5)), min_size=N, max_size=N)
value_columns = st.one_of(
    st.lists(value_items, min_size=N - 1, max_size=N + 1), valid_values, valid_values.map(np.asarray),
    st.lists(st.integers(-5, 5), min_size=N, max_size=N).map(np.asarray),
    st.lists(st.booleans(), min_size=N, max_size=N).map(np.asarray))
stamp_items = st.one_of(
    st.integers(T0 - 10**12, T0 + 10**12), st.integers(-(2**63) + 1, 2**63 - 1), st.sampled_from([2**63, -(2**63)]),
    st.floats(allow_nan=True), st.just(float(T0)), st.booleans(), st.none(),
    st.sampled_from([AWARE, AWARE.replace(tzinfo=None), AWARE.astimezone(dt.timezone(dt.timedelta(hours=3)))]),
    aware_datetimes, st.datetimes())
near_aware = st.datetimes(dt.datetime(2027, 1, 15, 7, 40), dt.datetime(2027, 1, 15, 8, 20), timezones=ZONES).map(
    lambda stamp: stamp.replace(tzinfo=None).replace(tzinfo=dt.UTC).astimezone(stamp.tzinfo))
valid_stamps = st.lists(st.one_of(st.integers(T0 - 10**12, T0 + 10**12), st.just(AWARE), near_aware),
                        min_size=N, max_size=N)
stamp_columns = st.one_of(
    st.lists(stamp_items, min_size=N - 1, max_size=N + 1), valid_stamps,
    st.lists(st.integers(T0 - 10**12, T0 + 10**12), min_size=N, max_size=N).map(np.asarray),
    st.lists(st.one_of(st.just(float(T0)), st.floats(allow_nan=True)), min_size=N, max_size=N).map(np.asarray))


@settings(max_examples=100, deadline=None)
@given(values=value_columns, stamps=stamp_columns)
def test_columnar_input_is_refused_or_reaches_the_core_exactly(functional, warm_batch, values, stamps):
    try:
        floats, ints = _expected(values, stamps)
    except _Bad as bad:
        event(f"refused: {bad.kind.__name__}")
        with pytest.raises(bad.kind) as raised:
            functional.step_batch(warm_batch, ColumnarBatch(values, stamps))
        if bad.kind is TimestampError:
            assert f"row {bad.row}" in str(raised.value)
        return
    batch = ColumnarBatch(values, stamps)
    np.testing.assert_array_equal(batch.values, np.asarray(floats, dtype=np.float64))
    assert batch.values.dtype == np.float64 and batch.timestamps_ns.dtype == np.int64
    assert batch.timestamps_ns.tolist() == ints
    if len(floats) != N:
        with pytest.raises(DomainError, match="observations"):
            functional.step_batch(warm_batch, batch)
        return
    states, result = functional.step_batch(warm_batch, batch)
    event("stepped")
    for row, (value, stamp) in enumerate(zip(floats, ints, strict=True)):
        before = jax.tree_util.tree_map(lambda a, r=row: np.asarray(a[r]), warm_batch)
        after = jax.tree_util.tree_map(lambda a, r=row: np.asarray(a[r]), states)
        bits = int(result.events[row])
        assert bool(bits & EventCode.REJECTED_NON_FINITE) == (not math.isfinite(value))
        assert bool(bits & EventCode.REJECTED_MAGNITUDE) == (math.isfinite(value) and abs(value) > 1e100)
        assert bool(bits & EventCode.REJECTED_OUT_OF_ORDER) == (stamp < T0)
        if bits & EventCode.rejected():
            if bits & EventCode.REJECTED_OUTLIER:  # a rejected outlier moves the outlier streak alone
                before = replace(before, monitor=replace(before.monitor, exceed_run=after.monitor.exceed_run))
            assert all(np.array_equal(a, b, equal_nan=True) for a, b in
                       zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True))
        else:  # accepted exactly as given: the value is the newest sample, the timestamp the last seen
            assert after.window[-1] == value and int(after.last_timestamp_ns) == stamp
            assert int(after.count) == int(before.count) + 1
        assert np.all(np.isfinite(result.outputs[row, :Out.SIZE]))
