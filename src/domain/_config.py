"""``PredictorConfig``: every hyperparameter of the predictor, frozen and hashable.

The class is flat (one attribute per key, as the API specification writes it) so that it can
be a static argument under ``jax.jit``; each field also records the ``config.toml`` section it
lives in, its documentation and its admissible range. ``config_from_sections`` builds a
config from the parsed TOML sections with cattrs and rejects unknown keys, wrong types and
out-of-range values with a :class:`ConfigError` that names the key and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

from ._errors import ConfigError

SECTIONS = ("core", "sensitivity", "kernels", "orchestrator", "numerical", "io", "security",
            "meta_optimization")


@attrs.frozen
class SearchRange:
    """Where the tuner searches a key (model.md §8): distinct from, and inside, the range that
    validation allows.

    Attributes:
        tier: "fast" (sensitivity: traced by the compiled core, so a fast trial after the first
            compiles nothing) or "deep" (structural: a trial may compile).
        kind: "float" (uniform on [lo, hi]), "log" (log-uniform on [lo, hi]), "int" (the integers
            lo..hi), "pow2" (the powers of two from lo to hi) or "choice" (one of ``choices``).
    """

    tier: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None


def _fast(kind: str, lo: float, hi: float) -> SearchRange:
    return SearchRange("fast", kind, lo, hi)


def _deep(kind: str, lo: float | None = None, hi: float | None = None,
          choices: tuple[Any, ...] | None = None) -> SearchRange:
    return SearchRange("deep", kind, lo, hi, choices)


def _key(default: Any, section: str, doc: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[Any, ...] | None = None, locked: bool = False, unit: str = "",
         search: SearchRange | None = None) -> Any:
    """An attrs field carrying its section, doc string, range, lock flag and tuning range
    (``search``, None: never tuned) as metadata."""
    meta = {"section": section, "doc": doc, "lo": lo, "hi": hi, "choices": choices,
            "locked": locked, "unit": unit, "search": search}
    return attrs.field(default=default, metadata=meta)


@attrs.frozen
class PredictorConfig:
    """Hyperparameter vector Λ (spec §2.1 plus what the model needs). Immutable and hashable."""

    # [core] ------------------------------------------------------------------------------
    schema_version: str = _key("1.0", "core", "Snapshot schema version written into every snapshot.",
                               locked=True)
    float_precision: int = _key(64, "core", "Floating-point width of the core (only 64 is supported).",
                                choices=(64,), locked=True)
    jax_platform: str = _key("cpu", "core", "JAX platform the predictor runs on.",
                             choices=("cpu", "gpu", "tpu"), locked=True)
    seed: int = _key(0, "core", "Seed of the explicit PRNG key held in the state.", lo=0, hi=2**32 - 1)
    staleness_ttl_ns: int = _key(500_000_000, "core",
                                 "An observation older than this (clock now − timestamp) freezes the "
                                 "weights and enters degraded mode.", lo=1, unit="ns")
    besov_nyquist_interval_ns: int = _key(100_000_000, "core",
                                          "Gap between consecutive timestamps above which a "
                                          "FrequencyWarning is emitted and the weights freeze for "
                                          "that tick; when a quarter of recent gaps times "
                                          "wtmm_min_scale exceed it, the roughness reading and the "
                                          "circuit breaker freeze (FreezingTopologicalBranchEvent). "
                                          "Set it to about 1/32 of the shortest time scale whose "
                                          "roughness matters.", lo=1, unit="ns")
    inference_recovery_hysteresis: float = _key(0.8, "core",
                                                "Degraded mode ends only on ticks fresher than this "
                                                "fraction of the TTL.", lo=0.0, hi=1.0)
    degraded_recovery_min_steps: int = _key(2, "core", "Consecutive fresh ticks needed to leave "
                                            "degraded mode.", lo=1, hi=10_000)
    sigma_bound: float = _key(20.0, "core", "Catastrophic-outlier bound: |y − ŷ| > sigma_bound·max(σ, σ_Δ), "
                              "σ the residual σ and σ_Δ the RMS increment, is rejected (state "
                              "untouched but the outlier streak, DomainError event).", lo=1.0, hi=1e6)
    level_shift_confirm_steps: int = _key(3, "core", "K: the K-th consecutive outlier on the same "
                                          "side of the forecast is a level shift: it is accepted, "
                                          "the state re-anchored at the new level and a regime "
                                          "change reported (the K − 1 before it stay rejected).",
                                          lo=2, hi=1_000_000, unit="ticks")
    frozen_signal_steps: int = _key(5, "core", "N_freeze: this many identical consecutive values "
                                    "raise the frozen-signal alarm.", lo=2, hi=10_000)
    frozen_signal_release_steps: int = _key(2, "core", "Consecutive lively steps that release the "
                                            "frozen-signal alarm.", lo=1, hi=10_000)
    frozen_signal_variance_ratio: float = _key(0.1, "core", "A step is lively when the local "
                                               "variance of increments exceeds this fraction of "
                                               "the historical one.", lo=0.0, hi=1.0)
    confidence_level: float = _key(0.95, "core", "Nominal coverage of the prediction interval.",
                                   lo=0.5, hi=0.999)
    # [sensitivity] -----------------------------------------------------------------------
    epsilon: float = _key(1e-3, "sensitivity", "ε₀: entropic regularisation of Sinkhorn and of the "
                          "free energy.", lo=1e-6, hi=1e6, search=_fast("log", 1e-4, 1e-1))
    learning_rate: float = _key(0.01, "sensitivity", "τ: JKO time step before the stability bound.",
                                lo=1e-8, hi=10.0, search=_fast("log", 1e-4, 1e-1))
    cusum_h: float = _key(7.0, "sensitivity", "CUSUM threshold h in units of the detector's robust "
                          "σ (before the kurtosis factor). 7 keeps false alarms near 0.2 per 1000 "
                          "ticks on Gaussian noise (5: about 2) and finds a +1σ level shift in a "
                          "median 11–14 ticks (docs/model.md).", lo=0.1, hi=100.0,
                          search=_fast("float", 3.0, 12.0))
    cusum_k: float = _key(0.5, "sensitivity", "CUSUM slack k in units of the detector's robust σ.",
                          lo=0.0, hi=10.0, search=_fast("float", 0.3, 1.5))
    grace_period_steps: int = _key(20, "sensitivity", "Steps after an alarm during which no new "
                                   "alarm is emitted.", lo=0, hi=100_000, search=_fast("int", 5, 50))
    volatility_alpha: float = _key(0.1, "sensitivity", "EMA decay of the residual variance.",
                                   lo=1e-4, hi=1.0, search=_deep("float", 0.05, 0.5))
    kurtosis_window: int = _key(252, "sensitivity", "Length of the rolling residual window for "
                                "the kurtosis κ_t.", lo=8, hi=100_000, search=_deep("int", 32, 512))
    # [orchestrator] ----------------------------------------------------------------------
    jko_domain_length: float = _key(1.0, "orchestrator", "L in the entropy window c·L²/σ².",
                                    lo=1e-6, hi=1e6)
    entropy_window_relaxation_factor: float = _key(5.0, "orchestrator", "c in the entropy window "
                                                   "c·L²/σ².", lo=1e-6, hi=1e6,
                                                   search=_fast("float", 20.0, 200.0))
    entropy_window_bounds_min: int = _key(10, "orchestrator", "Lower clip of the entropy window.",
                                          lo=1, hi=100_000, unit="steps", search=_deep("int", 5, 50))
    entropy_window_bounds_max: int = _key(500, "orchestrator", "Upper clip of the entropy window.",
                                          lo=1, hi=100_000, unit="steps")
    learning_rate_safety_factor: float = _key(0.8, "orchestrator", "Safety factor of the stability "
                                              "bound τ ≤ safety·2εσ².", lo=1e-6, hi=1.0)
    learning_rate_minimum: float = _key(1e-6, "orchestrator", "Floor of the JKO time step τ.",
                                        lo=0.0, hi=1.0)
    jko_mirror_step: float = _key(0.25, "orchestrator", "Step of the entropic mirror update that "
                                  "solves one JKO step (weights move by at most this many nats "
                                  "per unit of standardised energy per tick).", lo=1e-6, hi=100.0,
                                  search=_deep("log", 0.01, 1.0))
    sinkhorn_cost_type: str = _key("squared", "orchestrator", "Transport and loss cost: squared or "
                                   "huber (huber is forced in emergency mode).",
                                   choices=("squared", "huber"),
                                   search=_deep("choice", choices=("squared", "huber")))
    sinkhorn_huber_delta: float = _key(1.0, "orchestrator", "Huber δ, in units of the residual σ.",
                                       lo=1e-6, hi=1e6, search=_deep("float", 0.5, 3.0))
    sinkhorn_max_iter: int = _key(30, "orchestrator", "Bound on Sinkhorn iterations per tick (dual "
                                  "potentials are warm-started from the previous tick).",
                                  lo=1, hi=10_000, search=_deep("int", 10, 100))
    sinkhorn_tolerance: float = _key(1e-9, "orchestrator", "Marginal error under which Sinkhorn "
                                     "counts as converged.", lo=1e-15, hi=1.0)
    epsilon_min: float = _key(1e-4, "orchestrator", "ε_min in ε_t = max(ε_min, ε₀(1 + α·σ_t)).",
                              lo=1e-8, hi=1e6)
    epsilon_volatility_coupling: float = _key(0.5, "orchestrator", "α in ε_t = max(ε_min, "
                                              "ε₀(1 + α·σ_t)), σ_t the volatility ratio.",
                                              lo=0.0, hi=1e3, search=_deep("float", 0.0, 2.0))
    fallback_learning_rate: float = _key(2.0, "orchestrator", "η of the last-value floor: the "
                                         "fused weights give the last-value kernel N a share "
                                         "λ = sigmoid(u) on top of the transport weights; u gains "
                                         "η·(the transport mixture's − N's error, in RMS "
                                         "increments, each clipped at 4) per tick, within ±5 "
                                         "(docs/model.md). Needs N enabled; 0 keeps λ where it is.",
                                         lo=0.0, hi=100.0)
    interval_adaptation_rate: float = _key(0.01, "orchestrator", "Step of the online calibration "
                                           "of the interval width (0 disables it).", lo=0.0, hi=1.0,
                                           search=_deep("float", 0.0, 0.05))
    holder_threshold: float = _key(0.4, "orchestrator", "Circuit breaker: emergency when the Hölder "
                                   "exponent falls below this.", lo=0.0, hi=2.0,
                                   search=_deep("float", 0.2, 0.5))
    robustness_dimension_threshold: float = _key(1.5, "orchestrator", "Circuit breaker: emergency "
                                                 "when the graph dimension 2 − H exceeds this plus "
                                                 "the margin.", lo=1.0, hi=2.0)
    robustness_force_kernel_d: bool = _key(True, "orchestrator", "In emergency, put all weight on "
                                           "kernel D when it is enabled.")
    robustness_hysteresis_margin: float = _key(0.1, "orchestrator", "Hysteresis margin of the "
                                               "circuit breaker (in units of H).", lo=0.0, hi=1.0)
    holder_smoothing: float = _key(0.0025, "orchestrator", "EMA weight per tick of the smoothed "
                                   "Hölder estimate that drives the circuit breaker (applied as "
                                   "1 − (1 − α)^R at each refresh; it starts from the Brownian 0.5).",
                                   lo=1e-5, hi=1.0, search=_deep("log", 1e-3, 1e-1))
    entropy_scaling_trigger: float = _key(2.0, "orchestrator", "Entropy ratio that triggers "
                                          "architecture rescaling of kernel B.", lo=1.0, hi=100.0)
    # [kernels] ---------------------------------------------------------------------------
    enabled_kernels: tuple[str, ...] = _key(("A", "D", "N", "S"), "kernels", "Kernels mixed by the orchestrator, "
                                            "by registered name (see `usp kernels list`).")
    window_size: int = _key(256, "kernels", "Length of the signal window every kernel sees.",
                            lo=16, hi=65_536, unit="samples", search=_deep("pow2", 64, 1024))
    kernel_a_order: int = _key(8, "kernels", "Maximum AR order of kernel A (the order used is chosen "
                               "by BIC over 0..max).", lo=1, hi=64, search=_deep("int", 1, 15))
    kernel_a_mode: str = _key("linear", "kernels", "Kernel A: linear Wiener–Levinson predictor, or "
                              "rkhs (Gaussian-kernel ridge on delay embeddings).",
                              choices=("linear", "rkhs"), search=_deep("choice", choices=("linear", "rkhs")))
    kernel_a_rkhs_points: int = _key(64, "kernels", "Kernel A rkhs: most recent delay embeddings "
                                     "used for the ridge fit.", lo=8, hi=1024, search=_deep("int", 16, 96))
    kernel_a_ridge: float = _key(1e-2, "kernels", "Kernel A rkhs: ridge penalty λ (relative to the "
                                 "kernel matrix diagonal).", lo=1e-10, hi=1e6, search=_deep("log", 1e-4, 1.0))
    log_sig_depth: int = _key(3, "kernels", "Signature depth of kernel D.", choices=(2, 3, 4, 5),
                              search=_deep("choice", choices=(3, 4, 5)))
    seasonal_period: int = _key(0, "kernels", "Seasonal period of kernel S, in ticks (52 for weekly "
                                "data with a yearly cycle, 12 for monthly): 0 detects it from the "
                                "history that fit_history is given (autocorrelation of the "
                                "differences; none found, or no fit_history, means no seasonal "
                                "component), 1 means none.", lo=0, hi=512, unit="ticks")
    seasonal_transform: str = _key("auto", "kernels", "Kernel S: smooth the values themselves "
                                   "(none, additive seasonality), their logarithm (log, the Box–Cox "
                                   "λ = 0 case: multiplicative seasonality and trend), or both, "
                                   "keeping whichever has the lower realised error (auto; the log "
                                   "filters are used only while the window is positive).",
                                   choices=("auto", "none", "log"),
                                   search=_deep("choice", choices=("auto", "none", "log")))
    kernel_c_jump_intensity: float = _key(0.05, "kernels", "Kernel C prior jump intensity λ.",
                                          lo=0.0, hi=1e3)
    kernel_c_jump_mean: float = _key(0.0, "kernels", "Kernel C prior jump mean.", lo=-1e6, hi=1e6)
    kernel_c_jump_scale: float = _key(0.1, "kernels", "Kernel C prior jump scale.", lo=0.0, hi=1e6)
    kernel_c_jump_max_events: int = _key(16, "kernels", "Kernel C: most jumps simulated per step.",
                                         lo=1, hi=1024, search=_deep("int", 4, 64))
    kernel_b_refit_steps: int = _key(16, "kernels", "Kernel B re-estimates drift and diffusion "
                                     "and re-solves the backward equation every this many ticks "
                                     "(from its first); in between its forecast evaluates the last "
                                     "solution at the current level. Each refit is also a "
                                     "mode-collapse check of the DGM network.", lo=1, hi=65_536,
                                     unit="ticks", search=_deep("pow2", 4, 64))
    kernel_b_solver: str = _key("fd", "kernels", "Which solution of the backward equation feeds "
                                "kernel B's forecast: finite differences (fd) or the Deep Galerkin "
                                "network (dgm; finite differences until the network is first "
                                "trained).", choices=("fd", "dgm"))
    kernel_b_dgm_width: int = _key(8, "kernels", "W₀: base hidden width of kernel B's DGM network. "
                                   "The precompiled widths are W₀ and 2W₀ (the architecture scaling "
                                   "picks between them; both are held at 2W₀, so this fixes the "
                                   "state's size).", choices=(4, 8, 16), unit="neurons",
                                   search=_deep("choice", choices=(4, 8, 16)))
    kernel_b_dgm_depth: int = _key(2, "kernels", "D₀: hidden layers of kernel B's DGM network (fixes "
                                   "the state's size).", lo=1, hi=4, unit="layers",
                                   search=_deep("int", 1, 4))
    kernel_b_dgm_activation: str = _key("tanh", "kernels", "Activation of the DGM network's hidden "
                                        "layers.", choices=("tanh", "sin", "softplus"),
                                        search=_deep("choice", choices=("tanh", "sin", "softplus")))
    kernel_b_dgm_learning_rate: float = _key(1e-2, "kernels", "Initial Adam learning rate of the DGM "
                                             "training (halved after more than 5 clipped "
                                             "iterations in a row: GradientInstabilityEvent).",
                                             lo=1e-6, hi=1.0, search=_deep("log", 1e-3, 5e-2))
    kernel_b_dgm_collocation: int = _key(32, "kernels", "Interior collocation points drawn per Adam "
                                         "iteration (plus half as many terminal points and a "
                                         "quarter as many on each edge).", lo=4, hi=1024,
                                         unit="points", search=_deep("pow2", 16, 128))
    kernel_b_dgm_fit_iterations: int = _key(300, "kernels", "Adam iterations of the DGM training "
                                            "run by fit_history.", lo=0, hi=1_000_000,
                                            unit="iterations")
    kernel_b_dgm_refresh_iterations: int = _key(16, "kernels", "Adam iterations of each periodic "
                                                "refresh of the DGM network.", lo=0, hi=1_000_000,
                                                unit="iterations")
    kernel_b_dgm_refresh_steps: int = _key(1024, "kernels", "Ticks between the periodic refreshes "
                                           "of the DGM network (the first comes this many ticks "
                                           "after a cold start).", lo=1, hi=2**30, unit="ticks")
    kernel_b_collapse_ratio: float = _key(0.5, "kernels", "γ of the mode-collapse watch: a check "
                                          "fails when the DGM solution's differential entropy is "
                                          "below γ times the finite-difference reference's; more "
                                          "than 10 failed checks in a row raise "
                                          "mode_collapse_warning.", lo=0.5, hi=1.0,
                                          search=_deep("float", 0.5, 1.0))
    kernel_b_scaling_exponent: float = _key(0.5, "kernels", "β of the DGM architecture scaling "
                                            "W·D ≥ W₀·D₀·κ^β (κ the entropy ratio, applied once "
                                            "κ exceeds entropy_scaling_trigger).", lo=0.5, hi=1.0)
    # [numerical] -------------------------------------------------------------------------
    wtmm_buffer_size: int = _key(128, "numerical", "Samples in the roughness buffer; also the "
                                 "minimum history for fit_history and the calibration length.",
                                 lo=32, hi=65_536, unit="samples", search=_deep("pow2", 64, 256))
    besov_cone_c: float = _key(1.5, "numerical", "Cone constant linking wavelet maxima across "
                               "scales.", lo=0.1, hi=10.0)
    koopman_top_k: int = _key(5, "numerical", "Koopman (DMD) modes reported.", lo=1, hi=64)
    koopman_min_power: float = _key(1e-10, "numerical", "Koopman modes below this power are dropped.",
                                    lo=0.0, hi=1.0)
    paley_wiener_integral_max: float = _key(100.0, "numerical", "Paley–Wiener integral above which "
                                            "the spectrum is flagged irregular.", lo=0.0, hi=1e9)
    sde_fd_epsilon: float = _key(1e-6, "numerical", "Finite-difference step of the stiffness "
                                 "Jacobian (kernel C).", lo=1e-15, hi=1.0, search=_deep("log", 1e-8, 1e-4))
    signal_sampling_interval: float = _key(1.0, "numerical", "Nominal sampling interval used as Δt "
                                           "by the kernels and spectral diagnostics.", lo=1e-12,
                                           hi=1e12, unit="s")
    wtmm_refresh_steps: int = _key(64, "numerical", "The identification engine (WTMM, Koopman, "
                                   "Paley–Wiener) re-reads the buffer every this many accepted "
                                   "ticks and holds its reading in between.", lo=1, hi=65_536,
                                   unit="ticks", search=_deep("int", 8, 128))
    wtmm_wavelet_order: int = _key(4, "numerical", "WTMM wavelet: derivative order m of the Gaussian "
                                   "(m vanishing moments; m ≥ 2 also cancels linear trends).",
                                   choices=(1, 2, 3, 4))
    wtmm_voices_per_octave: int = _key(2, "numerical", "WTMM scale density v: scales a_j = 2^(j/v).",
                                       lo=1, hi=32, search=_deep("int", 1, 8))
    wtmm_min_scale: float = _key(1.0, "numerical", "Finest WTMM scale a_min (where maxima lines "
                                 "start).", lo=0.5, hi=1024.0, unit="samples")
    wtmm_max_scale_fraction: float = _key(0.25, "numerical", "Coarsest WTMM scale as a fraction of "
                                          "the analysed length.", lo=0.01, hi=0.5,
                                          search=_deep("float", 0.1, 0.5))
    wtmm_fit_min_scale: float = _key(2.0, "numerical", "Finest scale of the τ(q) regression (scaling "
                                     "range = [this, coarsest scale]).", lo=0.5, hi=1024.0,
                                     unit="samples")
    wtmm_fit_weight_exponent: float = _key(1.5, "numerical", "τ(q) regression weights ∝ (expected "
                                           "lines at the scale)^this; 0 gives ordinary least "
                                           "squares.", lo=0.0, hi=4.0)
    wtmm_coi_factor: float = _key(1.0, "numerical", "Cone of influence: maxima closer than this many "
                                  "scales to either end of the buffer are ignored.", lo=0.0, hi=10.0)
    wtmm_maxima_threshold: float = _key(1e-8, "numerical", "Relative threshold: a modulus maximum "
                                        "counts only above this fraction of its scale's largest "
                                        "modulus.", lo=0.0, hi=0.5)
    wtmm_q_min: float = _key(-5.0, "numerical", "Smallest moment q of the partition function (< 0).",
                             lo=-20.0, hi=-0.01)
    wtmm_q_max: float = _key(5.0, "numerical", "Largest moment q of the partition function (> 0).",
                             lo=0.01, hi=20.0)
    wtmm_q_points: int = _key(21, "numerical", "Points of the uniform q grid.", lo=3, hi=401,
                              search=_deep("int", 11, 41))
    wtmm_h_min: float = _key(-0.5, "numerical", "Lower end of the h grid of the reported spectrum "
                             "D(h).", lo=-5.0, hi=5.0)
    wtmm_h_max: float = _key(2.0, "numerical", "Upper end of the h grid of the reported spectrum "
                             "D(h).", lo=-5.0, hi=5.0)
    wtmm_h_points: int = _key(126, "numerical", "Points of the uniform h grid.", lo=2, hi=4001)
    # [io] --------------------------------------------------------------------------------
    snapshot_path: str = _key("snapshots", "io", "Directory (or key prefix) of state snapshots.",
                              locked=True)
    storage_kind: str = _key("file", "io", "State store used for snapshots named by a bare key: file "
                             "(under snapshot_path), memory, redis or s3 (connection settings from "
                             "the environment).", choices=("file", "memory", "redis", "s3"))
    telemetry_buffer_maxlen: int = _key(1024, "io", "Bound of the telemetry queue.", lo=1,
                                        hi=10_000_000, locked=True)
    credentials_vault_path: str = _key(".env", "io", "File of secrets read into the environment "
                                       "(never committed).", locked=True)
    # [security] --------------------------------------------------------------------------
    telemetry_hash_interval_steps: int = _key(1000, "security", "Steps between parity hashes of "
                                              "the weights and transport cost.", lo=1, hi=10**9,
                                              locked=True)
    snapshot_integrity_hash_algorithm: str = _key("sha256", "security", "Digest appended to every "
                                                  "snapshot.", choices=("sha256",), locked=True)
    # [meta_optimization] -----------------------------------------------------------------
    max_deep_tuning_iterations: int = _key(500, "meta_optimization", "Trial budget of the deep "
                                           "tuning tier.", lo=1, hi=100_000, locked=True)
    checkpoint_path: str = _key("io/checkpoints", "meta_optimization", "Directory of tuning "
                                "checkpoints.", locked=True)
    mutation_protocol_version: str = _key("1", "meta_optimization", "Version of the config "
                                          "mutation protocol.", locked=True)

    def __attrs_post_init__(self) -> None:
        validate(self)

    @property
    def n_kernels(self) -> int:
        return len(self.enabled_kernels)


FIELDS: dict[str, attrs.Attribute] = {f.name: f for f in attrs.fields(PredictorConfig)}


def _range_text(field: attrs.Attribute) -> str:
    meta = field.metadata
    if meta["choices"] is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta["lo"], meta["hi"]
    if lo is None and hi is None:
        return "any value"
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _where(name: str) -> str:
    return f"[{FIELDS[name].metadata['section']}] {name}"


def _check_value(field: attrs.Attribute, value: Any) -> None:
    meta = field.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"{_where(field.name)} = {value!r}: allowed {_range_text(field)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{_where(field.name)} = {value!r}: must be finite, allowed "
                              f"{_range_text(field)}")
        if (meta["lo"] is not None and value < meta["lo"]) or (
                meta["hi"] is not None and value > meta["hi"]):
            raise ConfigError(f"{_where(field.name)} = {value!r}: out of range, allowed "
                              f"{_range_text(field)}")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise ConfigError(f"{_where(field.name)} = {value!r}: does not fit a 64-bit integer "
                              f"(at most {INT64_MAX:_})")


#: Range of the int64 the core holds integers (and nanoseconds) in.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def validate(config: PredictorConfig) -> None:
    """Check every field's type and range and the cross-field constraints (raises ConfigError).

    These are the facts of the config alone; building a predictor (``FunctionalPredictor``, and
    ``usp config check``, which builds one) adds the checks that need more: the enabled kernels
    must be installed, and the WTMM scales must fit the roughness buffer.
    """
    for field in FIELDS.values():
        value = getattr(config, field.name)
        expected = field.type if isinstance(field.type, type) else None
        if field.name == "enabled_kernels":
            if not isinstance(value, tuple) or not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{_where('enabled_kernels')} = {value!r}: a non-empty list of "
                                  "kernel names is required")
            if len(set(value)) != len(value):
                raise ConfigError(f"{_where('enabled_kernels')} = {list(value)!r}: names repeat")
            continue
        _check_type(field.name, value, _TYPES[field.name] if expected is None else expected)
        _check_value(field, value)
    if config.entropy_window_bounds_min > config.entropy_window_bounds_max:
        raise ConfigError(f"{_where('entropy_window_bounds_min')} = {config.entropy_window_bounds_min}"
                          f" exceeds entropy_window_bounds_max = {config.entropy_window_bounds_max}")
    if config.window_size < config.wtmm_buffer_size:
        raise ConfigError(f"{_where('window_size')} = {config.window_size}: must be at least "
                          f"wtmm_buffer_size = {config.wtmm_buffer_size}")
    if 4 * config.kernel_a_order >= config.wtmm_buffer_size:
        raise ConfigError(f"{_where('kernel_a_order')} = {config.kernel_a_order}: must be below "
                          f"wtmm_buffer_size / 4 = {config.wtmm_buffer_size / 4:g}")
    if config.wtmm_h_min >= config.wtmm_h_max:
        raise ConfigError(f"{_where('wtmm_h_min')} = {config.wtmm_h_min} must be below wtmm_h_max = "
                          f"{config.wtmm_h_max}")
    if config.signal_sampling_interval * 1e9 >= INT64_MAX:
        raise ConfigError(f"{_where('signal_sampling_interval')} = {config.signal_sampling_interval!r} s: in "
                          f"nanoseconds it does not fit a 64-bit integer (at most {INT64_MAX / 1e9:.4g} s)")
    if config.kernel_a_mode == "rkhs" and config.kernel_a_rkhs_points + config.kernel_a_order >= config.window_size:
        raise ConfigError(f"{_where('kernel_a_rkhs_points')} = {config.kernel_a_rkhs_points}: plus "
                          f"kernel_a_order must stay below window_size = {config.window_size}")


_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
_TYPES: dict[str, type] = {
    f.name: _PY_TYPES[str(f.type)] for f in attrs.fields(PredictorConfig) if isinstance(f.type, str)
    and f.type in _PY_TYPES
}


def _check_type(name: str, value: Any, expected: type) -> None:
    ok = (isinstance(value, bool) if expected is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
          isinstance(value, int) and not isinstance(value, bool) if expected is int else
          isinstance(value, expected))
    if not ok:
        raise ConfigError(f"{_where(name)} = {value!r}: expected {expected.__name__}, got "
                          f"{type(value).__name__}; allowed {_range_text(FIELDS[name])}")


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    # Keep values as written (no silent str→float coercion): `validate` checks the types.
    for kind in (int, float, str, bool):
        converter.register_structure_hook(kind, lambda value, _: value)
    converter.register_structure_hook_func(
        lambda kind: kind == tuple[str, ...] or kind == "tuple[str, ...]",
        lambda value, _: tuple(value) if isinstance(value, (list, tuple)) else value)
    return converter


_CONVERTER = _converter()


def config_from_sections(sections: Mapping[str, Any]) -> PredictorConfig:
    """Build a config from ``{section: {key: value}}`` (the parsed ``config.toml``).

    Missing keys take their defaults. Unknown sections, unknown keys, keys in the wrong
    section, wrong types and out-of-range values raise :class:`ConfigError`.
    """
    flat: dict[str, Any] = {}
    for section, table in sections.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; allowed: "
                              + ", ".join(f"[{s}]" for s in SECTIONS))
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table of keys, got {type(table).__name__}")
        for key, value in table.items():
            field = FIELDS.get(key)
            if field is None:
                raise ConfigError(f"unknown key [{section}] {key}; see docs/configuration.md for "
                                  "the keys of each section")
            if field.metadata["section"] != section:
                raise ConfigError(f"key {key} belongs to [{field.metadata['section']}], not "
                                  f"[{section}]")
            flat[key] = value
    try:
        return _CONVERTER.structure(flat, PredictorConfig)
    except cattrs.BaseValidationError as exc:
        raise _first_config_error(exc) from None


#: Sections whose keys configure I/O and tooling around the core, never the compiled step.
IO_SECTIONS = ("io", "security", "meta_optimization")
#: Keys of other sections that only label I/O (the snapshot header), never the compiled step.
IO_KEYS = ("schema_version",)


def core_config(config: PredictorConfig) -> PredictorConfig:
    """``config`` with every key of :data:`IO_SECTIONS` and :data:`IO_KEYS` at its default: what the compiled core
    (and the kernels, which see this config at trace time) depends on. Two configs that differ
    only in I/O keys share one compiled graph."""
    io_defaults: dict[str, Any] = {name: field.default for name, field in FIELDS.items()
                                   if (field.metadata["section"] in IO_SECTIONS or name in IO_KEYS)
                                   and getattr(config, name) != field.default}
    return attrs.evolve(config, **io_defaults) if io_defaults else config


def _first_config_error(exc: BaseException) -> ConfigError:
    """The ConfigError inside a cattrs exception group (validation runs in __attrs_post_init__)."""
    if isinstance(exc, ConfigError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _first_config_error(inner)
        if found is not None:
            return found
    return ConfigError(f"invalid configuration: {exc}")


def config_to_sections(config: PredictorConfig) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`config_from_sections` (tuples become lists, as in TOML)."""
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, field in FIELDS.items():
        value = getattr(config, name)
        sections[field.metadata["section"]][name] = list(value) if isinstance(value, tuple) else value
    return sections
