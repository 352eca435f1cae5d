"""Building the plugin manager and resolving the enabled kernels (tox-style, in one function)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import pluggy

from ..domain import ConfigError, KernelSpec, PredictorConfig
from . import builtin, hookspecs


def build_plugin_manager(extra_plugins: Iterable[object] = (), *, entry_points: bool = True
                         ) -> pluggy.PluginManager:
    """Built-ins, then installed ``usp`` entry points, then ``extra_plugins``; then check_pending."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="usp.builtin")
    if entry_points:
        manager.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager


def _source(manager: pluggy.PluginManager, plugin: object) -> str:
    if plugin is builtin:
        return "builtin"
    for registered, dist in manager.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.project_name} {dist.version}"
    return getattr(plugin, "__name__", type(plugin).__name__)


def available_kernels(manager: pluggy.PluginManager) -> dict[str, KernelSpec]:
    """Every registered kernel by name, with its source filled in; duplicate names are errors."""
    found: dict[str, KernelSpec] = {}
    for impl in manager.hook.usp_register_kernels.get_hookimpls():
        for spec in impl.function():
            if not isinstance(spec, KernelSpec):
                raise pluggy.PluginValidationError(impl.plugin, f"usp_register_kernels returned "
                                                   f"{type(spec).__name__}, not KernelSpec")
            if spec.name in found:
                raise pluggy.PluginValidationError(impl.plugin, f"kernel name {spec.name!r} is "
                                                   "registered twice")
            found[spec.name] = attrs.evolve(spec, source=_source(manager, impl.plugin))
    return found


def resolve_kernels(config: PredictorConfig, manager: pluggy.PluginManager | None = None
                    ) -> tuple[KernelSpec, ...]:
    """The enabled kernels of ``config``, in its order; an unknown name is a ConfigError."""
    available = available_kernels(manager or build_plugin_manager())
    missing = [name for name in config.enabled_kernels if name not in available]
    if missing:
        raise ConfigError(f"[kernels] enabled_kernels names {missing}, which no installed plugin "
                          f"provides; available: {sorted(available)}")
    return tuple(available[name] for name in config.enabled_kernels)


__all__ = ["available_kernels", "build_plugin_manager", "resolve_kernels"]
