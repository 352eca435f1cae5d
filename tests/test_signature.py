"""Signature algebra: Chen, reparametrisation invariance, agreement with iisignature, transforms."""

from __future__ import annotations

import functools

import iisignature
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from usp.domain import signature as sig

DEPTHS = (1, 2, 3, 4, 5)
LENGTH = 9


@functools.cache
def _chen_check(d: int):
    """Jitted (once per d): for every depth, S(path) and chen(S(head), S(tail)) split at `cut`.

    The two parts keep the shape of the whole path by repeating the cut point (a zero increment
    is exp(0) = 1 exactly), so Hypothesis' draws never trigger a new compilation.
    """
    @jax.jit
    def check(path: jax.Array, cut: jax.Array):
        index = jnp.arange(path.shape[0])[:, None]
        head = jnp.where(index <= cut, path, path[cut])
        tail = jnp.where(index >= cut, path, path[cut])
        return tuple((sig.signature(path, m), sig.chen(sig.signature(head, m), sig.signature(tail, m), d, m))
                     for m in DEPTHS)
    return check


@given(d=st.sampled_from([2, 3]), data=st.data())
def test_chen_identity_on_random_paths(d, data):
    path = data.draw(arrays(np.float64, (LENGTH, d), elements=st.floats(-2, 2, allow_subnormal=False)))
    cut = data.draw(st.integers(0, LENGTH - 1))
    for whole, product in _chen_check(d)(path, cut):
        assert np.max(np.abs(np.asarray(whole) - np.asarray(product))) < 1e-10


def test_chen_on_concatenated_paths_of_different_lengths():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 2))
    b = np.concatenate([a[-1:], a[-1] + rng.normal(size=(7, 2)).cumsum(0)])
    for m in (1, 3, 5):
        whole = sig.signature(np.concatenate([a, b[1:]]), m)
        np.testing.assert_allclose(sig.chen(sig.signature(a, m), sig.signature(b, m), 2, m), whole,
                                   rtol=0, atol=1e-12)


def _polyline(points: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The polyline through `points` (vertex i at u = i/n) evaluated at parameters `u` in [0, 1]."""
    grid = np.linspace(0.0, 1.0, len(points))
    return np.stack([np.interp(u, grid, points[:, k]) for k in range(points.shape[1])], axis=1)


_REPARAM = {
    "t^2": (lambda s: s**2, np.sqrt),
    "sqrt t": (np.sqrt, lambda t: t**2),
    "(1-cos pi t)/2": (lambda s: (1 - np.cos(np.pi * s)) / 2, lambda t: np.arccos(1 - 2 * t) / np.pi),
}


@pytest.mark.parametrize("name", list(_REPARAM))
def test_reparametrisation_invariance(name):
    """The same polyline traversed at the speed of φ: vertices at φ⁻¹ of the original grid plus a
    fine uniform grid in the new parameter (points on the segments) gives the same signature."""
    phi, phi_inv = _REPARAM[name]
    rng = np.random.default_rng(7)
    points = rng.normal(size=(8, 2)).cumsum(0)
    s_vertices = phi_inv(np.linspace(0.0, 1.0, len(points)))
    s = np.unique(np.concatenate([s_vertices, np.linspace(0.0, 1.0, 41)]))
    u = np.clip(phi(s), 0.0, 1.0)
    u[np.searchsorted(s, s_vertices)] = np.linspace(0.0, 1.0, len(points))  # exact vertices
    resampled = _polyline(points, u)
    for m in (3, 5):
        np.testing.assert_allclose(sig.signature(resampled, m), sig.signature(points, m), rtol=0, atol=1e-8)


def test_repeated_points_and_tree_like_excursions_leave_the_signature_unchanged():
    rng = np.random.default_rng(8)
    points = rng.normal(size=(6, 3)).cumsum(0)
    repeated = np.repeat(points, [1, 3, 1, 2, 1, 4], axis=0)
    np.testing.assert_allclose(sig.signature(repeated, 4), sig.signature(points, 4), rtol=0, atol=1e-12)
    # back and forth along the same segments (a tree-like excursion) is invisible too
    excursion = np.concatenate([points[:4], points[2:3], points[3:]])
    np.testing.assert_allclose(sig.signature(excursion, 4), sig.signature(points, 4), rtol=0, atol=1e-10)


def test_non_monotone_reparametrisation_changes_the_signature():
    """Negative control: φ(s) = 1 − s (not increasing) reverses the path: S becomes S⁻¹."""
    rng = np.random.default_rng(9)
    points = rng.normal(size=(10, 2)).cumsum(0)
    reversed_path = _polyline(points, 1.0 - np.linspace(0.0, 1.0, len(points)))
    forward, backward = sig.signature(points, 4), sig.signature(reversed_path, 4)
    assert np.max(np.abs(np.asarray(forward) - np.asarray(backward))) > 1e-2
    np.testing.assert_allclose(sig.chen(forward, backward, 2, 4), 0.0, atol=1e-9)  # S ⊗ S⁻¹ = 1
    swapped = points[[0, 1, 2, 5, 4, 3, 6, 7, 8, 9]]  # a non-monotone visiting order of the vertices
    assert np.max(np.abs(np.asarray(sig.signature(swapped, 4)) - np.asarray(forward))) > 1e-2


@pytest.mark.parametrize("d", [2, 3])
def test_agreement_with_iisignature(d):
    rng = np.random.default_rng(d)
    path = rng.normal(size=(12, d)).cumsum(0) * 0.5
    for m in DEPTHS:
        ours = np.asarray(sig.signature(path, m))
        np.testing.assert_allclose(ours, iisignature.sig(path, m), rtol=1e-12, atol=1e-10)
        assert ours.shape == (iisignature.siglength(d, m),) == (sig.signature_dim(d, m),)
        prepared = iisignature.prepare(d, m, "SX")
        expanded = np.asarray(sig.logsignature(path, m, basis="expanded"))
        np.testing.assert_allclose(expanded, iisignature.logsig(path, prepared, "X"), rtol=1e-12, atol=1e-10)
        lyndon = np.asarray(sig.logsignature(path, m))
        assert lyndon.shape == (iisignature.logsiglength(d, m),) == (sig.logsignature_dim(d, m),)
        np.testing.assert_allclose(lyndon, iisignature.logsig(path, prepared, "S"), rtol=1e-12, atol=1e-10)


def test_lyndon_words_match_iisignature_basis():
    for d, m in ((2, 5), (3, 4)):
        brackets = iisignature.basis(iisignature.prepare(d, m, "S"))
        letters = ["".join(ch for ch in b if ch.isdigit()) for b in brackets]
        assert letters == ["".join(str(c + 1) for c in w) for w in sig.lyndon_words(d, m)]


def test_tensor_exp_log_roundtrip_and_single_segment():
    x = jnp.array([0.3, -1.2, 0.7])
    e = sig.tensor_exp(x, 4)
    np.testing.assert_allclose(sig.signature(jnp.stack([jnp.zeros(3), x]), 4), e, rtol=0, atol=1e-14)
    log = np.asarray(sig.tensor_log(e, 3, 4))
    np.testing.assert_allclose(log[:3], x, atol=1e-14)
    np.testing.assert_allclose(log[3:], 0.0, atol=1e-13)


def test_jit_vmap_and_grad():
    rng = np.random.default_rng(11)
    paths = jnp.asarray(rng.normal(size=(4, 6, 2)))
    batched = jax.jit(jax.vmap(lambda p: sig.logsignature(p, 3)))(paths)
    for i in range(4):
        np.testing.assert_allclose(batched[i], sig.logsignature(paths[i], 3), rtol=0, atol=1e-13)
    # gradient of the Lévy area ½(S¹² − S²¹) w.r.t. the points, against finite differences
    def area(p):
        s = sig.signature(p, 2)
        return 0.5 * (s[3] - s[4])
    g = np.asarray(jax.grad(area)(paths[0]))
    eps, p0 = 1e-6, np.asarray(paths[0])
    fd = np.zeros_like(p0)
    for idx in np.ndindex(p0.shape):
        up, down = p0.copy(), p0.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (float(area(up)) - float(area(down))) / (2 * eps)
    np.testing.assert_allclose(g, fd, atol=1e-7)


def test_lead_lag_area_is_half_the_quadratic_variation_and_time_augment():
    rng = np.random.default_rng(12)
    x = rng.normal(size=20).cumsum()
    s = np.asarray(sig.signature(sig.lead_lag(x[:, None]), 2))
    area = 0.5 * (s[2 + 1] - s[2 + 2])  # words (lead, lag) and (lag, lead) at level 2
    np.testing.assert_allclose(area, 0.5 * np.sum(np.diff(x) ** 2), rtol=1e-12)
    path = np.asarray(sig.time_augment(x))
    assert path.shape == (20, 2)
    np.testing.assert_allclose(path[[0, -1], 0], [0.0, 1.0])


def test_short_paths_and_errors():
    np.testing.assert_array_equal(sig.signature(np.ones((1, 2)), 3), np.zeros(14))
    with pytest.raises(ValueError, match="depth"):
        sig.signature(np.ones((3, 2)), 0)
    with pytest.raises(ValueError, match="shape"):
        sig.signature(np.ones(3), 2)
    with pytest.raises(ValueError, match="basis"):
        sig.logsignature(np.ones((3, 2)), 2, basis="hall")
