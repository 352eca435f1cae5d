"""USP — Universal Stochastic Predictor.

Online, tick-by-tick forecasting of a scalar stream whose law is unknown: prediction kernels
mixed by an optimal-transport (JKO/Sinkhorn) orchestrator, guarded by a roughness circuit
breaker and a kurtosis-adaptive CUSUM regime detector. See README.md.
"""

from . import _jax_setup  # noqa: F401  (x64 and cache settings before any JAX use)
from ._backtest import BacktestResult, backtest
from .adapters.clocks import ManualClock, ReplayClock, SystemClock
from .adapters.redis_cluster import ShardedTickProducer
from .application import (
    BatchPrediction,
    ColumnarBatch,
    OperatingMode,
    PredictionResult,
    ProcessState,
    Telemetry,
)
from .application.config_file import load_config
from .application.config_mutation import ConfigMutationError
from .application.tuning import OptimizationResult
from .application.types import (
    CriticalSingularityEvent,
    Event,
    FreezingTopologicalBranchEvent,
    FrozenSignalAlarmEvent,
    FrozenSignalReleasedEvent,
    LowEpsilonEvent,
    MagnitudeRejectedEvent,
    NonFiniteRejectedEvent,
    NormalOperationRestoredEvent,
    OutlierRejectedEvent,
    OutOfOrderRejectedEvent,
    RegimeChangedEvent,
    SingularityClearedEvent,
    SinkhornNotConvergedEvent,
    SparseArrivalEvent,
    StaleDataEvent,
    TopologicalBranchReleasedEvent,
)
from .composition import BayesianMetaOptimizer, ConfigReloadablePredictor, FunctionalPredictor, UniversalPredictor
from .domain import (
    ConfigError,
    DomainError,
    FrequencyWarning,
    IntegrityError,
    KernelForecast,
    KernelSpec,
    PredictorConfig,
    StalenessWarning,
    TimestampError,
    USPError,
    Window,
)
from .domain._events import EventCode
from .ports.state_store import SnapshotKeyError
from .ports.tuner import SearchSpace

__all__ = [
    "BacktestResult",
    "BatchPrediction",
    "BayesianMetaOptimizer",
    "ColumnarBatch",
    "ConfigError",
    "ConfigMutationError",
    "ConfigReloadablePredictor",
    "CriticalSingularityEvent",
    "DomainError",
    "Event",
    "EventCode",
    "FreezingTopologicalBranchEvent",
    "FrequencyWarning",
    "FrozenSignalAlarmEvent",
    "FrozenSignalReleasedEvent",
    "FunctionalPredictor",
    "IntegrityError",
    "KernelForecast",
    "KernelSpec",
    "LowEpsilonEvent",
    "MagnitudeRejectedEvent",
    "ManualClock",
    "NonFiniteRejectedEvent",
    "NormalOperationRestoredEvent",
    "OperatingMode",
    "OptimizationResult",
    "OutOfOrderRejectedEvent",
    "OutlierRejectedEvent",
    "PredictionResult",
    "PredictorConfig",
    "ProcessState",
    "RegimeChangedEvent",
    "ReplayClock",
    "SearchSpace",
    "ShardedTickProducer",
    "SingularityClearedEvent",
    "SinkhornNotConvergedEvent",
    "SnapshotKeyError",
    "SparseArrivalEvent",
    "StaleDataEvent",
    "StalenessWarning",
    "SystemClock",
    "Telemetry",
    "TimestampError",
    "TopologicalBranchReleasedEvent",
    "USPError",
    "UniversalPredictor",
    "Window",
    "backtest",
    "load_config",
]
