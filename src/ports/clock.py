"""Clock port: where "now" comes from for staleness checks."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def now_ns(self) -> int:
        """Current UTC time in integer nanoseconds since the Unix epoch."""
        ...

    def observe(self, timestamp_ns: int) -> None:
        """Told the timestamp of every tick before it is checked (a replay clock follows it)."""
        ...
