"""The config mutation protocol (spec §21.2, model.md §6): change keys of a ``config.toml`` without
ever leaving it invalid, half-written or unaccounted for.

``mutate_config(path, changes)``:

1. refuse unknown and locked keys (``ConfigMutationError``), before touching anything;
2. take the mutation lock: create ``<config>.tmp`` exclusively (``O_EXCL``); if it exists another
   mutation is running (or died: remove it by hand), and this one is refused;
3. read the file; apply the guardrails (:class:`Guardrails`); set the keys in the parsed document
   (tomlkit: the user's comments and layout are kept) and validate the result with the loader's
   own validator (types, ranges, cross-key constraints);
4. write the old bytes to ``<config>.bak`` and ``<config>.bak.<UTC time>`` (each atomically);
5. write the new text to the locked temp file, fsync, ``os.replace`` it over the config, fsync
   the directory;
6. append one JSON line to ``mutations.log`` beside the config (time, trigger, per-key
   old → new, protocol version, objective), fsync.

Any refusal before step 4 removes the temp file it created: no byte on disk changes.
``rollback_if_degraded`` restores ``<config>.bak`` by the same steps when the new config scores
worse than the old one on the newest data.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import tomlkit

from ..domain import ConfigError, PredictorConfig, config_from_sections
from ..domain._config import FIELDS

#: Versions of this protocol the code writes (``[meta_optimization] mutation_protocol_version``).
PROTOCOL_VERSIONS = ("1",)
AUDIT_LOG = "mutations.log"


class ConfigMutationError(ConfigError):
    """A mutation was refused (nothing on disk changed); the message says why."""


@attrs.frozen
class Guardrails:
    """Limits on mutations of one config file (model.md §6).

    Attributes:
        max_per_hour: successful mutations allowed in any hour (audit log).
        stability_steps: ticks the current config must have served since the last mutation.
        max_relative_change: a numeric key moves by at most this fraction of its value (from 0, by
            this fraction of its search range); a key with a finite set of values (choices, powers
            of two) moves by one level. A larger request is clamped, and the audit says so.
        rollback_worsening: roll back when the new config's RMSE exceeds the old one's by more than
            this fraction ...
        rollback_window_steps: ... over this many newest forecasts.
    """

    max_per_hour: int = 10
    stability_steps: int = 1000
    max_relative_change: float = 0.5
    rollback_worsening: float = 0.30
    rollback_window_steps: int = 500


@attrs.frozen
class MutationReport:
    """What a mutation did: ``delta`` key → (old, new); ``clamped`` key → the value asked for
    (when a guardrail limited it); the backups written; the audit entry (empty: nothing changed)."""

    path: Path
    delta: dict[str, tuple[Any, Any]]
    clamped: dict[str, Any]
    backup: Path | None
    archive: Path | None
    entry: dict[str, Any]

    @property
    def changed(self) -> bool:
        return bool(self.delta)


def _utc(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


def _check_keys(changes: Mapping[str, Any]) -> None:
    for key in changes:
        field = FIELDS.get(key)
        if field is None:
            raise ConfigMutationError(f"unknown key {key!r}: not a config key; nothing was changed")
        if field.metadata["locked"]:
            raise ConfigMutationError(f"[{field.metadata['section']}] {key} is locked: the mutation protocol never "
                                      "changes it; nothing was changed")


def audit_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of the audit log beside the config at ``path`` (oldest first; [] if none)."""
    log = Path(path).parent / AUDIT_LOG
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _levels(key: str) -> tuple[Any, ...] | None:
    meta = FIELDS[key].metadata
    search = meta.get("search")
    if meta["choices"] is not None:
        return tuple(meta["choices"])
    if search is not None and search.kind == "choice":
        return tuple(search.choices)
    if search is not None and search.kind == "pow2":
        return tuple(2**e for e in range(int(search.hi).bit_length()) if search.lo <= 2**e <= search.hi)
    return None


def limit_change(key: str, old: Any, new: Any, fraction: float) -> Any:
    """``new`` moved towards ``old`` so that it changes by at most ``fraction`` (or one level)."""
    levels = _levels(key)
    if levels is not None and old in levels and new in levels:
        here, there = levels.index(old), levels.index(new)
        return levels[here + max(-1, min(1, there - here))]
    if isinstance(old, bool) or not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return new
    search = FIELDS[key].metadata.get("search")
    if old != 0:
        span = abs(old) * fraction
    elif search is not None and search.lo is not None and search.hi is not None:
        span = (search.hi - search.lo) * fraction
    else:
        return old
    limited = min(max(new, old - span), old + span)
    if isinstance(old, int):
        limited = int(math.floor(limited) if limited > old else math.ceil(limited))
        if limited == old and new != old:  # a small integer still moves by one
            limited = old + (1 if new > old else -1)
    return limited


def _set(document: tomlkit.TOMLDocument, key: str, value: Any) -> None:
    section = FIELDS[key].metadata["section"]
    if section not in document:
        document.add(tomlkit.nl())
        document.add(section, tomlkit.table())
    table = document[section]
    table[key] = list(value) if isinstance(value, tuple) else value


def _validate(path: Path, text: str) -> PredictorConfig:
    try:
        return config_from_sections(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigMutationError(f"{path}: not valid TOML: {exc}; nothing was changed") from None
    except ConfigError as exc:
        raise ConfigMutationError(f"{path}: {exc}; nothing was changed") from None


class _Lock:
    """The mutation lock: ``<config>.tmp`` created exclusively, later the new file's content."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temporary = path.with_name(path.name + ".tmp")
        try:
            self.fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigMutationError(f"concurrent mutation: {self.temporary} exists (another mutation is "
                                      "writing; if none is, remove it); nothing was changed") from None
        self.done = False

    def commit(self, data: bytes) -> None:
        """Write ``data``, fsync, replace the config, fsync the directory."""
        try:
            mode = os.stat(self.path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        os.fchmod(self.fd, mode)
        os.write(self.fd, data)
        os.fsync(self.fd)
        os.close(self.fd)
        self.done = True
        os.replace(self.temporary, self.path)
        _fsync_directory(self.path.parent)

    def release(self) -> None:
        if not self.done:
            os.close(self.fd)
            self.temporary.unlink(missing_ok=True)
            self.done = True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it, fsync, ``os.replace``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _append_audit(path: Path, entry: Mapping[str, Any]) -> None:
    line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path.parent / AUDIT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_guardrails(path: Path, guardrails: Guardrails, now: float, steps: int | None) -> None:
    history = [e for e in audit_entries(path) if e.get("config") == path.name]
    recent = [e for e in history if e.get("status") == "MUTATION_SUCCESS" and now - float(e["unix_time"]) < 3600.0]
    if len(recent) >= guardrails.max_per_hour:
        raise ConfigMutationError(f"{path}: {len(recent)} mutations in the last hour (at most "
                                  f"{guardrails.max_per_hour}); nothing was changed")
    if history and guardrails.stability_steps > 0:
        if steps is None:
            raise ConfigMutationError(f"{path} was mutated before ({history[-1]['time']}): say how many ticks the "
                                      f"current config has served (steps_since_last_mutation; at least "
                                      f"{guardrails.stability_steps}); nothing was changed")
        if steps < guardrails.stability_steps:
            raise ConfigMutationError(f"{path}: the current config has served {steps} ticks since the last "
                                      f"mutation, fewer than the stability period of {guardrails.stability_steps}; "
                                      "nothing was changed")


def mutate_config(path: str | os.PathLike[str], changes: Mapping[str, Any], *, trigger: str = "manual",
                  objective: float | None = None, guardrails: Guardrails | None = Guardrails(),
                  steps_since_last_mutation: int | None = None, data_end_ns: int | None = None,
                  now: Callable[[], float] = time.time) -> MutationReport:
    """Set ``changes`` (key → value) in the config file at ``path`` by the protocol of the module
    doc. ``guardrails`` None turns the limits off (an operator's own edit); ``steps_since_last_mutation``
    is how many ticks the current config has served (required by the stability period once the
    file has been mutated); ``data_end_ns`` (the newest tick the decision used) goes to the audit.

    Raises:
        ConfigMutationError: an unknown or locked key, an invalid result (type, range, cross-key
            constraint: the loader's message), a guardrail, or a concurrent mutation. Nothing on
            disk changed.
        OSError: the file cannot be read or written (the old file stays in place).
    """
    path = Path(os.path.realpath(path))
    changes = dict(changes)
    _check_keys(changes)
    stamp = now()
    lock = _Lock(path)
    try:
        old_bytes = path.read_bytes()
        try:
            old_text = old_bytes.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigMutationError(f"{path}: not UTF-8 text; nothing was changed") from None
        current = _validate(path, old_text)
        if current.mutation_protocol_version not in PROTOCOL_VERSIONS:
            raise ConfigMutationError(f"{path}: mutation_protocol_version {current.mutation_protocol_version!r} is "
                                      f"not one this version writes ({', '.join(PROTOCOL_VERSIONS)}); nothing was "
                                      "changed")
        clamped: dict[str, Any] = {}
        targets: dict[str, Any] = {}
        for key, value in sorted(changes.items()):
            old = getattr(current, key)
            new = value if guardrails is None else limit_change(key, old, value, guardrails.max_relative_change)
            if new != value:
                clamped[key] = value
            if new != old or type(new) is not type(old):
                targets[key] = new
        if not targets:
            lock.release()
            return MutationReport(path, {}, clamped, None, None, {})
        if guardrails is not None:
            _check_guardrails(path, guardrails, stamp, steps_since_last_mutation)
        document = tomlkit.parse(old_text)
        for key, value in targets.items():
            _set(document, key, value)
        new_text = tomlkit.dumps(document)
        _validate(path, new_text)
        moment = _utc(stamp)
        backup = path.with_name(path.name + ".bak")
        archive = path.with_name(f"{path.name}.bak.{moment.strftime('%Y%m%dT%H%M%S.%fZ')}")
        write_atomic(archive, old_bytes)
        write_atomic(backup, old_bytes)
        lock.commit(new_text.encode("utf-8"))
    finally:
        lock.release()
    delta = {key: (getattr(current, key), value) for key, value in targets.items()}
    entry = {"time": moment.isoformat().replace("+00:00", "Z"), "unix_time": stamp, "status": "MUTATION_SUCCESS",
             "config": path.name, "trigger": trigger, "protocol": current.mutation_protocol_version,
             "objective": objective, "backup": archive.name,
             "delta": {key: {"old": old, "new": new, **({"requested": clamped[key]} if key in clamped else {})}
                       for key, (old, new) in delta.items()},
             "steps_since_last_mutation": steps_since_last_mutation, "data_end_ns": data_end_ns}
    _append_audit(path, entry)
    return MutationReport(path, delta, clamped, backup, archive, entry)


@attrs.frozen
class RollbackReport:
    """The scores of the current and the backed-up config on the newest data (RMSE over the last
    ``rollback_window_steps`` forecasts) and whether the backup was restored."""

    current_rmse: float
    backup_rmse: float
    rolled_back: bool


def rollback_if_degraded(path: str | os.PathLike[str], series: Sequence[np.ndarray],
                         score: Callable[[PredictorConfig, Sequence[np.ndarray], int], float], *,
                         guardrails: Guardrails = Guardrails(), now: Callable[[], float] = time.time
                         ) -> RollbackReport:
    """Restore ``<config>.bak`` over the config when the config's walk-forward RMSE on ``series``
    (``score(config, series, window)``: RMSE of the last ``window`` one-step forecasts) exceeds the
    backup's by more than ``guardrails.rollback_worsening``. The restore takes the mutation lock,
    writes atomically and appends a ``ROLLBACK`` audit entry. Only a file whose latest audit entry
    is a successful mutation is rolled back.

    Raises:
        ConfigMutationError: no backup, or a concurrent mutation.
    """
    path = Path(os.path.realpath(path))
    backup = path.with_name(path.name + ".bak")
    if not backup.is_file():
        raise ConfigMutationError(f"{path}: no backup {backup.name} to roll back to")
    current = _validate(path, path.read_text(encoding="utf-8-sig"))
    previous = _validate(backup, backup.read_text(encoding="utf-8-sig"))
    window = guardrails.rollback_window_steps
    current_rmse, backup_rmse = score(current, series, window), score(previous, series, window)
    history = [e for e in audit_entries(path) if e.get("config") == path.name]
    worse = not current_rmse <= (1.0 + guardrails.rollback_worsening) * backup_rmse
    if not (worse and history and history[-1].get("status") == "MUTATION_SUCCESS" and math.isfinite(backup_rmse)):
        return RollbackReport(current_rmse, backup_rmse, False)
    stamp = now()
    lock = _Lock(path)
    try:
        lock.commit(backup.read_bytes())
    finally:
        lock.release()
    delta = {key: {"old": getattr(current, key), "new": getattr(previous, key)} for key in FIELDS
             if getattr(current, key) != getattr(previous, key)}
    _append_audit(path, {"time": _utc(stamp).isoformat().replace("+00:00", "Z"), "unix_time": stamp,
                         "status": "ROLLBACK", "config": path.name, "trigger": f"rmse {current_rmse:.6g} vs "
                         f"{backup_rmse:.6g} (limit +{guardrails.rollback_worsening:.0%})",
                         "protocol": current.mutation_protocol_version, "delta": delta})
    return RollbackReport(current_rmse, backup_rmse, True)


__all__ = ["AUDIT_LOG", "PROTOCOL_VERSIONS", "ConfigMutationError", "Guardrails", "MutationReport", "RollbackReport",
           "audit_entries", "limit_change", "mutate_config", "rollback_if_degraded"]
