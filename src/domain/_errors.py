"""Exceptions raised at the host edge, and the event records a tick can carry.

The jitted core never raises: it reports through integer status bits (see
``_events.EventCode``); the host layer turns those bits into the records below and, where the
specification asks for it, into warnings or exceptions.
"""

from __future__ import annotations


class USPError(Exception):
    """Base class of every error USP raises on purpose."""


class ConfigError(USPError, ValueError):
    """A configuration key is unknown, of the wrong type or out of range (the message names it)."""


class DomainError(USPError, ValueError):
    """An observation outside the admissible domain (non-finite, wrong shape, catastrophic outlier)."""


class IntegrityError(USPError):
    """A snapshot or checkpoint failed verification (digest mismatch, truncation, tampering)."""


class TimestampError(USPError, ValueError):
    """A timestamp is naive (no timezone) or not a datetime / integer nanoseconds."""


class StalenessWarning(UserWarning):
    """An observation arrived later than ``staleness_ttl_ns``: weights are frozen (degraded mode)."""


class FrequencyWarning(UserWarning):
    """Arrivals are sparser than ``besov_nyquist_interval_ns``: roughness estimates may alias."""
