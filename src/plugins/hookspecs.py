"""pluggy hook specifications of USP (project name and entry-point group: ``usp``).

A third-party package adds kernels by exposing a module (or object) with ``hookimpl``-decorated
functions under the ``usp`` entry-point group, e.g. in its ``pyproject.toml``::

    [project.entry-points.usp]
    my_kernels = "my_package.kernels"

Plugins import ``hookimpl`` (and everything else they need) from :mod:`usp.kernel`.
"""

from __future__ import annotations

import pluggy

from ..domain import KernelSpec

PROJECT = "usp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def usp_register_kernels() -> list[KernelSpec]:
    """Return the kernels this plugin provides.

    Called once when the plugin manager is built; every implementation's list is collected
    (not firstresult). Names must be unique across all plugins.

    :return: a list of :class:`usp.kernel.KernelSpec` (name, init, update, predict, optional fit),
        each with a name no other plugin uses.
    """
    raise NotImplementedError  # a specification: pluggy calls the plugins' implementations
