"""``PredictionSink``: where the forecasts of ``usp serve`` go (a file, stdout, a broker stream).

The service hands a sink whole micro-batches as columns (:class:`PredictionRecords`), never one
object per tick. Every output record a sink writes carries ``asset``, ``timestamp`` (RFC 3339 in
UTC, the tick's own timestamp), ``prediction``, ``lower``, ``upper``, ``mode`` (its name:
``"inference"``, ``"calibration"``, ``"diagnostic"``) and ``events`` (a list of event names),
in row order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs
import numpy as np


@attrs.frozen(eq=False)
class PredictionRecords:
    """The outputs of a micro-batch, one row per applied tick, in input order."""

    assets: tuple[str, ...]             #: asset id of each row
    timestamps_ns: np.ndarray           #: int64[n], the tick's UTC timestamp (ns since the epoch)
    prediction: np.ndarray              #: float64[n], forecast of the asset's next value
    lower: np.ndarray                   #: float64[n], lower bound of the prediction interval
    upper: np.ndarray                   #: float64[n], upper bound of the prediction interval
    modes: tuple[str, ...]              #: operating mode name of each row
    events: tuple[tuple[str, ...], ...]  #: event names of each row (empty tuple: none)
    receipts: tuple[str, ...] = ()      #: the source's handle of each row's tick, or ()

    def __len__(self) -> int:
        return len(self.assets)


@runtime_checkable
class PredictionSink(Protocol):
    """Receives the results of each micro-batch."""

    name: str

    def write(self, records: PredictionRecords) -> None:
        """Append ``records`` (may buffer; :meth:`flush` makes them visible)."""
        ...

    def flush(self) -> None:
        """Make everything written so far visible to readers (file flushed, stream entries added)."""
        ...

    def close(self) -> None:
        """Flush and release the file or connection (idempotent)."""
        ...


__all__ = ["PredictionRecords", "PredictionSink"]
