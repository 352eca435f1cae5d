"""Snapshot codec: bit-exact round trips, rejection before decoding, strict layout and limits."""

from __future__ import annotations

import struct
from unittest import mock

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.application import snapshot
from usp.application.snapshot import (
    FLAG_KEYS,
    TELEMETRY_KEYS,
    blocks_to_pytree,
    decode_snapshot,
    encode_snapshot,
    pytree_to_blocks,
    verify_blob,
)
from usp.domain import IntegrityError
from usp.domain._pytree import pytree
from usp.ports.state_store import seal

DTYPES = [np.dtype(n) for n in ("float64", "int32", "int64", "bool", "uint32")]


def payload(global_blocks=None, kernels=None, **extra):
    """A complete payload around the given blocks."""
    return {
        "schema_version": "1.0", "timestamp": 1_700_000_000_123_456_789,
        "config": {"window": 256, "kurtosis_window": 252, "enabled_kernels": ("A", "B", "C", "D"),
                   "epsilon": 1e-3, "jax_platform": "cpu", "nested": {"x": None, "flag": True}},
        "global": global_blocks if global_blocks is not None else {"signal": np.linspace(0.0, 1.0, 256)},
        "telemetry": {"kurtosis": 3.25, "dgm_entropy": 0.5, "adaptive_threshold": 5.0},
        "flags": {"degraded_inference": False, "emergency": False, "regime_change": True,
                  "mode_collapse": False},
        "kernels": kernels if kernels is not None else {"A": {"w": np.arange(4.0)}, "B": {}},
        **extra,
    }


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- strategies -------------------------------------------------------------------------------------
@st.composite
def any_array(draw):
    """An array of a supported dtype with arbitrary bits (every NaN payload, ±0, inf) and shape."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if dtype == np.float64:
        array = draw(hnp.arrays(np.uint64, shape)).view(np.float64)
    else:
        array = draw(hnp.arrays(dtype, shape))
    return jnp.asarray(array) if draw(st.booleans()) else array


names = st.text("abcdefghij_0123456789", min_size=1, max_size=6)
trees = st.recursive(any_array(), lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.tuples(kids, kids), st.dictionaries(names, kids, max_size=3)),
    max_leaves=8)


def zeros_like(leaf):
    return jnp.zeros_like(leaf) if isinstance(leaf, jax.Array) else np.zeros_like(leaf)


# -- round trips ------------------------------------------------------------------------------------
@given(tree=trees)
def test_arbitrary_pytree_round_trip_is_bit_exact(tree):
    blocks = pytree_to_blocks(tree)
    blob = encode_snapshot(payload(global_blocks=blocks, kernels={"K": blocks}))
    decoded = decode_snapshot(blob, expected_schema="1.0")
    for restored_blocks in (decoded["global"], decoded["kernels"]["K"]):
        restored = blocks_to_pytree(jax.tree.map(zeros_like, tree), restored_blocks)
        assert jax.tree.structure(restored) == jax.tree.structure(tree)
        for original, back in zip(jax.tree.leaves(tree), jax.tree.leaves(restored), strict=True):
            assert type(back) is type(original)
            assert same_bits(original, back)


@pytree
class KernelBlock:
    weights: jax.Array
    key: jax.Array


@pytree
class State:
    signal: jax.Array
    kurtosis_buffer: jax.Array
    count: jax.Array
    head: jax.Array
    degraded: jax.Array
    rng: jax.Array
    typed_key: jax.Array
    kernels: dict


def make_state(seed: int) -> State:
    rng = np.random.default_rng(seed)
    return State(signal=jnp.asarray(rng.standard_normal(256)),
                 kurtosis_buffer=jnp.asarray(rng.standard_normal(252)),
                 count=jnp.asarray(seed, jnp.int64), head=jnp.asarray(seed % 7, jnp.int32),
                 degraded=jnp.asarray(seed % 2 == 0), rng=jax.random.PRNGKey(seed),
                 typed_key=jax.random.key(seed + 1),
                 kernels={"A": KernelBlock(jnp.asarray(rng.random(4)), jax.random.PRNGKey(seed + 2))})


def test_state_pytree_restores_bit_identically_into_a_fresh_template():
    state = make_state(11)
    blob = encode_snapshot(payload(global_blocks=pytree_to_blocks(state)))
    restored = blocks_to_pytree(make_state(0), decode_snapshot(blob, expected_schema="1.0")["global"])
    assert isinstance(restored, State) and isinstance(restored.kernels["A"], KernelBlock)
    assert same_bits(jax.random.key_data(restored.typed_key), jax.random.key_data(state.typed_key))
    assert jax.random.key_impl(restored.typed_key) == jax.random.key_impl(state.typed_key)
    for name in ("signal", "kurtosis_buffer", "count", "head", "degraded", "rng"):
        assert same_bits(getattr(restored, name), getattr(state, name))
    assert same_bits(restored.kernels["A"].weights, state.kernels["A"].weights)
    # the restored PRNG key draws the same numbers as the original
    assert same_bits(jax.random.normal(restored.typed_key, (3,)), jax.random.normal(state.typed_key, (3,)))


def test_payload_values_round_trip():
    original = payload(meta={"asset": "BTC-USD", "tick": 12})
    decoded = decode_snapshot(encode_snapshot(original), expected_schema="1.0")
    assert decoded["config"]["enabled_kernels"] == ["A", "B", "C", "D"]
    assert decoded["config"]["nested"] == {"flag": True, "x": None}
    assert decoded["telemetry"] == original["telemetry"] and decoded["flags"] == original["flags"]
    assert decoded["timestamp"] == original["timestamp"] and decoded["meta"]["asset"] == "BTC-USD"
    assert decoded["kernels"]["B"] == {} and same_bits(decoded["kernels"]["A"]["w"], np.arange(4.0))
    assert decoded["global"]["signal"].flags.writeable


def test_scalars_of_numpy_and_jax_types_normalise():
    decoded = decode_snapshot(encode_snapshot(payload(
        telemetry={"kurtosis": jnp.float64(2.5), "dgm_entropy": np.float32(0.5), "adaptive_threshold": 4},
        flags={"degraded_inference": np.bool_(True), "emergency": jnp.asarray(False), "regime_change": False,
               "mode_collapse": True})), expected_schema="1.0")
    assert decoded["telemetry"] == {"kurtosis": 2.5, "dgm_entropy": 0.5, "adaptive_threshold": 4.0}
    assert decoded["flags"]["degraded_inference"] is True and decoded["flags"]["emergency"] is False


def test_encoding_is_canonical():
    first = payload()
    second = {k: first[k] for k in reversed(list(first))}
    second["config"] = dict(reversed(list(first["config"].items())))
    assert encode_snapshot(first) == encode_snapshot(second)


def test_big_endian_arrays_round_trip_by_value():
    big = np.arange(5, dtype=">f8")
    decoded = decode_snapshot(encode_snapshot(payload(global_blocks={"b": big})), expected_schema="1.0")
    assert decoded["global"]["b"].dtype == np.float64 and np.array_equal(decoded["global"]["b"], big)


# -- rejection before decoding ----------------------------------------------------------------------
BLOB = encode_snapshot(payload(global_blocks={"signal": np.linspace(-1.0, 1.0, 64)}))


def assert_rejected_without_parsing(blob: bytes) -> None:
    assert not verify_blob(blob)
    with mock.patch.object(snapshot.msgpack, "unpackb", side_effect=AssertionError("parsed")) as unpack, \
            pytest.raises(IntegrityError):
        decode_snapshot(blob, expected_schema="1.0")
    assert unpack.call_count == 0


@given(bit=st.integers(0, len(BLOB) * 8 - 1))
def test_any_single_bit_flip_is_rejected_before_decoding(bit):
    flipped = bytearray(BLOB)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert_rejected_without_parsing(bytes(flipped))


def test_every_bit_flip_and_truncation_of_a_small_blob_fails_verification():
    small = encode_snapshot(payload(global_blocks={"x": np.arange(3.0)}, kernels={}))
    assert verify_blob(small)
    for bit in range(len(small) * 8):
        flipped = bytearray(small)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not verify_blob(bytes(flipped)), bit
    assert not any(verify_blob(small[:n]) for n in range(len(small)))


@given(length=st.integers(0, len(BLOB) - 1))
def test_any_truncation_is_rejected_before_decoding(length):
    assert_rejected_without_parsing(BLOB[:length])


def test_size_limit_is_checked_first():
    with pytest.raises(IntegrityError, match="exceeds the limit"):
        decode_snapshot(BLOB, expected_schema="1.0", max_bytes=len(BLOB) - 1)
    assert decode_snapshot(BLOB, expected_schema="1.0", max_bytes=len(BLOB))["schema_version"] == "1.0"


def test_uppercase_or_non_hex_digest_is_rejected():
    assert_rejected_without_parsing(BLOB[:-64] + BLOB[-64:].upper())
    assert_rejected_without_parsing(BLOB[:-1] + b"g")


# -- schema and config compatibility ----------------------------------------------------------------
def test_schema_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match=r"snapshot=1\.0, current=2\.0") as info:
        decode_snapshot(BLOB, expected_schema="2.0")
    assert not isinstance(info.value, IntegrityError)


def test_required_config_must_match():
    assert decode_snapshot(BLOB, expected_schema="1.0",
                           require_config={"window": 256, "enabled_kernels": ("A", "B", "C", "D")})
    with pytest.raises(ValueError, match="window: snapshot=256, current=128"):
        decode_snapshot(BLOB, expected_schema="1.0", require_config={"window": 128})
    with pytest.raises(ValueError, match="absent"):
        decode_snapshot(BLOB, expected_schema="1.0", require_config={"not_there": 1})


# -- malformed but correctly sealed payloads (a foreign or buggy writer) ----------------------------
def sealed(obj) -> bytes:
    return seal(msgpack.packb(obj, use_bin_type=True))


def ext(code: int, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(code, data)


@pytest.mark.parametrize("blob", [
    seal(b"\xc1"),                                             # never-used MessagePack byte
    seal(msgpack.packb(1) + b"\x00"),                          # trailing data
    sealed([1, 2, 3]),                                         # not a map
    sealed({"timestamp": 1}),                                  # no schema version
    sealed({"schema_version": "1.0"}),                         # missing keys
    sealed({**payload(), "kernels": {}, "global": {"x": 1}}),  # a block that is not an array
    sealed({"schema_version": "1.0", "x": ext(7, b"")}),        # unknown extension
    sealed({"schema_version": "1.0", "x": ext(1, struct.pack("<BBQ", 12, 1, 3) + b"\0" * 23)}),  # bytes
    sealed({"schema_version": "1.0", "x": ext(1, struct.pack("<BB", 99, 0))}),  # unknown dtype code
    sealed({"schema_version": "1.0", "x": ext(1, struct.pack("<BB", 12, 2) + b"\0" * 8)}),  # short shape
    sealed({"schema_version": "1.0", "x": msgpack.Timestamp(0)}),
    sealed({"schema_version": "1.0", 1: 2}),                    # non-string map key
], ids=lambda b: str(len(b)))
def test_malformed_payloads_raise_integrity_error(blob):
    with pytest.raises(IntegrityError):
        decode_snapshot(blob, expected_schema="1.0")


def test_deeply_nested_payload_is_refused():
    body = (b"\x82" + msgpack.packb("schema_version") + msgpack.packb("1.0") + msgpack.packb("config")
            + b"\x91" * 5000 + b"\x00")  # 5000 nested one-element arrays
    with pytest.raises(IntegrityError):
        decode_snapshot(seal(body), expected_schema="1.0")


# -- encoder validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, "unknown keys"),
    ({"schema_version": ""}, "schema_version"),
    ({"timestamp": 1.5}, "timestamp"),
    ({"config": {"s": {1, 2}}}, "config.s"),
    ({"config": {"big": 2**70}}, "64 bits"),
    ({"global": {"o": np.array([object()])}}, "global.o"),
    ({"global": {"k": jax.random.key(0)}}, "typed PRNG key"),
    ({"global": {"l": [1.0, 2.0]}}, "expected an array"),
    ({"global": {"c": np.zeros(2, np.complex128)}}, "not storable"),
    ({"telemetry": {"kurtosis": 1.0}}, "missing dgm_entropy"),
    ({"flags": {**dict.fromkeys(FLAG_KEYS, False), "emergency": 1}}, "boolean"),
    ({"telemetry": {**dict.fromkeys(TELEMETRY_KEYS, 1.0), "kurtosis": "high"}}, "real scalar"),
    ({"kernels": {"A": {3: np.zeros(1)}}}, "keys must be strings"),
])
def test_encoder_names_what_is_wrong(change, message):
    with pytest.raises(TypeError, match=message):
        encode_snapshot({**payload(), **change})


# -- templates --------------------------------------------------------------------------------------
def test_blocks_must_match_the_template():
    state = make_state(3)
    blocks = pytree_to_blocks(state)
    with pytest.raises(ValueError, match=r"missing \[\"\.kernels\['A'\]\.weights\"\]"):
        blocks_to_pytree(state, {k: v for k, v in blocks.items() if "weights" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        blocks_to_pytree(state, {**blocks, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"\.signal.*float32\[256\].*float64\[256\]"):
        blocks_to_pytree(state, {**blocks, ".signal": blocks[".signal"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"\.signal.*another config"):
        blocks_to_pytree(state, {**blocks, ".signal": np.zeros(128)})
    with pytest.raises(ValueError, match="typed_key"):
        blocks_to_pytree(state, {**blocks, ".typed_key": np.zeros(2, np.int32)})


def test_python_and_numpy_scalar_leaves_keep_their_types():
    tree = {"f": 2.5, "i": 3, "b": True, "n": np.int32(7), "a": np.ones((2, 2), np.uint32)}
    template = {"f": 0.0, "i": 0, "b": False, "n": np.int32(0), "a": np.zeros((2, 2), np.uint32)}
    back = blocks_to_pytree(template, pytree_to_blocks(tree))
    assert (back["f"], back["i"], back["b"]) == (2.5, 3, True)
    assert type(back["f"]) is float and type(back["i"]) is int and type(back["b"]) is bool
    assert type(back["n"]) is np.int32 and back["n"] == 7 and same_bits(back["a"], tree["a"])
