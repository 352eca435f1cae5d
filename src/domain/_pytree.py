"""``pytree``: a frozen attrs class registered as a JAX pytree (every field is a child);
``packing``: a layout that packs such a tree into one flat buffer per dtype.

The decorator is a :func:`typing.dataclass_transform` (frozen by default, ``attrs.field`` as the
field specifier), so type checkers see the generated ``__init__`` of a decorated class: a
``KernelForecast(mean=..., scale=...)`` or a plugin's own ``@pytree`` state class type-checks
with its field names and types, and assigning to a field is flagged (instances are frozen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar, cast, dataclass_transform

import attrs
import jax
import jax.numpy as jnp

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field,))
def pytree(cls: type[T]) -> type[T]:
    """Decorate a class into a frozen attrs class whose fields are all pytree children.

    Every annotated attribute becomes a field (``attrs.field(default=...)`` gives a default), the
    instances are immutable (use :func:`replace` for a changed copy), and JAX flattens an
    instance into its fields in declaration order, so it can be a ``jit``/``vmap``/``scan``
    argument, carry or result.
    """
    frozen = attrs.frozen(cls)
    names = [f.name for f in attrs.fields(cast(Any, frozen))]
    return jax.tree_util.register_dataclass(frozen, data_fields=names, meta_fields=[])


def replace(instance: T, **changes: Any) -> T:
    """A copy of a ``@pytree`` instance with the given fields changed (``attrs.evolve``, typed for
    classes that type checkers see through :func:`pytree`'s dataclass transform)."""
    return cast(T, attrs.evolve(cast(Any, instance), **changes))


@attrs.frozen
class Packing:
    """A fixed layout that packs the leaves of one pytree structure into one flat buffer per dtype.

    Every call of a compiled function pays per argument and per result leaf (about 2.7 µs each on
    CPU, docs/benchmarks.md); a state of 50 leaves packed into one buffer per dtype crosses the
    boundary as a handful. Packing is exact (a reshape and a copy, bit for bit) and traceable:
    ``pack`` and ``unpack`` run inside the compiled function. Leaves of an extended dtype (typed
    PRNG keys) cannot be concatenated and travel as buffers of their own, after the packed ones.

    Attributes:
        treedef: the structure packed.
        shapes, dtypes: per leaf, in ``tree_leaves`` order.
        buffer_dtypes: the dtype of each packed buffer, in order of first appearance.
        slots: per leaf, ``(buffer index, offset, size)`` (offset and size in elements).
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    buffer_dtypes: tuple[Any, ...]
    slots: tuple[tuple[int, int, int], ...]

    def pack(self, tree: Any) -> tuple[jax.Array, ...]:
        """The buffers of ``tree``, which must have this layout's structure, shapes and dtypes.

        Raises:
            TypeError: another structure, shape or dtype (the first difference named).
        """
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise TypeError(f"cannot pack a pytree of structure {treedef}; this layout packs {self.treedef}")
        for i, (leaf, shape, dtype) in enumerate(zip(leaves, self.shapes, self.dtypes, strict=True)):
            if jnp.shape(leaf) != shape or _dtype(leaf) != dtype:
                raise TypeError(f"leaf {i}: {_dtype(leaf)}{list(jnp.shape(leaf))} where this layout "
                                f"packs {dtype}{list(shape)}")
        parts: list[list[jax.Array]] = [[] for _ in self.buffer_dtypes]
        for leaf, (buffer, _, _) in zip(leaves, self.slots, strict=True):
            parts[buffer].append(jnp.ravel(leaf) if buffer < self.packed_count else leaf)
        return tuple(jnp.concatenate(p) if i < self.packed_count else p[0] for i, p in enumerate(parts))

    def unpack(self, buffers: Sequence[jax.Array]) -> Any:
        """The pytree whose buffers these are (``pack``'s inverse, bit for bit)."""
        leaves = [buffers[b] if b >= self.packed_count else buffers[b][offset:offset + size].reshape(shape)
                  for (b, offset, size), shape in zip(self.slots, self.shapes, strict=True)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    @property
    def packed_count(self) -> int:
        """How many buffers hold concatenated leaves (the rest hold one extended-dtype leaf each)."""
        return sum(jnp.issubdtype(d, jnp.number) or d == jnp.bool_ for d in self.buffer_dtypes)


def _dtype(leaf: Any) -> Any:
    return leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)


def packing(template: Any) -> Packing:
    """The :class:`Packing` of ``template``'s structure (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    shapes = tuple(tuple(jnp.shape(leaf)) for leaf in leaves)
    dtypes = tuple(_dtype(leaf) for leaf in leaves)
    plain = [d for d in dict.fromkeys(dtypes) if jnp.issubdtype(d, jnp.number) or d == jnp.bool_]
    buffer_dtypes: list[Any] = list(plain)
    offsets = dict.fromkeys(plain, 0)
    slots = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = math.prod(shape)
        if dtype in offsets:
            slots.append((plain.index(dtype), offsets[dtype], size))
            offsets[dtype] += size
        else:
            slots.append((len(buffer_dtypes), 0, size))
            buffer_dtypes.append(dtype)
    return Packing(treedef, shapes, dtypes, tuple(buffer_dtypes), tuple(slots))
