"""Building the plugin manager and resolving the enabled kernels (tox-style, in one function).

An installed plugin (an entry point of group ``usp``) that fails — it raises on import, its
hooks do not validate, its ``usp_register_kernels`` raises or returns something other than
``KernelSpec`` objects with fresh names — is *broken*: it is logged, listed by
:func:`broken_plugins` (``usp kernels list`` shows it) and skipped, so it cannot take down a
predictor that does not use it. A config that enables a kernel no working plugin provides gets a
:class:`ConfigError` naming the broken plugins and their errors. Plugins passed explicitly as
``extra_plugins`` are not isolated: their errors raise.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable

import attrs
import pluggy

from ..domain import ConfigError, KernelSpec, PredictorConfig
from . import builtin, hookspecs

logger = logging.getLogger("usp.plugins")


@attrs.frozen
class BrokenPlugin:
    """An installed plugin that cannot be used, and why."""

    name: str     # the entry-point (plugin) name
    source: str   # its distribution, "name version"
    error: str    # "ExceptionType: message" (first line)

    def describe(self) -> str:
        return f"plugin {self.name!r} ({self.source}): {self.error}"


class KernelPluginManager(pluggy.PluginManager):
    """pluggy's manager for project ``usp``, which also remembers the installed plugins that
    failed to load (``load_failures``)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.load_failures: list[BrokenPlugin] = []


def build_plugin_manager(extra_plugins: Iterable[object] = (), *, entry_points: bool = True
                         ) -> KernelPluginManager:
    """Built-ins, then installed ``usp`` entry points, then ``extra_plugins``; then check_pending.

    An entry point that fails to import or to register is recorded as broken and skipped.
    """
    manager = KernelPluginManager()
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="usp.builtin")
    if entry_points:
        _load_entry_points(manager)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager


def _load_entry_points(manager: KernelPluginManager) -> None:
    for point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        if manager.has_plugin(point.name) or manager.is_blocked(point.name):
            continue
        try:
            manager.load_setuptools_entrypoints(hookspecs.PROJECT, name=point.name)
            manager.check_pending()
        except Exception as exc:  # any failure of third-party code marks the plugin broken
            if manager.has_plugin(point.name):
                manager.unregister(name=point.name)
            _record(manager.load_failures, BrokenPlugin(point.name, _dist_label(point.dist), _error_text(exc)))


def _record(failures: list[BrokenPlugin], broken: BrokenPlugin) -> None:
    logger.warning("%s; skipped", broken.describe())
    failures.append(broken)


def _dist_label(dist: importlib.metadata.Distribution | None) -> str:
    return "unknown distribution" if dist is None else f"{dist.metadata['Name']} {dist.version}"


def _error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _source(manager: pluggy.PluginManager, plugin: object) -> str:
    if plugin is builtin:
        return "builtin"
    for registered, dist in manager.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.project_name} {dist.version}"
    return getattr(plugin, "__name__", type(plugin).__name__)


def _installed(manager: pluggy.PluginManager, plugin: object) -> bool:
    """Whether ``plugin`` came from an entry point (then its failures are isolated)."""
    return any(registered is plugin for registered, _ in manager.list_plugin_distinfo())


def _plugin_kernels(impl, found: dict[str, KernelSpec], source: str) -> list[KernelSpec]:
    """The kernels one hook implementation registers (raises PluginValidationError)."""
    specs = list(impl.function())
    for spec in specs:
        if not isinstance(spec, KernelSpec):
            raise pluggy.PluginValidationError(impl.plugin, f"usp_register_kernels returned "
                                               f"{type(spec).__name__}, not KernelSpec")
        if spec.name in found or sum(s.name == spec.name for s in specs) > 1:
            raise pluggy.PluginValidationError(impl.plugin, f"kernel name {spec.name!r} is "
                                               "registered twice")
    return [attrs.evolve(spec, source=source) for spec in specs]


def _collect(manager: pluggy.PluginManager) -> tuple[dict[str, KernelSpec], list[BrokenPlugin]]:
    found: dict[str, KernelSpec] = {}
    failures: list[BrokenPlugin] = []
    for impl in manager.hook.usp_register_kernels.get_hookimpls():
        source = _source(manager, impl.plugin)
        try:
            specs = _plugin_kernels(impl, found, source)
        except Exception as exc:
            if not _installed(manager, impl.plugin):
                raise
            failures.append(BrokenPlugin(impl.plugin_name, source, _error_text(exc)))
            continue
        found.update((spec.name, spec) for spec in specs)
    return found, failures


def available_kernels(manager: pluggy.PluginManager) -> dict[str, KernelSpec]:
    """Every kernel of a working plugin by name, with its source filled in.

    A duplicate name or a return value that is not a KernelSpec raises
    ``pluggy.PluginValidationError`` for an explicitly registered plugin, and makes an installed
    one broken (see :func:`broken_plugins`).
    """
    return _collect(manager)[0]


def broken_plugins(manager: pluggy.PluginManager) -> tuple[BrokenPlugin, ...]:
    """The installed plugins that failed to import, to register or to list their kernels."""
    return (*getattr(manager, "load_failures", ()), *_collect(manager)[1])


def resolve_kernels(config: PredictorConfig, manager: pluggy.PluginManager | None = None
                    ) -> tuple[KernelSpec, ...]:
    """The enabled kernels of ``config``, in its order.

    Raises:
        ConfigError: an enabled name that no working plugin provides; the message lists the
            available kernels and every broken plugin with its error.
    """
    manager = manager or build_plugin_manager()
    available, hook_failures = _collect(manager)
    for failure in hook_failures:
        logger.warning("%s; skipped", failure.describe())
    missing = [name for name in config.enabled_kernels if name not in available]
    if missing:
        broken = (*getattr(manager, "load_failures", ()), *hook_failures)
        because = ("; installed plugins that failed to load: " + "; ".join(b.describe() for b in broken)
                   if broken else "")
        raise ConfigError(f"[kernels] enabled_kernels names {missing}, which no installed plugin "
                          f"provides{because}; available: {sorted(available)}")
    return tuple(available[name] for name in config.enabled_kernels)


__all__ = ["BrokenPlugin", "KernelPluginManager", "available_kernels", "broken_plugins",
           "build_plugin_manager", "resolve_kernels"]
