"""Load shedding by signature depth (API spec §18–19, model.md §7): a pure-Python controller.

The predictor keeps one compiled step per signature depth ``M ∈ {2, 3, 5}`` (built at warm-up:
``log_sig_depth`` is a static config field, so :func:`depth_variants` gives one config — one jit
cache entry — per depth). After every step the host hands the measured step latency
(``time.perf_counter_ns`` difference) to :meth:`LoadSheddingController.record`, which returns the
depth to use for the next step. Nothing here touches JAX.

Measures (over a bounded ring of the last ``policy.window`` steps):

* **latency EWMA** ``L̄ ← α L + (1 − α) L̄`` (seeded with the first sample);
* **jitter**: the step-to-step latency variation ``|L_t − L_{t−1}|`` (RFC 3550 style), with its
  P95/P99 (nearest rank) over the ring; latency P50/P95/P99 are reported too.

Decision, with hysteresis (``budget`` is the per-tick time budget, e.g. the Nyquist interval
``besov_nyquist_interval_ns``):

* *overloaded* when ``L̄ > latency_fraction·budget`` or jitter P95 ``> jitter_fraction·budget``
  (0.8 by default: spec §19). After ``degrade_after`` consecutive overloaded steps, and at least
  ``cooldown`` steps after the previous switch (so the EWMA can see the cheaper depth), the depth
  drops one level;
* *calm* when both figures are under ``recover_margin`` times their limits. After
  ``recover_after`` consecutive calm steps the depth climbs one level;
* in between (the hysteresis band) nothing moves and both streaks reset.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

__all__ = ["LoadSheddingController", "LoadSheddingFigures", "LoadSheddingPolicy", "depth_variants"]


@dataclasses.dataclass(frozen=True)
class LoadSheddingPolicy:
    """Thresholds of the controller (times in nanoseconds)."""

    budget_ns: int = 100_000_000
    depths: tuple[int, ...] = (2, 3, 5)
    latency_fraction: float = 0.5
    jitter_fraction: float = 0.8
    recover_margin: float = 0.6
    degrade_after: int = 3
    recover_after: int = 200
    cooldown: int = 20
    ewma_alpha: float = 0.1
    window: int = 128

    def __post_init__(self) -> None:
        if not self.depths or list(self.depths) != sorted(set(self.depths)):
            raise ValueError(f"depths must be strictly increasing and non-empty, got {self.depths}")
        if self.budget_ns <= 0:
            raise ValueError(f"budget_ns must be positive, got {self.budget_ns}")
        for name in ("latency_fraction", "jitter_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.recover_margin < 1:
            raise ValueError(f"recover_margin must lie in (0, 1), got {self.recover_margin}")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must lie in (0, 1], got {self.ewma_alpha}")
        if min(self.degrade_after, self.recover_after, self.window) < 1 or self.cooldown < 0:
            raise ValueError("degrade_after, recover_after and window must be >= 1, cooldown >= 0")

    @property
    def latency_limit_ns(self) -> float:
        return self.latency_fraction * self.budget_ns

    @property
    def jitter_limit_ns(self) -> float:
        return self.jitter_fraction * self.budget_ns


@dataclasses.dataclass(frozen=True)
class LoadSheddingFigures:
    """Telemetry of the controller (nanoseconds; NaN before the first samples)."""

    depth: int
    latency_ewma_ns: float
    latency_p50_ns: float
    latency_p95_ns: float
    latency_p99_ns: float
    jitter_p95_ns: float
    jitter_p99_ns: float
    shed: bool
    switches: int
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _SortedRing:
    """The last ``size`` values, kept both in arrival order and sorted (O(size) per push)."""

    def __init__(self, size: int) -> None:
        self._order: collections.deque[int] = collections.deque()
        self._sorted: list[int] = []
        self._size = size

    def push(self, value: int) -> None:
        if len(self._order) == self._size:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile ``q`` in [0, 100] (NaN when empty)."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        return float(self._sorted[max(math.ceil(q / 100.0 * n), 1) - 1])

    def __len__(self) -> int:
        return len(self._sorted)


class LoadSheddingController:
    """Chooses the signature depth from measured step latencies (see the module docstring)."""

    def __init__(self, policy: LoadSheddingPolicy | None = None, depth: int | None = None) -> None:
        self.policy = policy or LoadSheddingPolicy()
        start = self.policy.depths[-1] if depth is None else depth
        if start not in self.policy.depths:
            raise ValueError(f"depth {start} is not one of {self.policy.depths}")
        self._level = self.policy.depths.index(start)
        self._latencies = _SortedRing(self.policy.window)
        self._jitters = _SortedRing(self.policy.window)
        self._ewma = math.nan
        self._previous: int | None = None
        self._bad = self._good = 0
        self._since_switch = self.policy.cooldown
        self._switches = 0
        self._samples = 0

    @property
    def depth(self) -> int:
        """The depth the next step should use."""
        return self.policy.depths[self._level]

    def record(self, latency_ns: int) -> int:
        """Account one step's latency (ns, e.g. a ``perf_counter_ns`` difference); return the depth."""
        latency = int(latency_ns)
        if latency < 0:
            raise ValueError(f"latency must be non-negative, got {latency_ns}")
        policy = self.policy
        self._samples += 1
        self._since_switch += 1
        self._latencies.push(latency)
        if self._previous is not None:
            self._jitters.push(abs(latency - self._previous))
        self._previous = latency
        alpha = policy.ewma_alpha
        self._ewma = latency if math.isnan(self._ewma) else alpha * latency + (1 - alpha) * self._ewma
        jitter = self._jitters.percentile(95.0) if len(self._jitters) else 0.0
        overloaded = self._ewma > policy.latency_limit_ns or jitter > policy.jitter_limit_ns
        calm = (self._ewma < policy.recover_margin * policy.latency_limit_ns
                and jitter < policy.recover_margin * policy.jitter_limit_ns)
        if overloaded:
            self._bad, self._good = self._bad + 1, 0
            if (self._bad >= policy.degrade_after and self._since_switch >= policy.cooldown
                    and self._level > 0):
                self._switch(-1)
        elif calm:
            self._good, self._bad = self._good + 1, 0
            if self._good >= policy.recover_after and self._level < len(policy.depths) - 1:
                self._switch(+1)
        else:
            self._good = self._bad = 0
        return self.depth

    def _switch(self, step: int) -> None:
        self._level += step
        self._switches += 1
        self._since_switch = 0
        self._bad = self._good = 0

    @contextmanager
    def timed(self) -> Iterator[None]:
        """``with controller.timed(): step()`` records the block's ``perf_counter_ns`` latency."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.record(time.perf_counter_ns() - start)

    def figures(self) -> LoadSheddingFigures:
        """Current depth and latency/jitter figures for telemetry (and Prometheus)."""
        return LoadSheddingFigures(
            depth=self.depth, latency_ewma_ns=float(self._ewma),
            latency_p50_ns=self._latencies.percentile(50.0),
            latency_p95_ns=self._latencies.percentile(95.0),
            latency_p99_ns=self._latencies.percentile(99.0),
            jitter_p95_ns=self._jitters.percentile(95.0), jitter_p99_ns=self._jitters.percentile(99.0),
            shed=self._level < len(self.policy.depths) - 1, switches=self._switches,
            samples=self._samples)


def depth_variants(config: Any, depths: tuple[int, ...] = (2, 3, 5)) -> dict[int, Any]:
    """One config per depth (``attrs.evolve(config, log_sig_depth=M)``): one jit cache entry each."""
    return {m: attrs.evolve(config, log_sig_depth=m) for m in depths}
