"""``ObservationSource``: where the ticks of ``usp serve`` come from (a file, stdin, a broker).

A source hands out *micro-batches* of ticks in arrival order, each tick an
``(asset_id, timestamp, value)`` triple, as three parallel columns. Order matters: ticks of one
asset are applied in the order the source returns them. A source never parses into floats it
cannot represent silently: a record it cannot read (wrong field count, a timestamp without an
offset, a value that is not a number) is skipped and reported as a
:class:`MalformedObservationEvent` through the ``on_event`` callback it was built with, and the
``usp.ingestion`` logger. A value that parses but is NaN or infinite is *not* malformed: it is
passed on, and the predictor rejects it as a tick event.

Acknowledgement: the service calls :meth:`ObservationSource.acknowledge` with the batches whose
ticks are durable (in a snapshot). A broker source (Redis Streams) redelivers, after a crash,
what was read but never acknowledged; a file source has nothing to forget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs
import numpy as np


@attrs.frozen(eq=False)
class ObservationBatch:
    """Ticks read from a source, in arrival order (row i is one tick).

    ``receipts`` are the source's acknowledgement handles, one per row, in row order (Redis
    entry ids; empty for sources that need none). A batch may be empty (nothing arrived in time).
    """

    assets: tuple[str, ...]          #: asset id of each row
    timestamps_ns: np.ndarray        #: int64[n], UTC nanoseconds since the Unix epoch
    values: np.ndarray               #: float64[n], signal units (NaN/inf pass through)
    receipts: tuple[str, ...] = ()   #: acknowledgement handle per row, or () when not needed

    def __attrs_post_init__(self) -> None:
        n = len(self.assets)
        if self.timestamps_ns.shape != (n,) or self.values.shape != (n,):
            raise ValueError(f"an ObservationBatch needs {n} timestamps and values, got shapes "
                             f"{self.timestamps_ns.shape} and {self.values.shape}")
        if self.timestamps_ns.dtype != np.int64 or self.values.dtype != np.float64:
            raise TypeError("ObservationBatch columns are int64 timestamps and float64 values, got "
                            f"{self.timestamps_ns.dtype} and {self.values.dtype}")
        if self.receipts and len(self.receipts) != n:
            raise ValueError(f"{len(self.receipts)} receipts for {n} rows")

    def __len__(self) -> int:
        return len(self.assets)


def empty_batch() -> ObservationBatch:
    """A batch of no ticks (what ``read`` returns when nothing arrived within its timeout)."""
    return ObservationBatch((), np.zeros(0, np.int64), np.zeros(0, np.float64))


@attrs.frozen
class MalformedObservationEvent:
    """A record the source could not read was skipped. ``location`` is ``file:line`` or an
    entry id; ``reason`` says what was wrong, without echoing more than 80 characters of input."""

    source: str
    location: str
    reason: str


SourceEventCallback = Callable[[MalformedObservationEvent], None]


@runtime_checkable
class ObservationSource(Protocol):
    """A stream of ticks for many assets.

    ``live`` is True for a source whose ticks arrive in real time (stdin, a broker, a followed
    file): the service then judges staleness by the wall clock; a replayed file is not live and
    runs on replay time (``ReplayClock``).
    """

    #: short description for logs and errors (a path, ``-``, ``redis://host:port/db?stream=…``)
    name: str
    live: bool

    def read(self, max_rows: int, timeout_s: float) -> ObservationBatch | None:
        """Up to ``max_rows`` (≥ 1) ticks, waiting at most ``timeout_s`` seconds for the first.

        Returns an empty batch when nothing arrived in time, and ``None`` once the source has
        ended (a replayed file at its end, stdin at EOF; never for a following or broker source).
        """
        ...

    def acknowledge(self, batches: Sequence[ObservationBatch]) -> None:
        """The ticks of ``batches`` are applied and durable: the source may forget them."""
        ...

    def close(self) -> None:
        """Stop reading and release the connection or file (idempotent)."""
        ...


__all__ = ["MalformedObservationEvent", "ObservationBatch", "ObservationSource", "SourceEventCallback",
           "empty_batch"]
