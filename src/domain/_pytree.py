"""``pytree``: a frozen attrs class registered as a JAX pytree (every field is a child)."""

from __future__ import annotations

from typing import TypeVar

import attrs
import jax

T = TypeVar("T", bound=type)


def pytree(cls: T) -> T:
    """Decorate a class into a frozen attrs class whose fields are all pytree children."""
    cls = attrs.frozen(cls)
    names = [f.name for f in attrs.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
