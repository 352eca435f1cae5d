"""Support for ``usp.testing.check_kernel``: the windows it feeds, traced functions that count their
traces, host callbacks in jaxprs, comparisons of pytrees, and explanations of JAX errors. Private:
use ``usp.testing``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from .domain._kernel import Window

#: Ticks per stream of windows: every stream has this length, so one compiled scan serves all.
TICKS = 16
#: Ticks of the ordinary random walk that warms a state up (a multiple of TICKS).
WARM_TICKS = 4 * TICKS


class Problem(AssertionError):
    """A check found the kernel at fault; the message says how."""


# -- windows ---------------------------------------------------------------------------------------
def windows(values: np.ndarray, counts: np.ndarray, frozen: bool = False, emergency: bool = False) -> Window:
    """The windows of ``len(counts)`` consecutive ticks over ``values`` (length size + ticks − 1), as
    the core builds them: tick t sees ``values[t:t + size]`` with the slots before its ``count``
    real observations holding the first of them. Leading axis: ticks."""
    ticks = len(counts)
    size = len(values) - ticks + 1
    grid = values[np.arange(ticks)[:, None] + np.arange(size)[None, :]]
    first = size - np.asarray(counts)
    padding = np.arange(size)[None, :] < first[:, None]
    grid = np.where(padding, grid[np.arange(ticks), first][:, None], grid)
    return Window(values=jnp.asarray(grid, jnp.float64), count=jnp.asarray(counts, jnp.int32),
                  signal_frozen=jnp.full(ticks, frozen), emergency=jnp.full(ticks, emergency))


def warm_stream(size: int, seed: int = 0) -> Window:
    """A unit random walk from its first observation on (count 1, 2, …), ``WARM_TICKS`` ticks."""
    walk = np.cumsum(np.random.default_rng(seed).normal(size=size + WARM_TICKS - 1))
    return windows(walk, np.minimum(np.arange(1, WARM_TICKS + 1), size))


def adversarial(size: int) -> dict[str, Window]:
    """Named streams of ``TICKS`` windows that a kernel must survive with finite output."""
    n, rng = size + TICKS - 1, np.random.default_rng(1)
    walk, index = np.cumsum(rng.normal(size=n)), np.arange(n)
    full, filling = np.full(TICKS, size), np.minimum(np.arange(1, TICKS + 1), size)
    arrival = size + TICKS // 2 - 1  # the value that arrives at tick TICKS // 2
    spike = walk.copy()
    spike[arrival] = 1e100
    held = np.where(index >= arrival - 4, walk[arrival - 4], walk)
    return {
        "constant 3.0": windows(np.full(n, 3.0), full),
        "all zeros": windows(np.zeros(n), full),
        "huge ±1e100": windows(1e100 * np.where(rng.random(n) < 0.5, -1.0, 1.0), full),
        "huge constant -1e100": windows(np.full(n, -1e100), full),
        "ramp from -1e100 to 1e100": windows(np.linspace(-1e100, 1e100, n), full),
        "tiny (scale 1e-300)": windows(1e-300 * rng.normal(size=n), full),
        "alternating ±1": windows(np.where(index % 2 == 0, 1.0, -1.0), full),
        "single jump of 1e6": windows(walk + 1e6 * (index >= arrival), full),
        "single spike of 1e100": windows(spike, full),
        "partially filled (count 1..16)": windows(walk, filling),
        "partially filled constant": windows(np.full(n, -7.0), filling),
        "signal_frozen set": windows(held, full, frozen=True),
        "emergency set": windows(rng.normal(size=n), full, emergency=True),
        "both flags, partially filled": windows(walk, filling, frozen=True, emergency=True),
    }


def with_non_finite(history: np.ndarray) -> np.ndarray:
    """``history`` with NaN at its start and NaN, +inf and -inf further on (what
    ``FunctionalPredictor.fit_history`` passes on to ``fit``)."""
    spoilt = np.array(history, np.float64)
    n = len(spoilt)
    spoilt[[0, n // 4, n // 2, 3 * n // 4]] = (np.nan, np.inf, np.nan, -np.inf)
    return spoilt


def row(tree: Any, i: int) -> Any:
    """Row ``i`` of every leaf (one tick of a stream, one asset of a batch)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[i], tree)


def stack(trees: list[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


# -- traced functions ------------------------------------------------------------------------------
def describe_type(leaf: Any) -> str:
    aval = jax.typeof(leaf)
    return f"{aval.dtype}{list(aval.shape)}{' (weakly typed)' if getattr(aval, 'weak_type', False) else ''}"


def signature(tree: Any) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """The pytree structure and the ``(key path, dtype[shape] weak?)`` of every leaf: what jit keys
    its compiled graphs on."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef, tuple((jax.tree_util.keystr(path), describe_type(leaf)) for path, leaf in leaves)


def signature_change(before: Any, after: Any, what: str) -> str | None:
    """None when two signatures agree, else a sentence naming the first difference."""
    old_structure: Any = before[0]
    if old_structure != after[0]:
        return f"{what} changed its pytree structure from {before[0]} to {after[0]}"
    for (path, old), (_, new) in zip(before[1], after[1], strict=True):
        if old != new:
            return f"{what} changed leaf {path or '<root>'} from {old} to {new}"
    return None


class Traced:
    """``jax.jit(fn)`` that records the input signatures of every trace: jit traces again exactly
    when it compiles a new graph, so ``len(signatures)`` counts the compilations."""

    def __init__(self, fn: Callable[..., Any], names: tuple[str, ...]) -> None:
        self.names = names
        self.signatures: list[tuple[Any, ...]] = []

        def counted(*args: Any) -> Any:
            self.signatures.append(tuple(signature(arg) for arg in args))
            return fn(*args)

        self._jitted = jax.jit(counted)

    def __call__(self, *args: Any) -> Any:
        return self._jitted(*args)

    def retrace_cause(self) -> str:
        """Why the latest trace happened: the first difference from the first trace's inputs."""
        for name, first, later in zip(self.names, self.signatures[0], self.signatures[-1], strict=True):
            change = signature_change(first, later, f"the {name} argument")
            if change:
                return change
        return "the inputs changed"


# -- host callbacks --------------------------------------------------------------------------------
#: The primitives of JAX's host callbacks, with the function that makes each. Any other primitive
#: whose name contains "callback" counts too.
HOST_CALLBACKS: dict[str, str] = {
    "io_callback": "jax.experimental.io_callback",
    "pure_callback": "jax.pure_callback",
    "debug_callback": "jax.debug.callback",
    "debug_print": "jax.debug.print",
}


def find_host_callback(jaxpr: jax.extend.core.Jaxpr) -> tuple[str, tuple[str, ...]] | None:
    """The first host-callback primitive of ``jaxpr`` or of any jaxpr nested in its equations
    (scan, cond, while, jit, custom_jvp/custom_vjp bodies, ...), with the path of the primitives
    that enclose it; None when there is none."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in HOST_CALLBACKS or "callback" in name:
            return name, ()
        label = f"{name} {eqn.params['name']!r}" if isinstance(eqn.params.get("name"), str) else name
        for sub in _sub_jaxprs(eqn.params.values()):
            found = find_host_callback(sub)
            if found is not None:
                return found[0], (label, *found[1])
    return None


def _sub_jaxprs(values: Any) -> Iterator[jax.extend.core.Jaxpr]:
    for value in values:
        if isinstance(value, jax.extend.core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jax.extend.core.Jaxpr):
            yield value
        elif isinstance(value, (tuple, list)):  # cond's branches
            yield from _sub_jaxprs(value)


# -- comparisons -------------------------------------------------------------------------------------
def leaves_with_paths(tree: Any) -> list[tuple[str, np.ndarray]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "<root>", np.asarray(_data(leaf))) for path, leaf in leaves]


def _structure(tree: Any) -> Any:
    return jax.tree_util.tree_structure(tree)


def _data(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def bitwise_difference(a: Any, b: Any) -> str | None:
    """None when two pytrees are bit-identical (structure, dtypes, shapes, bytes), else the first
    difference."""
    if _structure(a) != _structure(b):
        return "the pytree structures differ"
    for (path, x), (_, y) in zip(leaves_with_paths(a), leaves_with_paths(b), strict=True):
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return f"leaf {path}: {_show(x)} vs {_show(y)}"
    return None


def close_difference(a: Any, b: Any, rtol: float = 1e-12) -> str | None:
    """None when two pytrees agree to ``rtol`` of each leaf's largest magnitude (integers and
    booleans exactly, NaNs where NaNs are), else the first difference."""
    if _structure(a) != _structure(b):
        return "the pytree structures differ"
    for (path, x), (_, y) in zip(leaves_with_paths(a), leaves_with_paths(b), strict=True):
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"leaf {path}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if not np.issubdtype(x.dtype, np.inexact):
            if not np.array_equal(x, y):
                return f"leaf {path}: {_show(x)} vs {_show(y)}"
            continue
        finite = np.isfinite(x) & np.isfinite(y)
        same_special = ~finite & ((x == y) | (np.isnan(x) & np.isnan(y)))
        scale = np.max(np.abs(np.where(finite, y, 0.0)), initial=0.0)
        near = finite & (np.abs(x - y) <= rtol * scale)
        if not np.all(near | same_special):
            return f"leaf {path}: {_show(x)} vs {_show(y)} (tolerance {rtol:g} of {scale:.6g})"
    return None


def first_non_finite(tree: Any, ticks: int | None = None) -> tuple[int, str, float] | None:
    """``(tick, leaf path, value)`` of the first non-finite float (the leading axis is the tick
    when ``ticks`` is given), or None."""
    found: list[tuple[int, str, float]] = []
    for path, x in leaves_with_paths(tree):
        if not np.issubdtype(x.dtype, np.inexact):
            continue
        bad = ~np.isfinite(x.reshape(ticks, -1) if ticks else x.reshape(1, -1))
        if bad.any():
            tick = int(np.argmax(bad.any(axis=1)))
            found.append((tick, path, float(x.reshape(bad.shape)[tick][bad[tick]][0])))
    return min(found, key=lambda item: item[0]) if found else None


def _show(x: np.ndarray) -> str:
    return np.array2string(x, threshold=6, precision=17) if x.size <= 6 else f"{x.dtype}{list(x.shape)} array"


# -- JAX errors ------------------------------------------------------------------------------------
_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (jax.errors.TracerBoolConversionError, "Python control flow (if, while, and/or, bool()) on a traced "
     "value: branch with jnp.where or jax.lax.cond instead"),
    (jax.errors.TracerIntegerConversionError, "a traced value is used as a Python int (an index, a size, a "
     "range): shapes must not depend on data; use jax.lax.dynamic_slice or fixed sizes"),
    (jax.errors.NonConcreteBooleanIndexError, "boolean-mask indexing makes an array's shape depend on data: "
     "keep shapes fixed (jnp.where(mask, x, 0))"),
    (jax.errors.ConcretizationTypeError, "an array shape or a Python value depends on traced data: shapes "
     "must be fixed (jnp.where, or size= in jnp.nonzero/jnp.unique)"),
    (jax.errors.TracerArrayConversionError, "a traced value is converted to NumPy (np.asarray, float(), "
     ".item()): use jax.numpy only"),
    (jax.errors.UnexpectedTracerError, "a traced value escapes the function (kept on an object or a global): "
     "keep everything in the returned state"),
)


def explain(exc: BaseException) -> str:
    """One line: what the kernel does wrong (when recognised), then the exception's first line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
    for kind, hint in _HINTS:
        if isinstance(exc, kind):
            return f"{hint} ({text})"
    if "callback" in str(exc):
        return f"a host callback does not survive jit/vmap; kernels must be pure JAX ({text})"
    return text
