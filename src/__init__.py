"""USP — Universal Stochastic Predictor."""

from . import _jax_setup  # noqa: F401  (x64 and cache settings before any JAX use)
from .domain import ConfigError, DomainError, IntegrityError, PredictorConfig

__all__ = ["ConfigError", "DomainError", "IntegrityError", "PredictorConfig"]
