"""The composition root: predictors built from a config, with the adapters and kernels it names.

The application layer (``usp.application``) takes every dependency as an argument. This module,
with ``container.py``, is where they are chosen, in this order:

1. **secrets**: only where they are used, when the store for bare snapshot keys is first built
   (the Redis and S3 stores read their connection settings and credentials from the
   environment): ``load_credentials(config.credentials_vault_path)`` sets the ``KEY=VALUE`` lines
   of that ``.env`` file that the environment does not already hold; a missing file is fine, a
   malformed one is a ``ConfigError`` naming its line. Building a predictor, ``usp.backtest`` and
   ``usp.testing.check_kernel`` never read it;
2. **kernels**: ``kernels`` if given, else the config's enabled kernels from the plugin manager
   (built-ins and installed entry points, or ``plugin_manager``);
3. **device**: ``jax.devices(config.jax_platform)[0]``: the state is put there, so every step
   runs there; a platform this machine lacks is a ``ConfigError`` naming ``jax_platform``;
4. **clock**: ``clock`` if given, else the system clock;
5. **snapshot stores** (``UniversalPredictor``): bare keys go to the store that
   ``[io] storage_kind`` selects through the container (a file store under ``snapshot_path`` by
   default), paths to a file store rooted at their directory.

``FunctionalPredictor`` and ``UniversalPredictor`` here are the public constructors (exported as
``usp.FunctionalPredictor`` / ``usp.UniversalPredictor``): subclasses of the application classes
whose ``__init__`` fills in those defaults and passes everything explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from .adapters.clocks import SystemClock
from .adapters.secrets import load_credentials
from .adapters.stores import FileStore, check_key
from .application._load_shedding import LoadSheddingController
from .application.batching import BATCH_CHUNK
from .application.functional import FunctionalPredictor as ExplicitFunctionalPredictor
from .application.snapshot_session import SnapshotStores
from .application.universal import UniversalPredictor as ExplicitUniversalPredictor
from .container import store_for_config
from .domain import ConfigError, KernelSpec, PredictorConfig
from .plugins.manager import resolve_kernels
from .ports import Clock
from .ports.state_store import DIGEST_ALGORITHM


def platform_device(config: PredictorConfig) -> jax.Device:
    """The first device of ``config.jax_platform`` ("cpu", "gpu" or "tpu").

    Raises:
        ConfigError: JAX has no such backend on this machine (the message names ``jax_platform``).
    """
    try:
        return jax.devices(config.jax_platform)[0]
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"[core] jax_platform = {config.jax_platform!r}: no such JAX backend on this machine "
                          f"({reason}); set jax_platform = {jax.default_backend()!r}") from None


def check_runtime(config: PredictorConfig) -> None:
    """The process can honour the config's numeric and integrity keys.

    Raises:
        ConfigError: ``float_precision`` = 64 while JAX's x64 mode was switched off after USP set
            it, or a ``snapshot_integrity_hash_algorithm`` other than the stores' digest.
    """
    if config.float_precision == 64 and not jax.config.values.get("jax_enable_x64"):
        raise ConfigError("[core] float_precision = 64, but JAX's x64 mode is off in this process "
                          "(jax.config.update('jax_enable_x64', False) was called after importing usp)")
    if config.snapshot_integrity_hash_algorithm != DIGEST_ALGORITHM:
        raise ConfigError(f"[security] snapshot_integrity_hash_algorithm = "
                          f"{config.snapshot_integrity_hash_algorithm!r}: snapshots are sealed with "
                          f"{DIGEST_ALGORITHM!r}")


def configured_store(config: PredictorConfig, on_event: Any = None) -> Any:
    """The store of ``[io] storage_kind`` for bare snapshot keys, after the secrets of
    ``credentials_vault_path`` are in the environment (the stores read their settings there)."""
    load_credentials(config.credentials_vault_path)
    return store_for_config(config, on_event=on_event)


def snapshot_stores(config: PredictorConfig) -> SnapshotStores:
    """The stores of a predictor's snapshot session (rules in ``SnapshotSession``'s doc)."""
    return SnapshotStores(for_bare_keys=lambda on_event: configured_store(config, on_event),
                          for_directory=lambda root, on_event: FileStore(root, on_event=on_event),
                          check_key=check_key)


def _functional_dependencies(config: PredictorConfig | None, clock: Clock | None,
                             kernels: Iterable[KernelSpec] | None, plugin_manager: Any) -> dict[str, Any]:
    """The explicit arguments of the application's ``FunctionalPredictor`` for a config and defaults."""
    config = config or PredictorConfig()
    check_runtime(config)
    return {"config": config, "clock": SystemClock() if clock is None else clock,
            "kernels": tuple(kernels) if kernels is not None else resolve_kernels(config, plugin_manager),
            "device": platform_device(config)}


class FunctionalPredictor(ExplicitFunctionalPredictor):
    """Stateless predictor: ``(S_t, obs_t) -> (S_{t+1}, prediction)``; thousands of assets share
    one compiled graph (``step_batch`` vmaps the core over a leading asset axis).

    Args:
        config: the hyperparameters (defaults if None).
        clock: where "now" comes from for the staleness check (system clock by default).
        kernels: explicit kernel specs (default: the config's enabled kernels from the plugins).
        plugin_manager: a pluggy manager to resolve kernels from (default: built-ins + entry points).
        batch_chunk: assets per vmapped chunk in ``step_batch`` (see ``BATCH_CHUNK``).

    Raises:
        ConfigError: an unavailable ``jax_platform``, a malformed ``credentials_vault_path`` file,
            or an enabled kernel no plugin provides.
    """

    def __init__(self, config: PredictorConfig | None = None, *, clock: Clock | None = None,
                 kernels: Iterable[KernelSpec] | None = None, plugin_manager: Any = None,
                 batch_chunk: int = BATCH_CHUNK) -> None:
        super().__init__(**_functional_dependencies(config, clock, kernels, plugin_manager), batch_chunk=batch_chunk)


class UniversalPredictor(ExplicitUniversalPredictor):
    """Stateful predictor for one stream (the application's ``UniversalPredictor``), built from a
    config: arguments as :class:`FunctionalPredictor`'s, and ``load_shedding`` (True, or a
    controller) to switch kernel D's signature depth on measured latency. Snapshots named by a
    bare key go to the store of ``[io] storage_kind`` (a file store under ``snapshot_path`` by
    default)."""

    def __init__(self, config: PredictorConfig | None = None, clock: Clock | None = None, *,
                 kernels: Iterable[KernelSpec] | None = None, plugin_manager: Any = None,
                 load_shedding: LoadSheddingController | bool = False) -> None:
        functional = ExplicitFunctionalPredictor(**_functional_dependencies(config, clock, kernels,
                                                                                plugin_manager))
        super().__init__(functional, snapshot_stores(functional.config), load_shedding=load_shedding)


__all__ = ["FunctionalPredictor", "UniversalPredictor", "check_runtime", "configured_store", "platform_device",
           "snapshot_stores"]
