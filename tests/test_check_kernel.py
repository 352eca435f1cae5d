"""usp.testing.check_kernel: the built-in kernels and the test plugin pass it; kernels broken in
one way each fail it, with the failing check and the problem named in the message."""

from __future__ import annotations

import re

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from usp.kernel import KernelForecast, KernelSpec, PredictorConfig, Window, pytree
from usp.plugins.kernel_a import KERNEL_A
from usp.plugins.kernel_d import KERNEL_D
from usp.testing import CHECKS, KernelCheckError, KernelCheckReport, check_kernel

from .plugins.martingale_kernel import MARTINGALE

WITHOUT_FIT = [name for name in CHECKS if not name.startswith("fit") and name != "report"]


@pytest.mark.parametrize("spec", [KERNEL_A, KERNEL_D, MARTINGALE], ids=lambda spec: spec.name)
def test_builtin_kernels_and_the_test_plugin_pass(spec):
    report = check_kernel(spec)
    assert isinstance(report, KernelCheckReport)
    assert report.kernel == spec.name
    assert list(report.passed) == WITHOUT_FIT
    assert report.skipped == ("fit", "fit_honoured", "report")
    assert KERNEL_D.fit is None and KERNEL_A.fit is None  # the scan's updates are all they learn from


# --- a small correct kernel, and variants of it each broken in one way ------------------------------

@pytree
class LastState:
    last: jax.Array
    mse: jax.Array
    seen: jax.Array


def _init(config: PredictorConfig, key: jax.Array) -> LastState:
    return LastState(jnp.float64(0.0), jnp.float64(0.0), jnp.int32(0))


def _update(state: LastState, window: Window, config: PredictorConfig) -> LastState:
    y = window.values[-1]
    error = jnp.where(state.seen > 0, y - state.last, 0.0)
    mse = state.mse + jnp.maximum(0.1, 1.0 / jnp.maximum(state.seen, 1)) * (error**2 - state.mse)
    return LastState(y, jnp.where(state.seen > 0, mse, 0.0), state.seen + 1)


def _predict(state: LastState, window: Window, config: PredictorConfig) -> KernelForecast:
    floor = jnp.maximum(1e-12 * jnp.max(jnp.abs(window.values)), 1e-300)
    return KernelForecast(mean=state.last, scale=jnp.maximum(jnp.sqrt(state.mse), floor))


LAST = KernelSpec(name="L", init=_init, update=_update, predict=_predict)


def _python_if(state, window, config):
    if window.values[-1] > state.last:  # a Python branch on a traced value
        return _update(state, window, config)
    return state


def _mask_indexing(state, window, config):
    positive = window.values[window.values > 0]  # the shape depends on the data
    return _update(state, attrs.evolve(window, values=window.values.at[-1].set(positive.sum())), config)


def _nonzero(state, window, config):
    last = jnp.nonzero(window.values)[0][-1]  # no size=: the shape depends on the data
    return _update(state, window, config) if last.size else state


def _callback_predict(state, window, config):
    doubled = jax.pure_callback(lambda x: np.asarray(x * 1.0), jax.ShapeDtypeStruct((), jnp.float64), state.last)
    return attrs.evolve(_predict(state, window, config), mean=doubled)


def _batch_mean_predict(state, window, config):
    """A host callback that vmaps, but averages over the whole batch instead of its own row."""
    def level(values):
        return np.full(values.shape[:-1], values.mean())
    mean = jax.pure_callback(level, jax.ShapeDtypeStruct((), jnp.float64), window.values, vmap_method="broadcast_all")
    return attrs.evolve(_predict(state, window, config), mean=mean)


def _batch_aware_predict(state, window, config):
    """Pure JAX, but Python code that behaves differently when it is traced under vmap."""
    batched = type(state.last).__name__ == "BatchTracer"
    return attrs.evolve(_predict(state, window, config), mean=state.last + (1.0 if batched else 0.0))


@jax.jit
def _logged(y):
    """A jitted helper that hands each value to the host and back: it passes every other check."""
    return io_callback(lambda x: np.asarray(x), jax.ShapeDtypeStruct((), jnp.float64), y)


def _io_callback_update(state, window, config):
    return _update(state, attrs.evolve(window, values=window.values.at[-1].set(_logged(window.values[-1]))), config)


def _debug_print_predict(state, window, config):
    def body(i):
        jax.lax.cond(i == 0, lambda: jax.debug.print("tick {}", i), lambda: None)
        return i + 1
    jax.lax.while_loop(lambda i: i < 1, body, jnp.int32(0))
    return _predict(state, window, config)


@jax.custom_jvp
def _host_square(x):
    return jax.pure_callback(lambda v: np.asarray(v * v), jax.ShapeDtypeStruct((), jnp.float64), x)


_host_square.defjvp(lambda primals, tangents: (_host_square(primals[0]), 2 * primals[0] * tangents[0]))


def _callback_fit(state, history, config):
    total, _ = jax.lax.scan(lambda acc, y: (acc + _host_square(y), None), jnp.float64(0.0), history)
    return attrs.evolve(state, mse=state.mse + 0.0 * total)


def _fit_mean(state, history, config):
    return attrs.evolve(state, last=jnp.mean(history))  # NaN when the history holds one


def _nan_on_flat_windows(state, window, config):
    x = window.values
    z = (x[-1] - x.mean()) / x.std()  # 0/0 on a constant window
    return attrs.evolve(_predict(state, window, config), mean=state.last + z)


@pytree
class PowerState:
    inner: LastState
    fourth_moment: jax.Array


def _power_update(state, window, config):
    fourth = state.fourth_moment + window.values[-1] ** 4  # inf for |y| = 1e100
    return PowerState(_update(state.inner, window, config), fourth)


def _unfloored_predict(state, window, config):
    return KernelForecast(mean=state.last, scale=jnp.sqrt(state.mse))  # 0 on a constant stream


@pytree
class GrowingState:
    history: jax.Array


def _growing_update(state, window, config):
    return GrowingState(jnp.concatenate([state.history, window.values[-1:]]))


def _growing_predict(state, window, config):
    return KernelForecast(mean=state.history[-1], scale=jnp.float64(1.0))


def _float_counter_update(state, window, config):
    return attrs.evolve(_update(state, window, config), seen=state.seen + 1.0)  # int32 → float64


@pytree
class WeakState:
    inner: LastState
    gain: jax.Array


def _weak_init(config, key):
    return WeakState(_init(config, key), jnp.asarray(1.0))  # weakly typed, kept as is by update


def _weak_update(state, window, config):
    return WeakState(_update(state.inner, window, config), state.gain)


def _weak_predict(state, window, config):
    return _predict(state.inner, window, config)


def _random_init(config, key):
    drift = np.random.default_rng().normal()  # NumPy randomness frozen into the trace
    return LastState(jnp.float64(drift), jnp.float64(0.0), jnp.int32(0))


@pytree
class ComplexState:
    inner: LastState
    phase: jax.Array


def _complex_init(config, key):
    return ComplexState(_init(config, key), jnp.complex128(1.0))


def _complex_update(state, window, config):
    return ComplexState(_update(state.inner, window, config), state.phase * jnp.exp(1j * window.values[-1]))


def _tuple_predict(state, window, config):
    forecast = _predict(state, window, config)
    return forecast.mean, forecast.scale


def _fit_reshapes(state, history, config):
    return attrs.evolve(state, mse=jnp.full(2, state.mse))


def _fit_normalises_by_std(state, history, config):
    return attrs.evolve(state, mse=state.mse * (history.std() / history.std()))  # NaN on a flat history


BROKEN = {
    "python if": (attrs.evolve(LAST, update=_python_if), "jit",
                  r"update\(state, window, config\) under jax.jit raised: Python control flow .* on a traced value"),
    "mask indexing": (attrs.evolve(LAST, update=_mask_indexing), "jit",
                      r"update.*boolean-mask indexing makes an array's shape depend on data"),
    "nonzero without size": (attrs.evolve(LAST, update=_nonzero), "jit",
                             r"update.*shape or a Python value depends on traced data"),
    "tuple forecast": (attrs.evolve(LAST, predict=_tuple_predict), "jit",
                       r"predict returned tuple, not a KernelForecast"),
    "host callback": (attrs.evolve(LAST, predict=_callback_predict), "no_callbacks",
                      r"^predict calls the host callback pure_callback \(jax.pure_callback\); kernels must be pure"),
    "batch mean": (attrs.evolve(LAST, predict=_batch_mean_predict), "no_callbacks",
                   r"^predict calls the host callback pure_callback \(jax.pure_callback\);"),
    "io_callback": (attrs.evolve(LAST, update=_io_callback_update), "no_callbacks",
                    r"^update calls the host callback io_callback \(jax.experimental.io_callback\) inside "
                    r"jit '_logged';"),
    "debug print": (attrs.evolve(LAST, predict=_debug_print_predict), "no_callbacks",
                    r"^predict calls the host callback debug_print \(jax.debug.print\) inside while > cond; "
                    r".*remove them"),
    "callback in fit": (attrs.evolve(LAST, fit=_callback_fit), "no_callbacks",
                        r"^fit calls the host callback pure_callback \(jax.pure_callback\) inside scan > "
                        r"custom_jvp_call;"),
    "batch-aware": (attrs.evolve(LAST, predict=_batch_aware_predict), "vmap",
                    r"update\+predict: row 0 of the vmapped batch differs from the single call: leaf "
                    r"\.forecast\.mean"),
    "growing state": (KernelSpec("G", lambda c, k: GrowingState(jnp.zeros(1)), _growing_update, _growing_predict),
                      "fixed_shapes", r"update \(tick 0\) changed leaf \.history from float64\[1\] to float64\[2\]"),
    "float counter": (attrs.evolve(LAST, update=_float_counter_update), "fixed_shapes",
                      r"changed leaf \.seen from int32\[\] to float64\[\]"),
    "nan on flat windows": (attrs.evolve(LAST, predict=_nan_on_flat_windows), "finite",
                            r"non-finite forecast mean = nan on window 'constant 3.0' from a cold state"),
    "overflowing state": (KernelSpec("P", lambda c, k: PowerState(_init(c, k), jnp.float64(0.0)), _power_update,
                                     lambda s, w, c: _predict(s.inner, w, c)),
                          "finite", r"non-finite state leaf \.fourth_moment = inf on window 'huge ±1e100'"),
    "unfloored scale": (attrs.evolve(LAST, predict=_unfloored_predict), "positive_scale",
                        r"forecast scale = 0.0 on .*the scale must be > 0"),
    "numpy randomness": (attrs.evolve(LAST, init=_random_init), "deterministic",
                         r"\(freshly traced functions\) differ: leaf \.last"),
    "complex state": (KernelSpec("C", _complex_init, _complex_update, lambda s, w, c: _predict(s.inner, w, c)),
                      "snapshot", r"encoding the state with the snapshot codec raised: TypeError: .*complex128 is "
                                  r"not storable"),
    "weakly typed leaf": (KernelSpec("W", _weak_init, _weak_update, _weak_predict), "no_recompilation",
                          r"update\+predict was traced 2 times .*the state argument changed leaf \.gain from "
                          r"float64\[\] \(weakly typed\) to float64\[\]"),
    "fit reshapes": (attrs.evolve(LAST, fit=_fit_reshapes), "fit",
                     r"fit on a unit random walk changed leaf \.mse from float64\[\] to float64\[2\]"),
    "fit nan": (attrs.evolve(LAST, fit=_fit_normalises_by_std), "fit",
                r"non-finite state leaf \.mse = nan after fit on a constant history"),
    "fit mean of a non-finite history": (attrs.evolve(LAST, fit=_fit_mean), "fit",
                                         r"non-finite state leaf \.last = nan after fit on a history with NaN and "
                                         r"±inf entries; FunctionalPredictor.fit_history passes non-finite"),
    "not a spec": ("L", "spec", r"expected a usp.kernel.KernelSpec, got str"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_kernel_fails_the_check_that_names_its_problem(case):
    spec, check, message = BROKEN[case]
    with pytest.raises(KernelCheckError) as failed:
        check_kernel(spec)
    error = failed.value
    assert isinstance(error, AssertionError)
    assert error.check == check, str(error)
    assert str(error).startswith(f"kernel {getattr(spec, 'name', repr(spec))!r} fails check {check!r}: ")
    assert list(error.passed) == [name for name in CHECKS if name in WITHOUT_FIT][:list(CHECKS).index(check)]
    assert re.search(message, error.problem), error.problem


def test_the_correct_kernel_passes():
    assert list(check_kernel(LAST).passed) == WITHOUT_FIT


@pytree
class CopyState:
    inner: LastState
    window: jax.Array


def _copy_init(config, key):
    return CopyState(_init(config, key), jnp.zeros(config.window_size))  # sized by the config


def _copy_update(state, window, config):
    return CopyState(_update(state.inner, window, config), window.values)


def test_a_given_config_is_the_one_the_kernel_and_its_windows_get():
    spec = KernelSpec("K", _copy_init, _copy_update, lambda s, w, c: _predict(s.inner, w, c))
    config = PredictorConfig(window_size=48, wtmm_buffer_size=32, kernel_a_order=4, enabled_kernels=("A",))
    assert list(check_kernel(spec, config).passed) == WITHOUT_FIT
    with pytest.raises(KernelCheckError, match=r"'fixed_shapes'.*from float64\[32\] to float64\[48\]"):
        check_kernel(attrs.evolve(spec, init=lambda c, k: _copy_init(attrs.evolve(c, window_size=32), k)), config)
