"""The batched state of every asset a service has seen, and the rounds that step it.

One ``CoreState`` holds a row per asset (leading axis: ``capacity`` rows, the first ``len(assets)``
in use, in order of first sight). A micro-batch of ticks is cut into *rounds*: contiguous runs of
the input in which each asset appears at most once (:func:`plan_rounds`), so ticks are applied in
input order. A round gathers its assets' rows, pads them to a power-of-two bucket, runs
``FunctionalPredictor.step_batch`` on them and scatters the new rows back. Consecutive rounds over
the same rows (one asset ticking many times, or the same assets ticking in lockstep) chain: the
stepped rows stay gathered and are scattered back once, when a round needs other rows or the
state is read (:meth:`AssetStates.flush`). So:

* compiled shapes are bounded: ``step_batch`` compiles once per bucket (1, 2, 4, …, at most the
  capacity), and the gather/scatter once per (capacity, bucket);
* rows not in a round are left bit-identically untouched (the scatter writes only the round's
  rows; padding lanes target row ``capacity``, out of bounds, and are dropped);
* an asset's numbers do not depend on which other assets share its rounds.

The capacity is a power of two (at least :data:`MIN_CAPACITY`), doubled when the assets outgrow
it; every row holds a valid state (spare rows copy row 0 and are never read).

Cold state of an asset: ``init`` with :func:`asset_prng_key` — the config seed's key with the
asset id folded in — so it does not depend on the order in which assets arrive. A reference run
of one asset is ``functional.init_state(key=asset_prng_key(config.seed, asset))`` then ``step``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ..domain._core import CoreState
from ..ports.state_store import StateStore, asset_key
from .batch_snapshots import load_states_meta
from .compiled_core import compiled_core
from .functional import FunctionalPredictor
from .types import ColumnarBatch

#: Smallest capacity (rows) of the batched state.
MIN_CAPACITY = 64


def _key_words(asset_id: str) -> tuple[int, int]:
    """The two 32-bit words of an asset id folded into its key (see :func:`asset_prng_key`)."""
    digest = hashlib.sha256(b"usp.asset:" + asset_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def asset_prng_key(seed: int, asset_id: str) -> jax.Array:
    """The PRNG key an asset's cold state is made with: ``PRNGKey(seed)`` with the first 8 bytes
    of SHA-256(``usp.asset:`` + UTF-8 id) folded in, as two little-endian 32-bit words."""
    key = jax.random.PRNGKey(seed)
    for word in _key_words(asset_id):
        key = jax.random.fold_in(key, word)
    return key


@jax.jit
def _fold_keys(key: jax.Array, words: jax.Array) -> jax.Array:
    """:func:`asset_prng_key` for many ids at once: ``words`` uint32[k, 2] -> keys uint32[k, 2]."""
    return jax.vmap(lambda w: jax.random.fold_in(jax.random.fold_in(key, w[0]), w[1]))(words)


#: Key of a snapshot's ``meta`` holding the receipt of the last tick its state holds.
RECEIPT_META = "receipt"


def receipt_order(receipt: object) -> tuple[int, int] | None:
    """A receipt's place in its stream: ``(milliseconds, sequence)`` of a Redis Streams entry id
    ``"MS-SEQ"`` (two decimal integers), so that ids compare as integer pairs
    (``"9-0" < "10-0"``); None for anything else (no order: never compared)."""
    if not isinstance(receipt, str):
        return None
    ms, dash, seq = receipt.partition("-")
    if not dash or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def bucket_size(rows: int) -> int:
    """The power of two ≥ ``rows`` (≥ 1): the padded row count a round is run with."""
    return 1 << max(0, rows - 1).bit_length()


def plan_rounds(rows: np.ndarray) -> list[np.ndarray]:
    """Cut a micro-batch into rounds: lists of positions (into ``rows``, the state row of each
    tick) in which each row appears at most once.

    Rounds are the contiguous segments of the input, in input order, each as long as it can be
    without a row repeating: a new round starts at a tick whose row already ticked in the current
    one. So the ticks are applied in input order (each asset's, and across assets: a round's
    "now", the newest timestamp the clock has seen by its end, is what a clock fed tick by tick
    in input order reads at that round's last tick), and ``n`` assets ticking in lockstep give
    rounds of ``n``. One O(n) scan over the row numbers (plus O(max row) for its marks).
    """
    rows = np.asarray(rows, np.int64)
    n = rows.size
    if n == 0:
        return []
    listed = rows.tolist()
    last = [-1] * (max(listed) + 1)  # latest position of each row
    cuts, start = [], 0
    for position, row in enumerate(listed):
        if last[row] >= start:
            cuts.append(position)
            start = position
        last[row] = position
    return np.split(np.arange(n), cuts)


@jax.jit
def _gather(state: CoreState, rows: jax.Array) -> CoreState:
    return jax.tree_util.tree_map(lambda leaf: leaf[rows], state)


@jax.jit
def _scatter(state: CoreState, rows: jax.Array, new: CoreState) -> CoreState:
    """``state`` with ``new``'s rows written at ``rows``; out-of-bounds rows are dropped."""
    return jax.tree_util.tree_map(lambda leaf, part: leaf.at[rows].set(part, mode="drop"), state, new)


def compiled_shapes() -> dict[str, int]:
    """Shapes compiled so far (process-wide) by the gather and scatter of rounds and the key
    derivation of new assets."""
    return {"gather": int(_gather._cache_size()),  # type: ignore[attr-defined]
            "scatter": int(_scatter._cache_size()),  # type: ignore[attr-defined]
            "fold_keys": int(_fold_keys._cache_size())}  # type: ignore[attr-defined]


def _host(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _pad_rows(tree: Any, size: int) -> Any:
    """A host tree's leading axis padded to ``size`` rows with copies of row 0."""
    def pad(leaf: np.ndarray) -> np.ndarray:
        extra = size - leaf.shape[0]
        return leaf if extra == 0 else np.concatenate([leaf, np.repeat(leaf[:1], extra, axis=0)])
    return jax.tree_util.tree_map(pad, tree)


def _take(tree: Any, count: int) -> Any:
    return jax.tree_util.tree_map(lambda leaf: leaf[:count], tree)


class AssetStates:
    """Every asset's state in one batched ``CoreState``, with a row per asset id.

    Args:
        functional: the predictor (its config, kernels, device and clock).
        store: where each asset's state is restored from when it is first seen (key
            :func:`~usp.ports.state_store.asset_key`), or None (cold starts).

    Not thread-safe: one thread steps it; :meth:`capture` hands out an immutable view that
    another thread may read.
    """

    def __init__(self, functional: FunctionalPredictor, *, store: StateStore | None = None) -> None:
        self.functional = functional
        self.store = store
        self._core = compiled_core(functional.config, functional.kernels, functional.batch_chunk)
        self._rows: dict[str, int] = {}
        self._assets: list[str] = []
        self._state: CoreState | None = None
        self._open: tuple[np.ndarray, np.ndarray, CoreState] | None = None  # rows, targets, stepped rows
        self.capacity = 0
        self.restored = 0
        #: receipt of the last tick applied to each asset (restored from its snapshot's ``meta``,
        #: then kept by the service), for assets whose source gives ordered receipts
        self.receipts: dict[str, str] = {}
        #: (ms, seq) of the receipt in each restored asset's snapshot, until a later tick passes it
        self.floors: dict[str, tuple[int, int]] = {}

    # -- views -------------------------------------------------------------------------------
    @property
    def assets(self) -> tuple[str, ...]:
        """Asset ids in row order (order of first sight)."""
        return tuple(self._assets)

    def __len__(self) -> int:
        return len(self._assets)

    @property
    def state(self) -> CoreState | None:
        """The batched state (``capacity`` rows; the first ``len(self)`` in use), None before any
        asset. Immutable: holding it is a consistent copy."""
        self.flush()
        return self._state

    def capture(self) -> tuple[tuple[str, ...], CoreState | None]:
        """``(assets, state)`` now: what a snapshot writes (rows beyond ``len(assets)`` unused)."""
        return tuple(self._assets), self.state

    def state_of(self, asset: str) -> CoreState:
        """One asset's state, with NumPy leaves. Raises KeyError for an asset not seen."""
        row = self._rows[asset]
        return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[row]), self.state)

    def flush(self) -> None:
        """Scatter the rows stepped by the last rounds back into the batched state."""
        if self._open is not None:
            _, targets, stepped = self._open
            self._open = None
            self._state = _scatter(self._state, targets, stepped)

    # -- rows --------------------------------------------------------------------------------
    def rows_for(self, assets: Sequence[str]) -> np.ndarray:
        """int64 row of each asset id, registering (and restoring) the ones not seen before."""
        index = self._rows
        new = [asset for asset in dict.fromkeys(assets) if asset not in index]
        if new:
            self._register(new)
        return np.fromiter((index[asset] for asset in assets), np.int64, len(assets))

    def _cold_rows(self, assets: Sequence[str]) -> CoreState:
        """Cold states of ``assets`` (host leaves, one row each), each from its own key."""
        count = len(assets)
        bucket = bucket_size(count)
        words = np.array([_key_words(asset) for asset in assets], np.uint32)
        words = np.concatenate([words, np.repeat(words[:1], bucket - count, axis=0)])
        seed = jax.random.PRNGKey(self.functional.config.seed)
        if self.functional.device is not None:
            seed = jax.device_put(seed, self.functional.device)
        return _take(_host(self._core.init_batch(_fold_keys(seed, words))), count)

    def reconfigure(self, functional: FunctionalPredictor, *, keep_states: bool) -> None:
        """Step with ``functional`` from now on (a reloaded config; same clock). ``keep_states``:
        every asset keeps its state (only traced sensitivity values changed, so the layout is the
        same); otherwise every asset known so far restarts cold under the new config (a
        structural change, spec §21.4). Receipts are kept either way."""
        self.flush()
        self.functional = functional
        self._core = compiled_core(functional.config, functional.kernels, functional.batch_chunk)
        if keep_states or not self._assets:
            return
        rows = self._cold_rows(self._assets)
        self._state, self.capacity = None, 0
        self._grow(len(self._assets), rows)
        self._state = _scatter(self._state, np.arange(len(self._assets)), rows)

    def _register(self, new: list[str]) -> None:
        """Give ``new`` (distinct, unseen) ids rows: cold state from their own key, or the store's."""
        self.flush()
        start, count = len(self._assets), len(new)
        bucket = bucket_size(count)
        rows = self._cold_rows(new)
        if self.store is not None:
            functional = self.functional
            rows, restored, metas = load_states_meta(self.store, [asset_key(a) for a in new], rows,
                                                     config=functional.config, kernel_names=functional.kernel_names)
            rows = _host(rows)
            self.restored += int(np.count_nonzero(restored))
            for asset, meta in zip(new, metas, strict=True):
                receipt = None if meta is None else meta.get(RECEIPT_META)
                order = receipt_order(receipt)
                if order is not None:
                    self.receipts[asset] = receipt  # type: ignore[assignment]
                    self.floors[asset] = order
        self._grow(start + count, rows)
        targets = np.full(bucket, self.capacity, np.int64)
        targets[:count] = np.arange(start, start + count)
        self._state = _scatter(self._state, targets, _pad_rows(rows, bucket))
        for offset, asset in enumerate(new):
            self._rows[asset] = start + offset
        self._assets.extend(new)

    def _grow(self, needed: int, sample: CoreState) -> None:
        """Make room for ``needed`` rows (capacity doubled; new rows copy a valid state)."""
        if needed <= self.capacity:
            return
        capacity = max(MIN_CAPACITY, bucket_size(needed))
        host = _pad_rows(_take(sample, 1), capacity) if self._state is None else _pad_rows(_host(self._state),
                                                                                        capacity)
        self._state = jax.device_put(host, self.functional.device)
        self.capacity = capacity

    # -- ticks -------------------------------------------------------------------------------
    def step_round(self, rows: np.ndarray, values: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """One tick for each of the (distinct) ``rows``: float64[m, Out.length] outputs, in order.

        The rows are gathered and padded to :func:`bucket_size` (padding lanes repeat the first
        tick; their results are discarded), stepped with ``functional.step_batch`` (the
        predictor's clock observes the ticks), and scattered back (at once, or after the next
        rounds when they step the same rows in the same order); no other row changes.
        """
        count = rows.size
        bucket = bucket_size(count)
        if self._open is not None and np.array_equal(self._open[0], rows):
            sub, targets = self._open[2], self._open[1]
        else:
            self.flush()
            gather = np.full(bucket, rows[0], np.int64)
            gather[:count] = rows
            targets = np.full(bucket, self.capacity, np.int64)
            targets[:count] = rows
            sub = _gather(self._state, gather)
        padded_values = np.full(bucket, values[0], np.float64)
        padded_values[:count] = values
        padded_stamps = np.full(bucket, stamps[0], np.int64)
        padded_stamps[:count] = stamps
        new, prediction = self.functional.step_batch(sub, ColumnarBatch(padded_values, padded_stamps))
        self._open = (rows.copy(), targets, new)
        return prediction.outputs[:count]

    def last_outputs(self) -> np.ndarray:
        """float64[len(self), Out.length]: each asset's last valid output, in row order."""
        state = self.state
        if state is None:
            return np.zeros((0, 0))
        return np.asarray(state.last_output)[:len(self._assets)]


__all__ = ["MIN_CAPACITY", "RECEIPT_META", "AssetStates", "asset_prng_key", "bucket_size", "compiled_shapes",
           "plan_rounds", "receipt_order"]
