"""One asset's ``CoreState`` ⇄ a snapshot payload (the codec's layout, ``usp.application.snapshot``).

The ``global`` block holds every ``CoreState`` field but ``kernels``, and ``kernels`` holds one
block per kernel name. Telemetry and flags are derived from the state (informational: a restore
reads only the blocks). ``dgm_entropy`` is the ``"dgm_entropy"`` diagnostic of the first kernel
that reports one, else NaN (0.0 would read as a mode collapse).

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
from ..domain._core import CoreState, Out, ReportLayout, report_size
from ..domain._kernel import KernelEvent
from ..domain._pytree import replace
from ..domain._roughness import koopman_modes
from .snapshot import blocks_to_pytree, decode_snapshot, pytree_to_blocks

#: Config keys a snapshot must share with the predictor loading it (they fix shapes or meaning).
COMPATIBILITY_KEYS = ("float_precision", "enabled_kernels", "window_size", "kurtosis_window",
                      "wtmm_buffer_size", "kernel_a_order", "kernel_a_mode", "kernel_a_rkhs_points",
                      "log_sig_depth", "kernel_c_jump_max_events", "koopman_top_k",
                      "seasonal_period", "seasonal_transform", "kernel_b_dgm_width", "kernel_b_dgm_depth",
                      "kernel_b_dgm_activation")
#: ``global`` blocks added to the state layout after schema 1.0 was first written. A snapshot
#: without them (written before they existed) gets the template's cold values, which restart
#: exactly what they hold: the change detector's level and robust scales (it re-arms after
#: ``wtmm_buffer_size`` ticks) and the outlier streak (0).
ADDED_GLOBAL_BLOCKS = (".monitor.level", ".monitor.level_count", ".monitor.level_dev",
                       ".monitor.resid_dev", ".monitor.scale_count", ".monitor.exceed_run",
                       ".fallback_logit")

#: Each key's default, what a snapshot written before the key existed is taken to hold.
FIELD_DEFAULTS: dict[str, Any] = {f.name: f.default for f in attrs.fields(PredictorConfig)}

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


def _reported(out: np.ndarray, kernel_names: Sequence[str], reports: ReportLayout) -> tuple[float, bool]:
    """``(dgm_entropy, mode_collapse)`` from an output vector's report block (NaN, False if none)."""
    if reports is None:
        return math.nan, False
    block = out[out.size - report_size(reports):]
    n = len(kernel_names)
    collapse = bool(np.any(block[:n].astype(np.int64) & int(KernelEvent.MODE_COLLAPSE)))
    offset = n
    for names in reports:
        if names is None:
            continue
        if "dgm_entropy" in names:
            return float(block[offset + names.index("dgm_entropy")]), collapse
        offset += len(names)
    return math.nan, collapse


def state_to_payload(config: PredictorConfig, kernel_names: Sequence[str], state: CoreState, *,
                     timestamp_ns: int | None = None, meta: dict[str, Any] | None = None,
                     reports: ReportLayout = None) -> dict[str, Any]:
    """The codec payload of one asset's state (JAX leaves are copied to the host once).

    ``reports`` (the kernels' report layout) fills ``telemetry.dgm_entropy`` (NaN when no kernel
    reports one) and ``flags.mode_collapse``."""
    host = to_host(state)
    if np.ndim(host.last_output) != 1:
        raise ValueError("state_to_payload takes one asset's state; save a batched state with one key "
                         "per row (FunctionalPredictor.save_states)")
    if len(host.kernels) != len(kernel_names):
        raise ValueError(f"state has {len(host.kernels)} kernel blocks for kernels {list(kernel_names)}")
    out = np.asarray(host.last_output, dtype=np.float64)
    dgm_entropy, mode_collapse = _reported(out, kernel_names, reports)
    return {
        "schema_version": config.schema_version,
        "timestamp": time.time_ns() if timestamp_ns is None else int(timestamp_ns),
        "config": dict(_config_values(config)),
        "global": pytree_to_blocks(replace(host, kernels=())),
        "telemetry": {"kurtosis": float(out[Out.KURTOSIS]), "dgm_entropy": dgm_entropy,
                      "adaptive_threshold": float(out[Out.THRESHOLD])},
        "flags": {"degraded_inference": bool(out[Out.DEGRADED]), "emergency": bool(host.emergency),
                  "regime_change": bool(out[Out.REGIME_CHANGE]), "mode_collapse": mode_collapse},
        "kernels": {name: pytree_to_blocks(block) for name, block in zip(kernel_names, host.kernels,
                                                                          strict=True)},
        "meta": {"kernel_names": list(kernel_names), **(meta or {})},
    }


def check_compatible(config: PredictorConfig, stored: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every :data:`COMPATIBILITY_KEYS` value that differs.

    A key the snapshot does not hold (written before the key existed) counts as its default.
    """
    current = {k: _plain(getattr(config, k)) for k in COMPATIBILITY_KEYS if hasattr(config, k)}
    written = {k: stored.get(k, _plain(FIELD_DEFAULTS[k])) for k in current}
    differ = [k for k, v in current.items() if written[k] != v]
    if differ:
        details = ", ".join(f"{k}: snapshot={written[k]!r}, current={current[k]!r}" for k in differ)
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
    blocks = payload["global"]
    absent = [name for name in ADDED_GLOBAL_BLOCKS if name not in blocks]
    if absent:  # an older layout: the blocks added since start cold
        cold = pytree_to_blocks(to_host(replace(template_state, kernels=())))
        blocks = {**blocks, **{name: cold[name] for name in absent}}
    blocks = _pad_last_output(blocks, template_state, Out.length(len(names), koopman_modes(config)))
    restored = blocks_to_pytree(replace(template_state, kernels=()), blocks)
    kernels = tuple(blocks_to_pytree(block, payload["kernels"][name])
                    for name, block in zip(names, template_state.kernels, strict=True))
    return replace(restored, kernels=kernels)


def _pad_last_output(blocks: dict[str, Any], template_state: CoreState, unreported: int) -> dict[str, Any]:
    """A ``last_output`` written before its kernels reported (``unreported`` long: no report
    block) gets the template's cold report block: no report yet."""
    stored = blocks.get(".last_output")
    template = np.asarray(to_host(template_state).last_output)
    if not isinstance(stored, np.ndarray) or stored.shape != (unreported,) or template.size <= unreported \
            or stored.dtype != template.dtype:
        return blocks
    return {**blocks, ".last_output": np.concatenate([stored, template[stored.size:]])}


def decode_payload(config: PredictorConfig, blob: bytes) -> dict[str, Any]:
    """The verified payload of a snapshot blob written under ``config``'s schema version.

    :raises IntegrityError: bad digest or malformed bytes.
    :raises ValueError: another schema version.
    """
    return decode_snapshot(blob, expected_schema=config.schema_version)


__all__ = ["ADDED_GLOBAL_BLOCKS", "COMPATIBILITY_KEYS", "check_compatible", "decode_payload", "payload_to_state",
           "state_to_payload", "to_host"]
