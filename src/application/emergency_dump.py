"""The forensic emergency dump of spec §16: a full verified snapshot in a file of its own.

``<directory>/<asset_id>_emergency_<UTC %Y%m%dT%H%M%S%fZ>.msgpack``, written atomically (a
temporary file in the directory, fsync, rename, fsync of the directory), whose ``meta`` adds the
asset id, the reason, the time and the last result's Hölder exponent, weights, distance to
collapse and CUSUM statistic.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..domain._core import Out

DUMP_DIRECTORY = "~/predictor_emergency_dumps"


def dump_meta(last_output: Any, n_kernels: int, asset_id: str, reason: str, now: _dt.datetime) -> dict[str, Any]:
    """The dump's extra ``meta``, read off the state's last output vector (layout ``Out``)."""
    out = np.asarray(last_output, dtype=np.float64)
    return {"asset_id": asset_id, "reason": reason, "emergency_timestamp": now.isoformat(),
            "holder_exponent": float(out[Out.HOLDER]), "weights": out[Out.SIZE:Out.SIZE + n_kernels].tolist(),
            "distance_to_collapse": float(out[Out.DISTANCE]), "cusum_statistic": float(out[Out.CUSUM])}


def dump_path(directory: str | os.PathLike[str] | None, asset_id: str, now: _dt.datetime) -> Path:
    """Where the dump of ``asset_id`` taken at ``now`` goes (``directory`` defaults to
    :data:`DUMP_DIRECTORY`; ``~`` is expanded). ``asset_id`` must already be a checked store key."""
    return Path(directory or DUMP_DIRECTORY).expanduser() / f"{asset_id}_emergency_{now:%Y%m%dT%H%M%S%fZ}.msgpack"


def write_atomically(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` whole or not at all (parents created). Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


__all__ = ["DUMP_DIRECTORY", "dump_meta", "dump_path", "write_atomically"]
