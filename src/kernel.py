"""The kernel-author kit: everything a kernel plugin imports, from one public module.

A plugin needs nothing else from USP (``usp.testing.check_kernel`` checks it)::

    from usp.kernel import KernelForecast, KernelSpec, PredictorConfig, Window, hookimpl, pytree, replace

- :class:`KernelSpec`: the registered kernel, a name and its pure functions
  ``init``/``update``/``predict`` and the optional ``fit`` (the fit contract is in its docstring
  and in ``docs/plugins.md``).
- :class:`Window`: what a kernel sees at each tick; :class:`KernelForecast`: what it returns.
- :class:`KernelReport` and :class:`KernelEvent`: what the optional ``report`` says about a tick
  (named diagnostics and event bits; the report contract is in ``KernelSpec``'s module docstring).
- :data:`KernelState`: the alias for a kernel's own state (any pytree of fixed-shape arrays).
- :func:`pytree`: the decorator for state classes (a frozen attrs class registered as a JAX
  pytree; a ``typing.dataclass_transform``, so type checkers see its ``__init__``).
- :func:`replace`: a copy of a ``@pytree`` instance with some fields changed (``attrs.evolve``,
  typed: it returns the instance's own class, where mypy rejects ``attrs.evolve`` on it).
- :data:`hookimpl`: the pluggy marker for ``usp_register_kernels``.
- :class:`PredictorConfig`: the configuration every kernel function receives (static under jit).
- :data:`InitFn`, :data:`UpdateFn`, :data:`PredictFn`, :data:`FitFn`, :data:`ReportFn`: the
  function types.
"""

from __future__ import annotations

from .domain._config import PredictorConfig
from .domain._kernel import (
    FitFn,
    InitFn,
    KernelEvent,
    KernelForecast,
    KernelReport,
    KernelSpec,
    KernelState,
    PredictFn,
    ReportFn,
    UpdateFn,
    Window,
)
from .domain._pytree import pytree, replace
from .plugins.hookspecs import hookimpl

__all__ = [
    "FitFn", "InitFn", "KernelEvent", "KernelForecast", "KernelReport", "KernelSpec", "KernelState",
    "PredictFn", "PredictorConfig", "ReportFn", "UpdateFn", "Window", "hookimpl", "pytree", "replace",
]
