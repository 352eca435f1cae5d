"""The application side of the kernel ``fit`` contract (``usp.domain._kernel``).

``fit_history`` first streams the history through the core's scan, where every kernel's
``update`` sees each tick; *then* :func:`make_fit_kernels` gives the pure function that calls,
for each kernel whose ``KernelSpec.fit`` is set, ``fit(kernel_state, history, config)`` once
with the whole float64[T] history and puts the state it returns into ``state.kernels``. The
predictors jit it, and vmap it over assets (each asset's ``fit`` gets its own history row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..domain import KernelSpec, PredictorConfig
from ..domain._core import CoreState
from ..domain._pytree import replace


def _layout(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    """A pytree's structure, and the (shape, dtype) of each leaf."""
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return structure, [(tuple(jnp.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves]


def check_fitted_layout(name: str, before: Any, after: Any) -> None:
    """Raise ``TypeError`` naming kernel ``name`` when ``fit`` changed its state's pytree
    structure, or a leaf's shape or dtype (static facts: checked once, at trace time)."""
    (structure, leaves), (new_structure, new_leaves) = _layout(before), _layout(after)
    if structure != new_structure:
        raise TypeError(f"kernel {name!r}: fit returned a state of another structure ({new_structure}) "
                        f"than the one it was given ({structure}); fit must keep the state's structure")
    for index, (old, new) in enumerate(zip(leaves, new_leaves, strict=True)):
        if old != new:
            raise TypeError(f"kernel {name!r}: fit changed leaf {index} of its state from shape {old[0]} "
                            f"{old[1]} to shape {new[0]} {new[1]}; fit must keep shapes and dtypes")


def fitting_kernels(kernels: Sequence[KernelSpec]) -> tuple[int, ...]:
    """Indices (in ``state.kernels`` order) of the kernels that define ``fit``."""
    return tuple(i for i, spec in enumerate(kernels) if spec.fit is not None)


def make_fit_kernels(config: PredictorConfig, kernels: Sequence[KernelSpec]
                     ) -> Callable[[CoreState, jax.Array], CoreState]:
    """The pure ``(state, history float64[T]) -> state`` that applies every kernel's ``fit`` once,
    in kernel order, leaving the rest of the state (and kernels without ``fit``) untouched."""
    specs = tuple(kernels)

    def fit_kernels(state: CoreState, history: jax.Array) -> CoreState:
        history = jnp.asarray(history, jnp.float64)
        blocks = list(state.kernels)
        for i, spec in enumerate(specs):
            if spec.fit is not None:
                fitted = spec.fit(blocks[i], history, config)
                check_fitted_layout(spec.name, blocks[i], fitted)
                blocks[i] = fitted
        return replace(state, kernels=tuple(blocks))

    return fit_kernels


__all__ = ["check_fitted_layout", "fitting_kernels", "make_fit_kernels"]
