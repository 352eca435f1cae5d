"""What a stateful predictor says about one tick's event bits: Python warnings and log lines.

Stale ticks raise a ``StalenessWarning``, sparse arrivals and a frozen roughness branch a
``FrequencyWarning``; rejections are logged as errors, regime changes, releases and emergency
mode as information. Warnings point at the caller of the predictor's ``step``/``step_raw``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..domain import FrequencyWarning, PredictorConfig, StalenessWarning
from ..domain._core import Out
from ..domain._events import EventCode

logger = logging.getLogger("usp.predictor")


def report_tick_events(bits: int, output: np.ndarray, timestamp_ns: int, config: PredictorConfig) -> None:
    """Warn and log for the event ``bits`` of the tick at ``timestamp_ns`` (output layout ``Out``).

    Called directly by ``step_raw``: ``stacklevel=3`` points the warnings at its caller.
    """
    if bits & EventCode.rejected():
        logger.error("DomainError: tick at %d ns rejected (%s); returning the last valid result",
                     timestamp_ns, EventCode(bits & EventCode.rejected()).name)
    if bits & EventCode.STALE_DATA:
        warnings.warn(f"tick at {timestamp_ns} ns is older than staleness_ttl_ns="
                      f"{config.staleness_ttl_ns}: weights frozen (degraded mode)",
                      StalenessWarning, stacklevel=3)
    if bits & EventCode.SPARSE_ARRIVAL:
        warnings.warn(f"arrival gap above besov_nyquist_interval_ns="
                      f"{config.besov_nyquist_interval_ns}: roughness may alias",
                      FrequencyWarning, stacklevel=3)
    if bits & EventCode.REGIME_CHANGED:
        logger.info("regime change at %d ns (CUSUM %.3g, threshold %.3g)", timestamp_ns, output[Out.CUSUM],
                    output[Out.THRESHOLD])
    if bits & EventCode.TOPOLOGICAL_BRANCH_FROZEN:
        warnings.warn(f"sampling too coarse for the finest wavelet scale (a quarter of recent gaps × "
                      f"wtmm_min_scale > besov_nyquist_interval_ns={config.besov_nyquist_interval_ns}): "
                      f"Hölder reading and circuit breaker frozen", FrequencyWarning, stacklevel=3)
    if bits & EventCode.TOPOLOGICAL_BRANCH_RELEASED:
        logger.info("sampling dense again at %d ns: Hölder reading resumed", timestamp_ns)
    if bits & EventCode.CRITICAL_SINGULARITY:
        logger.info("emergency mode: Hölder exponent %.3f", output[Out.HOLDER])


__all__ = ["report_tick_events"]
