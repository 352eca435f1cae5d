"""Snapshot codec: predictor state ⇄ verified MessagePack bytes (spec §8, model §6).

A snapshot is a MessagePack map followed by the 64-character SHA-256 hex digest of its bytes::

    {"schema_version": str, "timestamp": int (ns), "config": {str: plain value},
     "global": {str: array}, "telemetry": {"kurtosis", "dgm_entropy", "adaptive_threshold": float},
     "flags": {"degraded_inference", "emergency", "regime_change", "mode_collapse": bool},
     "kernels": {name: {str: array}}, optional "meta": {str: plain value}}

Arrays travel as a MessagePack extension (type 1): dtype code, rank, little-endian uint64 shape,
then the raw little-endian element bytes, so a round trip is bit-exact (NaN payloads and -0.0
included). Decoding checks the size limit and the digest before a single payload byte is parsed
(:class:`usp.domain.IntegrityError`), then the schema version (``ValueError``), then the layout.
No pickle, no object hooks: the only extension understood is the array tag above.

:func:`pytree_to_blocks` / :func:`blocks_to_pytree` turn any JAX pytree of arrays (typed PRNG keys
included) into ``{key path: array}`` blocks and back into a template of the same layout.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import jax
import msgpack
import numpy as np

from ..domain import IntegrityError
from ..ports.state_store import (
    DEFAULT_MAX_BLOB_BYTES,
    DIGEST_HEX_LEN,
    CorruptedSnapshotEvent,
    InsufficientStorageEvent,
    SnapshotWriteFailedEvent,
    blob_problem,
    seal,
    verify_blob,
)

TELEMETRY_KEYS = ("kurtosis", "dgm_entropy", "adaptive_threshold")
FLAG_KEYS = ("degraded_inference", "emergency", "regime_change", "mode_collapse")
_REQUIRED = ("schema_version", "timestamp", "config", "global", "telemetry", "flags", "kernels")
_OPTIONAL = ("meta",)
_ARRAY_EXT = 1
_MAX_RANK = 32
_DTYPES = tuple(np.dtype(n) for n in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                      "uint32", "uint64", "float16", "float32", "float64"))
_CODE_OF = {dt: code for code, dt in enumerate(_DTYPES, start=1)}
_DTYPE_OF = {code: dt for dt, code in _CODE_OF.items()}
_PLAIN_SCALARS = (bool, int, float, str, type(None))
_MISSING = object()


# -- arrays ---------------------------------------------------------------------------------------
def _storable(dtype: np.dtype) -> np.dtype | None:
    """The native dtype an array of ``dtype`` is stored as, or None when it cannot be stored."""
    if dtype in _CODE_OF:  # native byte order: the common case, no name lookup
        return dtype
    native = np.dtype(dtype.name) if dtype.kind in "biuf" else None
    return native if native in _CODE_OF else None


def _as_array(value: Any, where: str) -> np.ndarray:
    if type(value) is not np.ndarray:
        if not isinstance(value, np.generic | jax.Array):
            raise TypeError(f"{where}: expected an array, got {type(value).__name__}")
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise TypeError(f"{where}: typed PRNG key arrays must go through pytree_to_blocks first")
        value = np.asarray(value)
    array = value
    if _storable(array.dtype) is None:
        raise TypeError(f"{where}: dtype {array.dtype} is not storable "
                        f"(allowed: {', '.join(d.name for d in _DTYPES)})")
    return array


def _pack_array(array: np.ndarray) -> msgpack.ExtType:
    dtype = _storable(array.dtype)
    if dtype is None:  # _as_array admits only storable dtypes
        raise TypeError(f"dtype {array.dtype} is not storable")
    header = struct.pack(f"<BB{array.ndim}Q", _CODE_OF[dtype], array.ndim, *array.shape)
    raw = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    return msgpack.ExtType(_ARRAY_EXT, header + raw)


def _unpack_array(code: int, data: bytes) -> np.ndarray:
    if code != _ARRAY_EXT:
        raise IntegrityError(f"snapshot holds an unknown MessagePack extension type {code}")
    if len(data) < 2 or data[0] not in _DTYPE_OF or data[1] > _MAX_RANK:
        raise IntegrityError("snapshot holds a malformed array header")
    dtype, rank = _DTYPE_OF[data[0]], data[1]
    start = 2 + 8 * rank
    if len(data) < start:
        raise IntegrityError("snapshot holds a truncated array shape")
    shape = struct.unpack_from(f"<{rank}Q", data, 2)
    if math.prod(shape) * dtype.itemsize != len(data) - start:
        raise IntegrityError(f"snapshot array of shape {shape} and dtype {dtype} has the wrong byte count")
    flat = np.frombuffer(data, dtype=dtype.newbyteorder("<"), offset=start)
    return flat.astype(dtype, copy=True).reshape(shape)


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _pack_array(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a snapshot")


# -- layout -----------------------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    """Config/meta values: None, bool, int, float, str, lists/tuples and str-keyed maps of those."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, _PLAIN_SCALARS):
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            raise TypeError(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in _sorted_items(value, where)}
    raise TypeError(f"{where}: {type(value).__name__} is not a plain value (use str/int/float/bool/None/"
                    "lists/maps)")


def _sorted_items(mapping: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where}: expected a map, got {type(mapping).__name__}")
    if not all(isinstance(k, str) for k in mapping):
        raise TypeError(f"{where}: map keys must be strings")
    return sorted(mapping.items())


def _scalar(value: Any, where: str, kind: str) -> float | bool:
    array = np.asarray(value)
    ok = array.size == 1 and (array.dtype == np.bool_ if kind == "flag" else
                              array.dtype.kind in "fiu")
    if not ok:
        raise TypeError(f"{where}: expected a {'boolean' if kind == 'flag' else 'real'} scalar, "
                        f"got {value!r}")
    return bool(array.reshape(())) if kind == "flag" else float(array.reshape(()))


def _fixed(mapping: Any, where: str, keys: tuple[str, ...], kind: str) -> dict[str, Any]:
    items = dict(_sorted_items(mapping, where))
    missing = [k for k in keys if k not in items]
    if missing:
        raise TypeError(f"{where}: missing {', '.join(missing)}")
    return {k: _scalar(v, f"{where}.{k}", kind) for k, v in items.items()}


def _normalise(payload: Any) -> dict[str, Any]:
    """Check the payload layout and return its canonical form (sorted maps, numpy arrays)."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"a snapshot payload must be a map, not {type(payload).__name__}")
    unknown = sorted(set(payload) - set(_REQUIRED) - set(_OPTIONAL))
    missing = [k for k in _REQUIRED if k not in payload]
    if unknown or missing:
        raise TypeError(f"snapshot payload: missing keys {missing}, unknown keys {unknown}")
    version, stamp = payload["schema_version"], payload["timestamp"]
    if not isinstance(version, str) or not version:
        raise TypeError("snapshot payload: schema_version must be a non-empty string")
    if isinstance(stamp, bool) or not isinstance(stamp, int | np.integer):
        raise TypeError("snapshot payload: timestamp must be integer nanoseconds")
    out: dict[str, Any] = {
        "schema_version": version,
        "timestamp": _plain(int(stamp), "timestamp"),
        "config": _plain(dict(_sorted_items(payload["config"], "config")), "config"),
        "global": {k: _as_array(v, f"global.{k}") for k, v in _sorted_items(payload["global"], "global")},
        "telemetry": _fixed(payload["telemetry"], "telemetry", TELEMETRY_KEYS, "real"),
        "flags": _fixed(payload["flags"], "flags", FLAG_KEYS, "flag"),
        "kernels": {
            name: {k: _as_array(v, f"kernels.{name}.{k}") for k, v in _sorted_items(block, f"kernels.{name}")}
            for name, block in _sorted_items(payload["kernels"], "kernels")
        },
    }
    if "meta" in payload:
        out["meta"] = _plain(dict(_sorted_items(payload["meta"], "meta")), "meta")
    return dict(sorted(out.items()))


# -- codec ------------------------------------------------------------------------------------------
def encode_snapshot(payload: Mapping[str, Any]) -> bytes:
    """Encode a snapshot payload (layout in the module doc) as MessagePack + SHA-256 hex digest.

    Maps are written with sorted keys, so equal payloads give identical bytes.

    :raises TypeError: a key is missing or unknown, or a value has the wrong type (named).
    """
    body = msgpack.packb(_normalise(payload), use_bin_type=True, default=_default, datetime=False)
    return seal(body)


def decode_snapshot(blob: bytes, *, expected_schema: str, max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
                    require_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Verify and decode a snapshot made by :func:`encode_snapshot`.

    Order of checks: size limit and SHA-256 digest (before any parsing), MessagePack with strict
    limits, schema version, payload layout, then ``require_config``: config keys whose stored
    value must equal the given one (e.g. buffer sizes and the kernel set of the current config).

    :raises IntegrityError: the blob is too large, truncated, corrupted, tampered or malformed.
    :raises ValueError: the schema version differs from ``expected_schema``, or a required config
        value differs (the message names the keys).
    """
    problem = blob_problem(blob, max_bytes=max_bytes)
    if problem is not None:
        raise IntegrityError(f"{problem}; refusing to load this snapshot")
    body = bytes(memoryview(blob)[:-DIGEST_HEX_LEN])
    try:
        payload = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True, ext_hook=_unpack_array,
                                  max_str_len=1 << 20, max_bin_len=1 << 20, max_array_len=1 << 20,
                                  max_map_len=1 << 20, max_ext_len=len(body))
    except IntegrityError:
        raise
    except Exception as exc:  # msgpack's FormatError, StackError, ExtraData, ValueError ...
        raise IntegrityError(f"snapshot payload is not valid MessagePack: {exc}") from exc
    version = payload.get("schema_version") if isinstance(payload, dict) else None
    if not isinstance(version, str):
        raise IntegrityError("snapshot payload has no schema_version: not a USP snapshot")
    if version != expected_schema:
        raise ValueError(f"Schema version mismatch: snapshot={version}, current={expected_schema}.")
    try:
        decoded = _normalise(payload)
    except TypeError as exc:
        raise IntegrityError(f"malformed snapshot payload: {exc}") from exc
    if require_config is not None:
        wanted = _plain(dict(require_config), "require_config")
        differ = sorted(k for k, v in wanted.items() if decoded["config"].get(k, _MISSING) != v)
        if differ:
            stored = decoded["config"]
            details = ", ".join(f"{k}: snapshot={stored.get(k, '<absent>')!r}, current={wanted[k]!r}"
                                for k in differ)
            raise ValueError(f"snapshot was made with an incompatible configuration ({details})")
    return decoded



# -- pytrees ----------------------------------------------------------------------------------------
def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _named_leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]
    if len({n for n, _ in named}) != len(named):
        raise ValueError("pytree has two leaves with the same key path")
    return named, treedef


def pytree_to_blocks(tree: Any) -> dict[str, np.ndarray]:
    """``{key path: numpy array}`` for every leaf of ``tree`` (typed PRNG keys as their uint32 data)."""
    named, _ = _named_leaves(tree)
    blocks = {}
    for name, leaf in named:
        value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        if not isinstance(value, np.ndarray | np.generic | jax.Array):
            value = np.asarray(value)
        blocks[name] = _as_array(value, f"leaf {name or '<root>'}")
    return blocks


def _restore_leaf(template: Any, block: np.ndarray, name: str) -> Any:
    reference = np.asarray(jax.random.key_data(template) if _is_key(template) else template)
    if not isinstance(block, np.ndarray):
        raise ValueError(f"snapshot block {name!r} is not an array")
    if block.dtype != reference.dtype or block.shape != reference.shape:
        raise ValueError(f"snapshot block {name!r} is {block.dtype}{list(block.shape)} but the state expects "
                         f"{reference.dtype}{list(reference.shape)} (was it saved with another config?)")
    if _is_key(template):
        return jax.random.wrap_key_data(jax.device_put(block, template.sharding),
                                        impl=jax.random.key_impl(template))
    if isinstance(template, jax.Array):
        restored = jax.device_put(block, template.sharding)
        if restored.dtype != block.dtype:
            raise ValueError(f"snapshot block {name!r}: JAX turned {block.dtype} into {restored.dtype} "
                             "(enable jax_enable_x64 before restoring)")
        return restored
    if isinstance(template, np.ndarray):
        return np.array(block, copy=True)
    if isinstance(template, np.generic):
        return block[()]
    return type(template)(block.item())


def blocks_to_pytree(template: Any, blocks: Mapping[str, np.ndarray]) -> Any:
    """Rebuild a pytree of ``template``'s layout from :func:`pytree_to_blocks` output, bit-exactly.

    :raises ValueError: a block is missing or unexpected, or its dtype or shape differs from the
        template's leaf (the message names the leaf).
    """
    named, treedef = _named_leaves(template)
    names = [n for n, _ in named]
    missing = [n for n in names if n not in blocks]
    unexpected = sorted(set(blocks) - set(names))
    if missing or unexpected:
        raise ValueError(f"snapshot does not match the state layout: missing {missing}, "
                         f"unexpected {unexpected}")
    leaves = [_restore_leaf(leaf, blocks[name], name) for name, leaf in named]
    return jax.tree_util.tree_unflatten(treedef, leaves)


__all__ = [
    "FLAG_KEYS", "TELEMETRY_KEYS", "CorruptedSnapshotEvent", "InsufficientStorageEvent",
    "SnapshotWriteFailedEvent", "blocks_to_pytree", "decode_snapshot", "encode_snapshot",
    "pytree_to_blocks", "verify_blob",
]
