"""Conformance checks for kernel plugins, in the spirit of scikit-learn's ``check_estimator``.

``check_kernel(spec)`` runs the named checks of :data:`CHECKS` in order on one kernel, with a
small configuration, in a few seconds. The first failure raises :class:`KernelCheckError` (an
``AssertionError``, so it fails a test) naming the check and the problem; success returns a
:class:`KernelCheckReport`. Use it in the kernel package's own tests::

    from usp.testing import check_kernel
    from my_package.kernels import MY_KERNEL

    def test_my_kernel_conforms():
        check_kernel(MY_KERNEL)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from . import _check_support as support
from ._check_support import Problem, Traced
from .application.snapshot import blocks_to_pytree, decode_snapshot, encode_snapshot, pytree_to_blocks
from .domain._config import PredictorConfig
from .domain._kernel import KernelEvent, KernelForecast, KernelReport, KernelSpec

#: The checks, in the order they run, and what each one requires.
CHECKS: dict[str, str] = {
    "spec": "a KernelSpec with a non-empty name and callable init, update, predict (and fit, if set)",
    "jit": "init, update and predict run under jax.jit; predict returns a KernelForecast of scalar floats",
    "no_callbacks": "the jaxprs of init, update, predict and fit, nested ones included, hold no host callback "
                    "(io_callback, pure_callback, jax.debug.callback, jax.debug.print)",
    "fixed_shapes": "update keeps the state's pytree structure, shapes, dtypes and weak types",
    "finite": "forecasts and state stay finite on a random walk and on adversarial windows (constant, "
              "±1e100, scale 1e-300, alternating, a jump, a spike, small counts, signal_frozen, emergency), "
              "from a cold and a warm state",
    "positive_scale": "the forecast scale is > 0 on every one of those ticks",
    "deterministic": "the same key and windows give bit-identical states and forecasts, also when traced afresh",
    "vmap": "jax.vmap of init and of update+predict over a batch equals the single results row by row (1e-12)",
    "snapshot": "the state survives the snapshot codec bit-identically and gives the identical next forecast",
    "no_recompilation": "after warm-up nothing traces again: not a new state, a restored one, nor new windows",
    "fit": "fit (when defined) runs under jit and vmap, keeps the state's structure and stays finite, also on a "
           "history with NaN and ±inf entries",
    "fit_honoured": "fit_history applies fit once to the kernel state its scan leaves (through a predictor)",
    "report": "report (when defined) runs under jit and vmap and returns a KernelReport of finite float64 values, "
              "one per name in diagnostics, and an int32 scalar of KernelEvent bits, on every state of the "
              "finite check",
}
_FIT_CHECKS = ("fit", "fit_honoured")
_NON_FINITE_HISTORY = "a history with NaN and ±inf entries"


class KernelCheckError(AssertionError):
    """A kernel failed a check: ``check`` (a key of :data:`CHECKS`) and ``problem`` say how."""

    def __init__(self, kernel: str, check: str, problem: str, passed: tuple[str, ...] = ()) -> None:
        self.kernel, self.check, self.problem, self.passed = kernel, check, problem, passed
        done = f" [passed before it: {', '.join(passed)}]" if passed else ""
        super().__init__(f"kernel {kernel!r} fails check {check!r}: {problem}{done}")


@attrs.frozen
class KernelCheckReport:
    """What :func:`check_kernel` verified: the checks passed (in order), those skipped (``fit`` and
    ``fit_honoured`` for a kernel without ``fit``), notes on inconclusive checks, and the time."""

    kernel: str
    passed: tuple[str, ...]
    skipped: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float

    def __str__(self) -> str:
        lines = [f"kernel {self.kernel!r}: {len(self.passed)} checks passed in {self.seconds:.1f} s "
                 f"({', '.join(self.passed)})"]
        lines += [f"  skipped {name}: the kernel defines no fit" for name in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class _Tick(NamedTuple):
    """What one tick returns (named, so differences read ``.state.level``, ``.forecast.mean``)."""

    state: Any
    forecast: Any


def check_config(spec: KernelSpec) -> PredictorConfig:
    """The small configuration ``check_kernel`` uses by default (window of 32, only this kernel)."""
    return PredictorConfig(window_size=32, wtmm_buffer_size=32, kernel_a_order=4, log_sig_depth=2,
                           enabled_kernels=(spec.name,))


def check_kernel(spec: KernelSpec, config: PredictorConfig | None = None) -> KernelCheckReport:
    """Run every check of :data:`CHECKS` on ``spec`` with ``config`` (default :func:`check_config`).

    Raises:
        KernelCheckError: the first check that fails; the message names the check and the problem
            (the JAX error, when there is one, is chained as ``__cause__``).
    """
    started = time.perf_counter()
    name = spec.name if isinstance(spec, KernelSpec) else repr(spec)
    try:
        _check_spec(spec)
    except Problem as exc:
        raise KernelCheckError(name, "spec", str(exc)) from None
    run = _Run(spec, config if config is not None else check_config(spec))
    passed: list[str] = ["spec"]
    notes: list[str] = []
    has_fit = spec.fit is not None
    skipped = (() if has_fit else _FIT_CHECKS) + (() if spec.report is not None else ("report",))
    for check in list(CHECKS)[1:]:
        if check in skipped:
            continue
        try:
            note = getattr(run, f"check_{check}")()
        except Problem as exc:
            raise KernelCheckError(name, check, str(exc), tuple(passed)) from exc.__cause__
        except Exception as exc:  # the kernel's own error, with what it was doing
            raise KernelCheckError(name, check, support.explain(exc), tuple(passed)) from exc
        passed.append(check)
        if note:
            notes.append(note)
    return KernelCheckReport(name, tuple(passed), skipped, tuple(notes), time.perf_counter() - started)


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, KernelSpec):
        raise Problem(f"expected a usp.kernel.KernelSpec, got {type(spec).__name__}")
    if not isinstance(spec.name, str) or not spec.name:
        raise Problem(f"the name must be a non-empty string, got {spec.name!r}")
    for field in ("init", "update", "predict"):
        if not callable(getattr(spec, field)):
            raise Problem(f"{field} is not callable: {getattr(spec, field)!r}")
    if spec.fit is not None and not callable(spec.fit):
        raise Problem(f"fit is neither None nor callable: {spec.fit!r}")
    if spec.report is not None and not callable(spec.report):
        raise Problem(f"report is neither None nor callable: {spec.report!r}")


@contextmanager
def _doing(what: str) -> Iterator[None]:
    """Turn an exception of the kernel's code into a Problem that says what was being done."""
    try:
        yield
    except Problem:
        raise
    except Exception as exc:
        raise Problem(f"{what} raised: {support.explain(exc)}") from exc


class _Run:
    """The state of one ``check_kernel`` run: each method is one check; later checks reuse the
    compiled functions and the states of earlier ones."""

    def __init__(self, spec: KernelSpec, config: PredictorConfig) -> None:
        self.spec = spec
        self.config = config
        self.size = config.window_size
        self.key = jax.random.PRNGKey(0)

    # -- the kernel's functions, closed over the config ------------------------------------------
    def _init(self, key: jax.Array) -> Any:
        return self.spec.init(self.config, key)

    def _tick(self, state: Any, window: Any) -> _Tick:
        state = self.spec.update(state, window, self.config)
        return _Tick(state, self.spec.predict(state, window, self.config))

    def _stream(self, state: Any, windows: Any) -> tuple[Any, Any]:
        """Ticks over a stream of windows; returns the last state and (states, forecasts) per tick."""
        def body(carry: Any, window: Any) -> tuple[Any, Any]:
            carry, forecast = self._tick(carry, window)
            return carry, (carry, forecast)
        return jax.lax.scan(body, state, windows)

    def _fit(self, state: Any, history: jax.Array) -> Any:
        assert self.spec.fit is not None
        return self.spec.fit(state, history, self.config)

    # -- checks ------------------------------------------------------------------------------------
    def check_jit(self) -> None:
        self.init_jit = Traced(self._init, ("key",))
        self.tick_jit = Traced(self._tick, ("state", "window"))
        self.stream_jit = Traced(self._stream, ("state", "windows"))
        with _doing("init(config, key) under jax.jit"):
            self.cold = self.init_jit(self.key)
        self.warm_windows = support.warm_stream(self.size)
        first = support.row(self.warm_windows, 0)
        try:
            self.first_state, forecast = self.tick_jit(self.cold, first)
        except Exception as exc:
            def update(state: Any, window: Any) -> Any:
                return self.spec.update(state, window, self.config)

            culprit = "update" if _fails(lambda: jax.eval_shape(update, self.cold, first)) else "predict"
            raise Problem(f"{culprit}(state, window, config) under jax.jit raised: {support.explain(exc)}") from exc
        _check_forecast(forecast)

    def check_no_callbacks(self) -> None:
        window = support.row(self.warm_windows, 0)
        config, spec = self.config, self.spec
        functions: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "init": (self._init, (self.key,)),
            "update": (lambda state, w: spec.update(state, w, config), (self.cold, window)),
            "predict": (lambda state, w: spec.predict(state, w, config), (self.first_state, window)),
        }
        if spec.fit is not None:
            functions["fit"] = (self._fit, (self.cold, jax.ShapeDtypeStruct((3 * self.size,), jnp.float64)))
        for what, (fn, args) in functions.items():
            try:
                jaxpr = jax.make_jaxpr(fn)(*args)
            except Exception:  # only fit is traced here for the first time: the fit check reports it
                if what == "fit":
                    continue
                raise
            found = support.find_host_callback(jaxpr.jaxpr)
            if found is not None:
                primitive, path = found
                inside = f" inside {' > '.join(path)}" if path else ""
                raise Problem(f"{what} calls the host callback {primitive} "
                              f"({support.HOST_CALLBACKS.get(primitive, 'a host callback')}){inside}; kernels must "
                              "be pure JAX: a host callback leaves the compiled step for Python on every tick of "
                              "every asset, and what it does is beyond what jit, vmap and snapshots guarantee "
                              "(jax.debug.print and jax.debug.callback count too: remove them once the kernel works)")

    def check_fixed_shapes(self) -> None:
        before = support.signature(self.cold)
        state = self.cold
        for t in range(3):
            state, _ = self.tick_jit(state, support.row(self.warm_windows, t))
            change = support.signature_change(before, support.signature(state), f"update (tick {t})")
            if change:
                raise Problem(f"{change}; a kernel state must keep its structure, shapes and dtypes "
                              "(give init explicit dtypes: jnp.float64(0.0), jnp.zeros(n, jnp.float64))")

    def check_finite(self) -> None:
        self.scales: list[tuple[str, np.ndarray]] = []
        state = self.cold
        for chunk in range(support.WARM_TICKS // support.TICKS):
            part = jax.tree_util.tree_map(lambda a, c=chunk: a[c * support.TICKS:(c + 1) * support.TICKS],
                                          self.warm_windows)
            state = self._finite_stream(state, part, f"a unit random walk (ticks {chunk * support.TICKS}..)")
        self.warm = state
        self.ends: dict[str, Any] = {}
        for name, windows in support.adversarial(self.size).items():
            for start, initial in (("cold", self.cold), ("warm", self.warm)):
                self.ends[f"{name}, {start}"] = self._finite_stream(initial, windows,
                                                                    f"window {name!r} from a {start} state")

    def _finite_stream(self, state: Any, windows: Any, where: str) -> Any:
        with _doing(f"the stream of {where}"):
            last, (states, forecasts) = self.stream_jit(state, windows)
        for label, tree in (("forecast", forecasts), ("state", states)):
            bad = support.first_non_finite(tree, support.TICKS)
            if bad is not None:
                tick, path, value = bad
                leaf = f"{label} {path.lstrip('.')}" if label == "forecast" else f"state leaf {path}"
                raise Problem(f"non-finite {leaf} = {value} on {where} at tick {tick}; outputs and state must "
                              "stay finite for every finite window")
        self.scales.append((where, np.asarray(forecasts.scale)))
        return last

    def check_positive_scale(self) -> None:
        for where, scales in self.scales:
            bad = np.flatnonzero(~(scales > 0))
            if bad.size:
                raise Problem(f"forecast scale = {scales[bad[0]]} on {where} at tick {bad[0]}; the scale must "
                              "be > 0 (floor it relative to the window's magnitude)")

    def check_vmap(self) -> None:
        keys = jax.random.split(self.key, 3)
        with _doing("jax.vmap(init) over 3 keys"):
            batch = jax.jit(jax.vmap(self._init))(keys)
        for i in range(3):
            _same_row(batch, i, self.init_jit(keys[i]), "init")
        states = [self.cold, self.warm, self.ends["alternating ±1, warm"]]
        scenarios = support.adversarial(self.size)
        windows = [support.row(self.warm_windows, support.WARM_TICKS - 1),
                   support.row(scenarios["both flags, partially filled"], 2),
                   support.row(scenarios["emergency set"], 5)]
        with _doing("jax.vmap(update then predict) over a batch of 3 states and windows"):
            batch = jax.jit(jax.vmap(self._tick))(support.stack(states), support.stack(windows))
        for i in range(3):
            _same_row(batch, i, self.tick_jit(states[i], windows[i]), "update+predict")

    def check_deterministic(self) -> None:
        init, stream = jax.jit(lambda key: self._init(key)), jax.jit(lambda s, w: self._stream(s, w))
        windows = support.adversarial(self.size)["partially filled (count 1..16)"]
        for label, again in (("the same compiled functions", (self.init_jit, self.stream_jit)),
                             ("freshly traced functions", (init, stream))):
            cold = again[0](self.key)
            diff = support.bitwise_difference(self.cold, cold)
            if diff is None:
                diff = support.bitwise_difference(self.stream_jit(self.warm, windows), again[1](self.warm, windows))
            if diff is not None:
                raise Problem(f"two runs with the same key and windows ({label}) differ: {diff}; use only the "
                              "explicit key, never NumPy/Python randomness, time or global state")

    def check_snapshot(self) -> None:
        state = self.warm
        with _doing("encoding the state with the snapshot codec"):
            blob = encode_snapshot({
                "schema_version": "check_kernel", "timestamp": 0, "config": {}, "global": {},
                "telemetry": dict.fromkeys(("kurtosis", "dgm_entropy", "adaptive_threshold"), 0.0),
                "flags": dict.fromkeys(("degraded_inference", "emergency", "regime_change", "mode_collapse"),
                                       False),
                "kernels": {self.spec.name: pytree_to_blocks(state)}})
        with _doing("decoding the snapshot into the layout of init's state"):
            blocks = decode_snapshot(blob, expected_schema="check_kernel")["kernels"][self.spec.name]
            self.restored = blocks_to_pytree(self.cold, blocks)
        diff = support.bitwise_difference(state, self.restored)
        if diff is not None:
            raise Problem(f"the state restored from a snapshot differs from the saved one: {diff}")
        window = support.row(support.adversarial(self.size)["single jump of 1e6"], 0)
        diff = support.bitwise_difference(self.tick_jit(state, window), self.tick_jit(self.restored, window))
        if diff is not None:
            raise Problem(f"the next update+predict after a snapshot round trip differs: {diff}")

    def check_no_recompilation(self) -> None:
        for what, traced in (("init", self.init_jit), ("update+predict", self.tick_jit),
                             ("the stream (lax.scan of update+predict)", self.stream_jit)):
            if len(traced.signatures) > 1:
                why = traced.retrace_cause()
                raise Problem(f"{what} was traced {len(traced.signatures)} times after warm-up (each trace "
                              f"compiles again): {why}. States from init, from update, from a scan and from a "
                              "snapshot must have identical dtypes and weak types (no Python scalars or "
                              "jnp.asarray(0.0) in init)")

    def check_fit(self) -> str | None:
        self.fit_jit = Traced(self._fit, ("state", "history"))
        n = 3 * self.size
        history = np.cumsum(np.random.default_rng(2).normal(size=n))
        self.history = history
        cases = {"a unit random walk": (self.warm, history),
                 "a constant history": (self.cold, np.full(n, 5.0)),
                 "a ±1e100 history": (self.warm, 1e100 * np.where(np.arange(n) % 3 == 0, -1.0, 1.0)),
                 _NON_FINITE_HISTORY: (self.warm, support.with_non_finite(history))}
        before = support.signature(self.cold)
        fitted: dict[str, Any] = {}
        for where, (state, values) in cases.items():
            with _doing(f"fit(state, history, config) under jax.jit on {where}"):
                fitted[where] = self.fit_jit(state, jnp.asarray(values, jnp.float64))
            change = support.signature_change(before, support.signature(fitted[where]), f"fit on {where}")
            if change:
                raise Problem(f"{change}; fit must return a state of the same structure, shapes and dtypes")
            bad = support.first_non_finite(fitted[where])
            if bad is not None:
                advice = ("; FunctionalPredictor.fit_history passes non-finite history values on to fit, so fit "
                          "must mask them (jnp.isfinite)") if where == _NON_FINITE_HISTORY else ""
                raise Problem(f"non-finite state leaf {bad[1]} = {bad[2]} after fit on {where}{advice}")
        with _doing("jax.vmap(fit) over 2 states and histories"):
            pairs = [cases["a unit random walk"], cases["a ±1e100 history"]]
            batch = jax.jit(jax.vmap(self._fit))(support.stack([p[0] for p in pairs]),
                                                 jnp.asarray(np.stack([p[1] for p in pairs])))
        for i, where in enumerate(("a unit random walk", "a ±1e100 history")):
            _same_row(batch, i, fitted[where], "fit")
        if len(self.fit_jit.signatures) > 1:
            raise Problem(f"fit was traced again for a history of the same length: {self.fit_jit.retrace_cause()}")
        state, values = cases["a unit random walk"]
        diff = support.bitwise_difference(fitted["a unit random walk"],
                                          jax.jit(lambda s, h: self._fit(s, h))(state, jnp.asarray(values)))
        if diff is not None:
            raise Problem(f"fit traced afresh on the same state and history gives another state: {diff}; use only "
                          "the inputs, never NumPy/Python randomness, time or global state")
        unchanged = support.bitwise_difference(fitted["a unit random walk"], self.warm) is None
        return ("fit left the state unchanged on the check's history, so fit_honoured cannot tell whether "
                "fit_history applies it") if unchanged else None

    def check_report(self) -> None:
        assert self.spec.report is not None
        report, names = self.spec.report, self.spec.diagnostics
        report_jit = jax.jit(lambda state: report(state, self.config))
        states = {"the cold state": self.cold, "the warm state": self.warm, **self.ends}
        for where, state in states.items():
            with _doing(f"report(state, config) under jax.jit on {where}"):
                _check_report(report_jit(state), names, where)
        batch = support.stack([self.cold, self.warm])
        with _doing("jax.vmap(report) over a batch of 2 states"):
            stacked = jax.jit(jax.vmap(lambda state: report(state, self.config)))(batch)
        for i, single in enumerate((report_jit(self.cold), report_jit(self.warm))):
            _same_row(stacked, i, single, "report")

    def check_fit_honoured(self) -> None:
        from . import FunctionalPredictor  # the public predictor, as an embedding host builds it

        config = attrs.evolve(self.config, enabled_kernels=(self.spec.name,))
        key = jax.random.PRNGKey(config.seed)
        ends = {}
        for label, spec in (("with fit", self.spec), ("without fit", attrs.evolve(self.spec, fit=None))):
            predictor = FunctionalPredictor(config, kernels=(spec,))
            with _doing(f"FunctionalPredictor.fit_history ({label})"):
                state, _ = predictor.fit_history(predictor.init_state(key=key), self.history)
            ends[label] = state.kernels[predictor.kernel_names.index(self.spec.name)]
        fit = self.spec.fit
        assert fit is not None
        expected = jax.jit(lambda s, h: fit(s, h, config))(ends["without fit"], jnp.asarray(self.history))
        diff = support.close_difference(ends["with fit"], expected)
        if diff is None:
            return
        if support.close_difference(ends["with fit"], ends["without fit"]) is None:
            raise Problem("FunctionalPredictor.fit_history never applied fit: its kernel state is the one its "
                          f"scan leaves, not fit(that state, history, config) ({diff})")
        raise Problem("FunctionalPredictor.fit_history's kernel state is not fit(state after the scan, history, "
                      f"config): {diff}; fit must run once, after the scan, on the whole history")


def _check_report(report: Any, names: tuple[str, ...], where: str) -> None:
    if not isinstance(report, KernelReport):
        raise Problem(f"report returned {type(report).__name__}, not a KernelReport")
    values, events = np.asarray(report.values), np.asarray(report.events)
    if values.shape != (len(names),) or values.dtype != np.float64:
        raise Problem(f"report values are {values.dtype}{list(values.shape)}; expected float64[{len(names)}], "
                      f"one per diagnostic {names!r}")
    if events.shape != () or events.dtype != np.int32:
        raise Problem(f"report events are {events.dtype}{list(events.shape)}; expected an int32 scalar")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise Problem(f"diagnostic {names[bad[0]]!r} = {values[bad[0]]} on {where}; diagnostics must be finite")
    unknown = int(events) & ~int(sum(KernelEvent))
    if unknown:
        raise Problem(f"report events hold bits {unknown:#x} that are not KernelEvent flags on {where}")


def _fails(thunk: Callable[[], Any]) -> bool:
    try:
        thunk()
    except Exception:
        return True
    return False


def _check_forecast(forecast: Any) -> None:
    if not isinstance(forecast, KernelForecast):
        raise Problem(f"predict returned {type(forecast).__name__}, not a KernelForecast(mean=..., scale=...)")
    for field in ("mean", "scale"):
        value = getattr(forecast, field)
        if jnp.shape(value) != () or not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise Problem(f"forecast {field} must be a float scalar, got {support.describe_type(value)}")


def _same_row(batch: Any, index: int, single: Any, what: str) -> None:
    diff = support.close_difference(support.row(batch, index), single)
    if diff is not None:
        raise Problem(f"{what}: row {index} of the vmapped batch differs from the single call: {diff}; a kernel "
                      "must give the same result alone and in a batch")


__all__ = ["CHECKS", "KernelCheckError", "KernelCheckReport", "check_config", "check_kernel"]
