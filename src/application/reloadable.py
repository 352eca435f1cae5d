"""``ConfigReloadablePredictor``: a ``UniversalPredictor`` that follows its ``config.toml`` (spec
§21.4), so that a configuration written by the mutation protocol reaches a running predictor.

:meth:`~ConfigReloadablePredictor.check_and_reload_config` looks at the file (inode, size, mtime,
then its SHA-256). A changed file that loads (the loader's validation) is adopted:

* the new predictor is built and compiled first, in the calling thread, while ticks from other
  threads go on with the old one (no tick waits on the compiler);
* then, under the tick lock, it replaces the old one. When only sensitivity keys (the fast tier:
  traced parameters of the compiled core) and I/O keys changed, the state is kept: the detector,
  weights and kernels carry on with the new values. Any other (structural) change starts from a
  cold state, as spec §21.4 says.

A file that does not load is not adopted: the predictor keeps its config and state, logs a
warning once per version of the file, and :attr:`reload_error` says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..domain import ConfigError, PredictorConfig
from ..domain._config import FIELDS, IO_KEYS, IO_SECTIONS
from .config_file import load_config
from .functional import FunctionalPredictor
from .snapshot_session import SnapshotStores
from .universal import UniversalPredictor

logger = logging.getLogger("usp.predictor")

#: Keys whose change keeps the state: the fast tier (sensitivity; traced by the compiled core).
STATE_KEEPING_KEYS = frozenset(name for name, field in FIELDS.items()
                               if getattr(field.metadata.get("search"), "tier", None) == "fast")


def keeps_state(old: PredictorConfig, new: PredictorConfig) -> bool:
    """Whether a reload from ``old`` to ``new`` keeps the state: every changed key is a sensitivity
    key (:data:`STATE_KEEPING_KEYS`) or an I/O key."""
    return all(name in STATE_KEEPING_KEYS or name in IO_KEYS or field.metadata["section"] in IO_SECTIONS
               for name, field in FIELDS.items() if getattr(old, name) != getattr(new, name))


def _signature(path: Path) -> tuple[int, int, int]:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


class ConfigFileWatch:
    """A config file watched for new versions (what :class:`ConfigReloadablePredictor` and
    ``usp serve --reload-every`` poll).

    :meth:`poll` looks at the file's inode, size and mtime, then at its SHA-256, and returns the
    config of a changed file that loads and differs from the current one. A version that cannot
    be read or does not load is not returned: :attr:`reload_error` says why, and a warning is
    logged once per version.

    Args:
        path: the TOML file; its current bytes are the version already in use.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen = _signature(self.path)
        self._digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.reload_error: str | None = None  #: why the newest version of the file was not adopted

    def poll(self, current: PredictorConfig) -> PredictorConfig | None:
        """The file's config if it changed since the last poll, loads, and differs from ``current``."""
        try:
            signature = _signature(self.path)
            if signature == self._seen:
                return None
            data = self.path.read_bytes()
        except OSError as exc:
            self.refuse(f"cannot read {self.path}: {exc.strerror or exc}")
            return None
        self._seen = signature
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self.refuse(str(exc))
            return None
        self.reload_error = None
        return None if config == current else config

    def refuse(self, reason: str) -> None:
        """Record (and log once) why the newest version is not adopted."""
        if reason != self.reload_error:
            logger.warning("Config %s not reloaded: %s", self.path, reason)
        self.reload_error = reason


class ConfigReloadablePredictor(UniversalPredictor):
    """A ``UniversalPredictor`` with hot reload of its config file (module doc).

    Args:
        config_path: the TOML file (loaded now: ``ConfigError`` if invalid).
        build: a config's ``FunctionalPredictor`` (clock, kernels, device resolved).
        stores_for: a config's snapshot stores.
    """

    def __init__(self, config_path: str | os.PathLike[str], *, build: Callable[[PredictorConfig], FunctionalPredictor],
                 stores_for: Callable[[PredictorConfig], SnapshotStores]) -> None:
        self.config_path = Path(config_path)
        self._build = build
        self._stores_for = stores_for
        self._watch = ConfigFileWatch(self.config_path)
        self.reloads = 0  #: versions adopted since construction
        config = load_config(self.config_path)
        super().__init__(build(config), stores_for(config))

    # The tick lock must survive a reload (UniversalPredictor.__init__ runs again): the first lock
    # assigned stays the lock.
    @property
    def _lock(self) -> Any:
        return self.__dict__["_tick_lock"]

    @_lock.setter
    def _lock(self, value: Any) -> None:
        self.__dict__.setdefault("_tick_lock", value)

    @property
    def reload_error(self) -> str | None:
        """Why the newest version of the file was not adopted (None: it was, or none came)."""
        return self._watch.reload_error

    def check_and_reload_config(self) -> bool:
        """Adopt the config file if it changed and loads; True when a new config was adopted.

        Returns False when the file is unchanged (same bytes), or changed but invalid (then
        :attr:`reload_error` holds the reason and nothing else changes).
        """
        config = self._watch.poll(self.config)
        if config is None:
            return False
        keep = keeps_state(self.config, config)
        try:
            functional = self._build(config)
            functional.warm_up(packed=True)  # compile now, off the tick path
        except (ConfigError, OSError) as exc:
            self._watch.refuse(str(exc))
            return False
        self._adopt(functional, keep)
        self.reloads += 1
        logger.info("Reloaded %s (%s)", self.config_path, "state kept" if keep else "cold state")
        return True

    def _adopt(self, functional: FunctionalPredictor, keep: bool) -> None:
        """Swap in ``functional`` (compiled) under the tick lock; keep the state or start cold."""
        old_session = self._snapshots
        with self._lock:
            state = self.state
            UniversalPredictor.__init__(self, functional, self._stores_for(functional.config))
            if keep:
                self._replace_state(state)
        self._snapshots.events.extend(old_session.events)
        old_session.close()


__all__ = ["STATE_KEEPING_KEYS", "ConfigFileWatch", "ConfigReloadablePredictor", "keeps_state"]
