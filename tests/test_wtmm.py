"""WTMM identification engine: accuracy on exact fBm and cascades, the maxima skeleton,
jit/vmap behaviour, the 128-sample online buffer, and the Koopman / Paley–Wiener diagnostics.

The 4096-point signals are analysed in one vmapped batch (one compilation) shared by the
acceptance tests; every seed is fixed, so the statistics below are deterministic.
"""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from usp.domain import ConfigError, PredictorConfig
from usp.domain.sia import REGULAR_HOLDER, holder_exponent, koopman_spectrum, paley_wiener, wtmm, wtmm_skeleton
from usp.domain.sia._wtmm import legendre_argmax, make_plan

from .fbm import binomial_cascade, cascade_tau, fbm, fbm_cholesky, fbm_covariance, fgn_autocovariance

CONFIG = PredictorConfig()
HURST = (0.3, 0.5, 0.7)
SEEDS = 20
CASCADE_P = 0.3


def test_fbm_generator_has_the_exact_covariance():
    n, h, draws = 12, 0.3, 6000
    # Davies–Harte is exact: the circulant's eigenvalues are ≥ 0 and its first row is the fGn
    # autocovariance, so the first n coordinates have exactly the fGn law.
    row = fgn_autocovariance(h, np.concatenate([np.arange(n + 1), np.arange(n - 1, 0, -1)]))
    eigen = np.fft.fft(row).real
    assert eigen.min() >= 0
    np.testing.assert_allclose(np.fft.ifft(eigen).real, row, atol=1e-12)
    # And the samples show it (correlation standard errors ≈ 0.013 with 6000 draws).
    rng = np.random.default_rng(0)
    exact = fbm_covariance(n, h)
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    for generator in (fbm, fbm_cholesky):
        samples = np.stack([generator(n, h, rng) for _ in range(draws)])
        assert np.max(np.abs(np.cov(samples.T) - exact) / scale) < 0.06


@pytest.fixture(scope="module")
def long_signals():
    """Results for 20 seeds of fBm at each H and 20 binomial cascades, 4096 points each."""
    paths = [fbm(4096, h, np.random.default_rng(seed)) for h in HURST for seed in range(SEEDS)]
    paths += [binomial_cascade(12, CASCADE_P, np.random.default_rng(seed)) for seed in range(SEEDS)]
    result = jax.jit(jax.vmap(lambda x: wtmm(x, CONFIG)))(jnp.asarray(np.stack(paths)))
    return jax.tree_util.tree_map(np.asarray, result)


def _rows(result, block: int):
    return jax.tree_util.tree_map(lambda leaf: leaf[block * SEEDS:(block + 1) * SEEDS], result)


@pytest.mark.slow
@pytest.mark.parametrize("h", HURST)
def test_holder_on_4096_point_fbm_within_5_percent(long_signals, h):
    estimate = _rows(long_signals, HURST.index(h)).holder
    assert np.all(_rows(long_signals, HURST.index(h)).valid)
    assert np.mean(np.abs(estimate - h)) / h < 0.05
    assert abs(np.mean(estimate) - h) < 0.02  # no systematic bias either


def _slopes(q: np.ndarray, tau: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """h(q) = τ'(q) from neighbouring q, for midpoints inside [lo, hi]."""
    middle = 0.5 * (q[1:] + q[:-1])
    keep = (middle >= lo) & (middle <= hi)
    return (np.diff(tau, axis=-1) / np.diff(q))[..., keep]


@pytest.mark.slow
@pytest.mark.parametrize("h", HURST)
def test_monofractal_fbm_has_linear_tau_and_a_narrow_spectrum(long_signals, h):
    rows = _rows(long_signals, HURST.index(h))
    q = rows.q[0]
    window = (q >= -2) & (q <= 4)
    # τ(q) = qH − 1 over q ∈ [−2, 4]: the mean over 20 paths within 0.2 (measured ≤ 0.17 at
    # H = 0.3, where the finest scales bias the largest |q| most).
    assert np.max(np.abs(rows.tau.mean(axis=0) - (q * h - 1))[window]) < 0.2
    # Narrow spectrum: h(q) = τ'(q) spreads by 0.09–0.2 over q ∈ [−2, 4] (the cascade: ≈ 1).
    spread = np.ptp(_slopes(q, rows.tau, -2, 4), axis=-1)
    assert np.mean(spread) < 0.3
    assert np.all(np.abs(rows.d_max - 1.0) < 0.1)  # the lines fill the buffer: D(H) ≈ 1


@pytest.mark.slow
def test_binomial_cascade_recovers_the_nonlinear_tau(long_signals):
    rows = _rows(long_signals, len(HURST))
    q = rows.q[0]
    window = (q >= -2) & (q <= 4)
    exact = cascade_tau(q, CASCADE_P)
    # Tolerance 0.2 on the mean over 20 cascades of 4096 points: per path τ(q) scatters by up to
    # 0.26 at the ends of the window (one or two extreme lines dominate Z for |q| ≥ 2, standard
    # error of the mean ≈ 0.06), and the finest scales pull τ(4) down by ≈ 0.1 (measured max
    # deviation 0.10, at q = 4).
    assert np.max(np.abs(rows.tau.mean(axis=0) - exact)[window]) < 0.2
    # The nonlinearity itself: h(q) spreads as the exact one does (≈ 0.95 over [−2, 4]), far
    # beyond any monofractal.
    exact_spread = np.ptp(_slopes(q, exact, -2, 4))
    spread = np.ptp(_slopes(q, rows.tau, -2, 4), axis=-1)
    assert np.mean(spread) == pytest.approx(exact_spread, rel=0.25)
    mono = _rows(long_signals, HURST.index(0.5))
    assert np.mean(spread) > 3 * np.mean(np.ptp(_slopes(q, mono.tau, -2, 4), axis=-1))
    # The Hölder exponent of the cascade at D's maximum, τ'(0) = −½·log2(p(1 − p)).
    assert np.mean(rows.holder) == pytest.approx(-0.5 * np.log2(CASCADE_P * (1 - CASCADE_P)), abs=0.06)


def _check_links(signal: np.ndarray, config: PredictorConfig) -> None:
    skeleton = jax.tree_util.tree_map(np.asarray, wtmm_skeleton(jnp.asarray(signal), config))
    scales, modulus, maxima, child, sup = (skeleton.scales, skeleton.modulus, skeleton.maxima,
                                           skeleton.child, skeleton.sup)
    assert np.all(child[0] == -1) and np.all(child[~maxima] == -1)
    for j in range(1, len(scales)):
        finer = np.nonzero(maxima[j - 1])[0]
        for b in np.nonzero(maxima[j])[0]:
            inside = finer[np.abs(finer - b) < config.besov_cone_c * scales[j - 1]]
            c = child[j, b]
            if inside.size == 0:
                assert c == -1 and sup[j, b] == modulus[j, b]
                continue
            # The link stays inside the cone (of the finer, hence also of the coarser scale) …
            assert c >= 0 and maxima[j - 1, c]
            assert abs(c - b) <= config.besov_cone_c * scales[j - 1] <= config.besov_cone_c * scales[j]
            # … and goes to the largest modulus there (leftmost on an exact tie).
            best = inside[np.argmax(modulus[j - 1, inside])]
            assert c == best
            assert sup[j, b] == max(modulus[j, b], sup[j - 1, c])
    assert np.all(sup[~maxima] == 0)


@pytest.mark.parametrize("cone", [0.5, 1.5, 3.0])
def test_every_link_lies_inside_the_cone(cone):
    config = attrs.evolve(CONFIG, besov_cone_c=cone)
    for signal in (fbm(128, 0.3, np.random.default_rng(1)), np.random.default_rng(2).standard_normal(128),
                   binomial_cascade(7, 0.3, np.random.default_rng(3))):
        _check_links(signal, config)


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=128,
                max_size=128))
def test_links_respect_the_cone_for_any_buffer(values):
    _check_links(np.asarray(values), CONFIG)


def test_vmap_gives_the_same_numbers_as_one_by_one():
    batch = np.stack([fbm(128, h, np.random.default_rng(seed)) for seed, h in
                      enumerate([0.2, 0.3, 0.5, 0.5, 0.7, 0.8])]
                     + [np.cumsum(np.random.default_rng(9).standard_normal(128))])
    batched = jax.tree_util.tree_map(np.asarray, jax.vmap(lambda x: wtmm(x, CONFIG))(jnp.asarray(batch)))
    for i, signal in enumerate(batch):
        single = jax.tree_util.tree_map(np.asarray, wtmm(jnp.asarray(signal), CONFIG))
        for name in attrs.fields_dict(type(single)):
            np.testing.assert_allclose(getattr(batched, name)[i], getattr(single, name), rtol=1e-12,
                                       atol=1e-12, err_msg=name)
        assert float(holder_exponent(jnp.asarray(signal), CONFIG)) == pytest.approx(single.holder, abs=1e-12)


def test_partition_function_matches_a_direct_sum_over_the_lines():
    signal = jnp.asarray(fbm(128, 0.4, np.random.default_rng(4)))
    result, skeleton = wtmm(signal, CONFIG), wtmm_skeleton(signal, CONFIG)
    plan = make_plan(128, CONFIG)
    fitted = plan.fit_weights > 0
    sup, maxima = np.asarray(skeleton.sup)[fitted], np.asarray(skeleton.maxima)[fitted]
    direct = np.log([[np.sum(row[keep] ** q) for row, keep in zip(sup, maxima, strict=True)] for q in plan.q])
    direct -= np.log(plan.valid_fraction[fitted])[None, :]
    np.testing.assert_allclose(np.asarray(result.log_z), direct, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(result.line_counts), maxima.sum(axis=1))
    # τ(q) is the weighted least-squares slope of those log Z against log a.
    weights, x = plan.fit_weights[fitted], np.log(plan.scales[fitted])
    tau = [np.polyfit(x, row, 1, w=np.sqrt(weights))[0] for row in direct]
    np.testing.assert_allclose(np.asarray(result.tau), tau, rtol=1e-9, atol=1e-12)
    # Distinct lines: maxima that no coarser maximum continues.
    child, every = np.asarray(skeleton.child), np.asarray(skeleton.maxima)
    continued = np.zeros_like(every)
    for j in range(1, every.shape[0]):
        continued[j - 1, child[j][child[j] >= 0]] = True
    assert int(result.n_lines) == int(np.sum(every & ~continued))


def test_legendre_maximum_is_exact():
    q = np.linspace(-5, 5, 21)
    holder, top = legendre_argmax(q, jnp.asarray(0.37 * q - 1.0))
    assert float(holder) == pytest.approx(0.37, abs=1e-12) and float(top) == pytest.approx(1.0)
    tau = cascade_tau(q, 0.3)
    holder, top = legendre_argmax(q, jnp.asarray(tau))
    central = (tau[11] - tau[9]) / (q[11] - q[9])  # the plateau of D between the chords at q = 0
    assert float(holder) == pytest.approx(central, abs=1e-12)
    assert float(top) == pytest.approx(1.0, abs=1e-12)


def test_spectrum_is_the_legendre_transform_of_tau():
    result = jax.tree_util.tree_map(np.asarray, wtmm(jnp.asarray(fbm(128, 0.5, np.random.default_rng(6))),
                                                     CONFIG))
    manual = np.min(result.q[None, :] * result.h_grid[:, None] - result.tau[None, :], axis=1)
    np.testing.assert_allclose(result.spectrum, manual, rtol=1e-12, atol=1e-12)
    assert np.max(result.spectrum) <= result.d_max + 1e-12
    assert result.h_grid[0] < result.holder < result.h_grid[-1]


@pytest.mark.parametrize("signal", [np.zeros(128), np.full(128, 3.5), np.linspace(-2.0, 7.0, 128),
                                    1e9 + np.arange(128.0)])
def test_buffers_without_singularities_report_a_regular_path(signal):
    result = wtmm(jnp.asarray(signal), CONFIG)
    assert not bool(result.valid) and int(result.n_lines) == 0
    assert float(result.holder) == REGULAR_HOLDER
    assert np.all(np.isfinite(np.asarray(result.tau))) and np.all(np.isfinite(np.asarray(result.spectrum)))


def test_plan_rejects_a_scale_range_the_buffer_cannot_hold():
    with pytest.raises(ConfigError, match="wtmm_fit_min_scale"):
        wtmm(jnp.zeros(64), attrs.evolve(CONFIG, wtmm_fit_min_scale=64.0))
    with pytest.raises(ConfigError, match="wtmm_coi_factor"):
        wtmm(jnp.zeros(64), attrs.evolve(CONFIG, wtmm_coi_factor=3.0, wtmm_max_scale_fraction=0.5))


def test_one_compilation_per_config_and_length():
    holder_exponent(jnp.zeros(128), CONFIG)
    compiled = holder_exponent._cache_size()
    for seed in range(3):
        holder_exponent(jnp.asarray(np.random.default_rng(seed).standard_normal(128).cumsum()), CONFIG)
    holder_exponent(jnp.ones(128), PredictorConfig())  # an equal config is the same static argument
    assert holder_exponent._cache_size() == compiled


@pytest.mark.slow
def test_online_buffer_separates_random_walks_from_rough_paths():
    """128-sample windows sliding along a Gaussian random walk and an fBm with H = 0.2: the raw
    estimates (each window on its own) are centred on the truth and mostly on the right side of
    0.4. This path: random walk 0.54 ± 0.11 (91% above 0.4), H = 0.2: 0.22 ± 0.07 (100% below);
    over 16,000 ticks (benchmarks/bench_wtmm.py) 0.50 ± 0.10 (84% above) and 0.21 ± 0.07."""
    length, step = 2048, 4
    walk = np.cumsum(np.random.default_rng(11).standard_normal(length))
    rough = fbm(length, 0.2, np.random.default_rng(12))
    windows = np.stack([np.lib.stride_tricks.sliding_window_view(path, 128)[::step]
                        for path in (walk, rough)])
    estimates = np.asarray(jax.vmap(jax.vmap(lambda x: holder_exponent(x, CONFIG)))(jnp.asarray(windows)))
    assert 0.42 < estimates[0].mean() < 0.6 and np.mean(estimates[0] > 0.4) > 0.75
    assert estimates[1].mean() < 0.3 and np.mean(estimates[1] < 0.4) > 0.95


def test_koopman_modes_find_the_oscillations_and_their_energy():
    t = np.arange(128.0)
    signal = 2.0 * np.sin(2 * np.pi * 0.05 * t) + 0.5 * np.cos(2 * np.pi * 0.17 * t + 0.3)
    batch = jnp.asarray(np.stack([signal, np.zeros(128)]))
    spectra = jax.tree_util.tree_map(np.asarray, jax.vmap(lambda x: koopman_spectrum(x, CONFIG))(batch))
    frequency, power = spectra.frequency[0], spectra.power[0]
    np.testing.assert_allclose(np.sort(np.abs(frequency[:4])), [0.05, 0.05, 0.17, 0.17], atol=1e-6)
    np.testing.assert_allclose(spectra.growth[0][:4], 0.0, atol=1e-6)  # undamped
    assert power[0] + power[1] == pytest.approx(16 / 17, abs=0.02)  # amplitude² shares 4 : 0.25
    assert np.all(np.diff(power) <= 1e-15) and np.all(spectra.kept[0][:4])
    assert not np.any(spectra.kept[1]) and np.all(spectra.power[1] == 0)  # a flat buffer has no modes


def test_paley_wiener_integral_flags_a_frozen_signal():
    walk = np.cumsum(np.random.default_rng(0).standard_normal(128))
    batch = jnp.asarray(np.stack([walk, 1e-6 * walk + 3.0, np.full(128, 3.0)]))
    result = jax.tree_util.tree_map(np.asarray, jax.vmap(lambda x: paley_wiener(x, CONFIG))(batch))
    # White increments of unit variance: log f ≈ −log 2π, so the integral is ≈ 2·1.84·atan(π) ≈ 4.6.
    assert result.integral[0] == pytest.approx(2 * np.log(2 * np.pi) * np.arctan(np.pi), rel=0.3)
    assert result.integral[1] == pytest.approx(result.integral[0], rel=1e-9)  # free of the units
    assert result.regular[0] and not result.regular[2] and np.isinf(result.integral[2])
