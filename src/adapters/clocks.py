"""Clock adapters: the system clock, and a replay clock for historical data."""

from __future__ import annotations

import threading
import time


class SystemClock:
    """Wall-clock UTC time (``time.time_ns``)."""

    def now_ns(self) -> int:
        return time.time_ns()

    def observe(self, timestamp_ns: int) -> None:
        del timestamp_ns


class ReplayClock:
    """Time as the data says: "now" is the newest timestamp seen plus a fixed delay.

    Replaying a historical file therefore never trips staleness (the default delay is 0);
    a positive ``delay_ns`` simulates a feed that lags by that much. Safe to share between
    threads: "now" never goes backwards.
    """

    def __init__(self, delay_ns: int = 0) -> None:
        self._now: int | None = None
        self._lock = threading.Lock()
        self.delay_ns = int(delay_ns)

    def now_ns(self) -> int:
        return (0 if self._now is None else self._now) + self.delay_ns

    def observe(self, timestamp_ns: int) -> None:
        stamp = int(timestamp_ns)
        with self._lock:
            self._now = stamp if self._now is None else max(self._now, stamp)


class ManualClock:
    """A clock set by hand (tests and simulations)."""

    def __init__(self, now_ns: int = 0) -> None:
        self._now = int(now_ns)

    def now_ns(self) -> int:
        return self._now

    def set(self, now_ns: int) -> None:
        self._now = int(now_ns)

    def observe(self, timestamp_ns: int) -> None:
        del timestamp_ns
