"""``pytree``: a frozen attrs class registered as a JAX pytree (every field is a child).

The decorator is a :func:`typing.dataclass_transform` (frozen by default, ``attrs.field`` as the
field specifier), so type checkers see the generated ``__init__`` of a decorated class: a
``KernelForecast(mean=..., scale=...)`` or a plugin's own ``@pytree`` state class type-checks
with its field names and types, and assigning to a field is flagged (instances are frozen).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast, dataclass_transform

import attrs
import jax

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
