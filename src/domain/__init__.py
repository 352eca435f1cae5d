"""Pure JAX domain core: no I/O, no project imports outside this package."""

from ._config import PredictorConfig, config_from_sections, config_to_sections
from ._errors import (
    ConfigError,
    DomainError,
    FrequencyWarning,
    IntegrityError,
    StalenessWarning,
    TimestampError,
    USPError,
)
from ._kernel import KernelForecast, KernelSpec, Window

__all__ = [
    "ConfigError", "DomainError", "FrequencyWarning", "IntegrityError", "KernelForecast",
    "KernelSpec", "PredictorConfig", "StalenessWarning", "TimestampError", "USPError", "Window",
    "config_from_sections", "config_to_sections",
]
