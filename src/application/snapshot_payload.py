"""One asset's ``CoreState`` ⇄ a snapshot payload (the codec's layout, ``usp.application.snapshot``).

The ``global`` block holds every ``CoreState`` field but ``kernels``, and ``kernels`` holds one
block per kernel name. Telemetry and flags are derived from the state (informational: a restore
reads only the blocks). ``dgm_entropy`` is NaN: no DGM kernel reports an entropy yet, and 0.0
would read as a mode collapse.

Loading checks the digest, the schema version and :data:`COMPATIBILITY_KEYS` (the config values
that fix the state's shapes or meaning), in that order. See docs/persistence.md.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import attrs
import jax
import numpy as np

from ..domain import PredictorConfig
from ..domain._core import CoreState, Out
from ..domain._pytree import replace
from .snapshot import blocks_to_pytree, decode_snapshot, pytree_to_blocks

#: Config keys a snapshot must share with the predictor loading it (they fix shapes or meaning).
COMPATIBILITY_KEYS = ("float_precision", "enabled_kernels", "window_size", "kurtosis_window",
                      "wtmm_buffer_size", "kernel_a_order", "kernel_a_mode", "kernel_a_rkhs_points",
                      "log_sig_depth", "kernel_c_jump_max_events", "koopman_top_k")


@functools.lru_cache(maxsize=32)
def _config_values(config: PredictorConfig) -> dict[str, Any]:
    return attrs.asdict(config)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _leaf_to_host(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)  # per leaf: several times cheaper than jax.device_get on a tree
    return leaf


def to_host(state: Any) -> Any:
    """``state`` with NumPy leaves (typed PRNG keys as their uint32 data); NumPy leaves kept."""
    return jax.tree_util.tree_map(_leaf_to_host, state)


def state_to_payload(config: PredictorConfig, kernel_names: Sequence[str], state: CoreState, *,
                     timestamp_ns: int | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The codec payload of one asset's state (JAX leaves are copied to the host once)."""
    host = to_host(state)
    if np.ndim(host.last_output) != 1:
        raise ValueError("state_to_payload takes one asset's state; save a batched state with one key "
                         "per row (FunctionalPredictor.save_states)")
    if len(host.kernels) != len(kernel_names):
        raise ValueError(f"state has {len(host.kernels)} kernel blocks for kernels {list(kernel_names)}")
    out = np.asarray(host.last_output, dtype=np.float64)
    return {
        "schema_version": config.schema_version,
        "timestamp": time.time_ns() if timestamp_ns is None else int(timestamp_ns),
        "config": dict(_config_values(config)),
        "global": pytree_to_blocks(replace(host, kernels=())),
        "telemetry": {"kurtosis": float(out[Out.KURTOSIS]), "dgm_entropy": math.nan,
                      "adaptive_threshold": float(out[Out.THRESHOLD])},
        "flags": {"degraded_inference": bool(out[Out.DEGRADED]), "emergency": bool(host.emergency),
                  "regime_change": bool(out[Out.REGIME_CHANGE]), "mode_collapse": False},
        "kernels": {name: pytree_to_blocks(block) for name, block in zip(kernel_names, host.kernels,
                                                                          strict=True)},
        "meta": {"kernel_names": list(kernel_names), **(meta or {})},
    }


def check_compatible(config: PredictorConfig, stored: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every :data:`COMPATIBILITY_KEYS` value that differs."""
    current = {k: _plain(getattr(config, k)) for k in COMPATIBILITY_KEYS if hasattr(config, k)}
    differ = [k for k, v in current.items() if stored.get(k, "<absent>") != v]
    if differ:
        details = ", ".join(f"{k}: snapshot={stored.get(k, '<absent>')!r}, current={current[k]!r}"
                            for k in differ)
        raise ValueError(f"snapshot was made with an incompatible configuration ({details})")


def payload_to_state(config: PredictorConfig, template_state: CoreState, payload: dict[str, Any], *,
                     kernel_names: Sequence[str] | None = None) -> CoreState:
    """Rebuild a state of ``template_state``'s layout (and placement) from a decoded payload.

    ``kernel_names`` defaults to ``config.enabled_kernels`` (the order of ``state.kernels``).

    :raises ValueError: incompatible config (keys named), other kernels, or a block whose name,
        dtype or shape differs from the template's.
    """
    names = tuple(config.enabled_kernels if kernel_names is None else kernel_names)
    check_compatible(config, payload["config"])
    if sorted(payload["kernels"]) != sorted(names):
        raise ValueError(f"snapshot holds kernels {sorted(payload['kernels'])}, "
                         f"the predictor runs {list(names)}")
    restored = blocks_to_pytree(replace(template_state, kernels=()), payload["global"])
    kernels = tuple(blocks_to_pytree(block, payload["kernels"][name])
                    for name, block in zip(names, template_state.kernels, strict=True))
    return replace(restored, kernels=kernels)


def decode_payload(config: PredictorConfig, blob: bytes) -> dict[str, Any]:
    """The verified payload of a snapshot blob written under ``config``'s schema version.

    :raises IntegrityError: bad digest or malformed bytes.
    :raises ValueError: another schema version.
    """
    return decode_snapshot(blob, expected_schema=config.schema_version)


__all__ = ["COMPATIBILITY_KEYS", "check_compatible", "decode_payload", "payload_to_state", "state_to_payload",
           "to_host"]
