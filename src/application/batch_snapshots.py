"""Snapshots of explicit states: one asset's state, or a batch with one store key per row.

What ``FunctionalPredictor.save_states`` / ``load_states`` run; every input is an argument (the
config and kernel names the states were made with, the store, the template to restore into).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ..domain import PredictorConfig
from ..domain._core import CoreState, ReportLayout
from ..ports.state_store import StateStore
from .snapshot import blocks_to_pytree, encode_snapshot, pytree_to_blocks
from .snapshot_payload import decode_payload, payload_to_state, state_to_payload, to_host


def _rows(states: CoreState, count: int) -> list[CoreState]:
    """The ``count`` rows of a batched state, each one asset's state with NumPy leaves."""
    host = to_host(states)
    size = jax.tree_util.tree_leaves(host)[0].shape[:1]
    if size != (count,):
        raise ValueError(f"{count} keys for a batched state of leading axis {size}")
    return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], host) for i in range(count)]


def save_states(store: StateStore, keys: str | Sequence[str], states: CoreState, *, config: PredictorConfig,
                kernel_names: Sequence[str], metas: Sequence[Mapping[str, Any]] | None = None,
                reports: ReportLayout = None) -> None:
    """Save one asset (``keys`` a str) or a batch (one key per row of a batched state, one
    ``save_many``). ``metas`` (one per key, for a batch) adds plain values to each payload's
    ``meta`` (e.g. ``receipt``, the source receipt of the last tick the state holds);
    ``reports`` is the kernels' report layout (for the telemetry the payload carries).
    Raises the store's ``SnapshotWriteError`` / ``InsufficientStorageError``."""
    stamp = time.time_ns()
    if isinstance(keys, str):
        meta = dict(metas[0]) if metas else None
        store.save(keys, encode_snapshot(state_to_payload(config, kernel_names, states, timestamp_ns=stamp,
                                                          meta=meta, reports=reports)))
        return
    rows = _rows(states, len(keys))
    if metas is not None and len(metas) != len(keys):
        raise ValueError(f"{len(metas)} metas for {len(keys)} keys")
    extra = [dict(m) for m in metas] if metas is not None else [None] * len(keys)
    store.save_many({key: encode_snapshot(state_to_payload(config, kernel_names, row, timestamp_ns=stamp, meta=meta,
                                                               reports=reports))
                     for key, row, meta in zip(keys, rows, extra, strict=True)})


def load_states(store: StateStore, keys: str | Sequence[str], template: CoreState, *, config: PredictorConfig,
                kernel_names: Sequence[str]) -> tuple[CoreState, bool | np.ndarray]:
    """Load one asset (``keys`` a str) or a batch (one ``load_many``): ``(states, restored)``.

    Keys without a valid snapshot keep the template's row (one asset's state for a str key, a
    state batched over the keys otherwise); ``restored`` is a bool, or a bool array over the keys.

    :raises IntegrityError / ValueError: as :func:`~.snapshot_payload.payload_to_state` and the codec.
    """
    if isinstance(keys, str):
        blob = store.load(keys)
        if blob is None:
            return template, False
        return payload_to_state(config, template, decode_payload(config, blob), kernel_names=kernel_names), True
    states, restored, _ = load_states_meta(store, keys, template, config=config, kernel_names=kernel_names)
    return states, restored


def load_states_meta(store: StateStore, keys: Sequence[str], template: CoreState, *, config: PredictorConfig,
                     kernel_names: Sequence[str]) -> tuple[CoreState, np.ndarray, list[dict[str, Any] | None]]:
    """:func:`load_states` of a batch, with each snapshot's ``meta`` (None for a key without one):
    ``(states, restored bool[len(keys)], metas)``. Same checks and errors."""
    keys = list(keys)
    blobs = store.load_many(keys)
    rows = _rows(template, len(keys))
    restored = np.array([blobs.get(key) is not None for key in keys])
    metas: list[dict[str, Any] | None] = [None] * len(keys)
    for i, key in enumerate(keys):
        blob = blobs.get(key)
        if blob is not None:
            payload = decode_payload(config, blob)
            rows[i] = payload_to_state(config, rows[i], payload, kernel_names=kernel_names)
            metas[i] = dict(payload.get("meta") or {})
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *rows)
    return blocks_to_pytree(template, pytree_to_blocks(stacked)), restored, metas


__all__ = ["load_states", "load_states_meta", "save_states"]
