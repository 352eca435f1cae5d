"""Event codes: bits the jitted core sets in the tick's status word (diffrax-style RESULTS).

The host layer turns each set bit into an event record (``usp.application.types.decode_events``).
"""

from __future__ import annotations

import enum


class EventCode(enum.IntFlag):
    """One bit per event a tick can raise."""

    REJECTED_NON_FINITE = 1 << 0       #: value NaN or ±inf: tick rejected, state untouched
    REJECTED_OUTLIER = 1 << 1          #: |y − ŷ| > sigma_bound·σ: tick rejected (DomainError)
    REJECTED_OUT_OF_ORDER = 1 << 2     #: timestamp earlier than the previous tick's: rejected
    STALE_DATA = 1 << 3                #: now − timestamp > TTL: weights frozen, degraded mode
    SPARSE_ARRIVAL = 1 << 4            #: gap > Nyquist interval: FrequencyWarning, weights frozen
    FROZEN_SIGNAL = 1 << 5             #: N_freeze identical values: frozen-signal alarm raised
    FROZEN_SIGNAL_RELEASED = 1 << 6    #: the signal is lively again
    REGIME_CHANGED = 1 << 7            #: CUSUM alarm: weights and energies reset to uniform
    CRITICAL_SINGULARITY = 1 << 8      #: circuit breaker entered emergency mode
    SINGULARITY_CLEARED = 1 << 9       #: circuit breaker left emergency mode
    NORMAL_OPERATION_RESTORED = 1 << 10  #: degraded mode ended
    SINKHORN_NOT_CONVERGED = 1 << 11   #: marginal error above tolerance after the iteration bound
    LOW_EPSILON = 1 << 12              #: ε_t < 1e-4: Sinkhorn is ill-conditioned
    TOPOLOGICAL_BRANCH_FROZEN = 1 << 13    #: a quarter of recent gaps too coarse for the finest WTMM scale
    TOPOLOGICAL_BRANCH_RELEASED = 1 << 14  #: sampling dense again: the roughness reading resumes
    REJECTED_MAGNITUDE = 1 << 15       #: finite but |y| > MAGNITUDE_LIMIT (1e100): tick rejected, state untouched
    KERNEL_UNSTABLE = 1 << 16          #: a kernel's simulation or solve diverged; it fell back (KernelEvent.UNSTABLE)
    KERNEL_GRADIENT_INSTABILITY = 1 << 17  #: a kernel's training clipped too often; its learning rate was lowered
    KERNEL_MODE_COLLAPSE = 1 << 18     #: a kernel's solution collapsed: it gets no weight until it recovers

    @classmethod
    def rejected(cls) -> EventCode:
        """The bits of a rejected tick (the state is returned untouched)."""
        return cls.REJECTED_NON_FINITE | cls.REJECTED_MAGNITUDE | cls.REJECTED_OUTLIER | cls.REJECTED_OUT_OF_ORDER
