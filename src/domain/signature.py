"""Truncated path signatures and log-signatures in pure JAX (float64, jit/vmap/grad safe).

Layout. A truncated signature of a ``d``-dimensional path at depth ``N`` is stored flat, levels
``1..N`` one after the other (level 0, the constant 1, is implicit), each level ``k`` as the
``d**k`` coefficients of the words ``i1…ik`` in row-major order (the last letter varies
fastest). This is iisignature's layout, so results compare element by element with
``iisignature.sig``. Its length is :func:`signature_dim` ``= d + d² + … + d^N``.

Algebra. For a piecewise-linear path with increments ``Δ_1 … Δ_n``, Chen's identity gives
``S_{0,t_{k+1}} = S_{0,t_k} ⊗ exp(Δ_{k+1})``; :func:`signature` runs this product as a
``lax.scan`` over the increments (the compiled graph does not grow with the path length). Each
step evaluates level ``k`` of ``S ⊗ exp(Δ)`` by a Horner scheme that never forms ``Δ^{⊗j}``::

    (S ⊗ exp Δ)_k = S_k + ((…((Δ/k + S_1) ⊗ Δ/(k−1) + S_2) ⊗ Δ/(k−2) …) + S_{k−1}) ⊗ Δ

Log-signature bases (:func:`logsignature`):

* ``"expanded"``: the tensor logarithm ``log S = Σ_{n≥1} (−1)^{n+1} (S−1)^{⊗n}/n`` in the same
  flat layout as the signature (iisignature's ``'X'`` method);
* ``"lyndon"``: coordinates in the Lyndon basis of the free Lie algebra, each Lyndon word ``w``
  bracketed by its standard factorisation (``w = uv``, ``v`` the longest proper Lyndon suffix),
  ordered by level then lexicographically; this is iisignature's default basis
  (``prepare(d, N)``, methods ``'S'``/``'C'``). The coordinates are obtained from the expanded
  logarithm by solving the unitriangular system between Lyndon brackets and Lyndon words.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "chen", "lead_lag", "logsignature", "logsignature_dim", "lyndon_coordinates", "lyndon_words",
    "signature", "signature_dim", "signature_levels", "tensor_exp", "tensor_log", "time_augment",
]

Levels = tuple[jax.Array, ...]


def signature_dim(d: int, depth: int) -> int:
    """Length of a flattened truncated signature: ``d + d² + … + d^depth``."""
    return sum(d**k for k in range(1, depth + 1))


def logsignature_dim(d: int, depth: int, basis: str = "lyndon") -> int:
    """Length of :func:`logsignature`'s output in ``basis`` (Witt's formula for Lyndon)."""
    if basis == "expanded":
        return signature_dim(d, depth)
    return len(lyndon_words(d, depth))


def _check(d: int, depth: int) -> None:
    if not (isinstance(depth, (int, np.integer)) and depth >= 1):
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"path dimension must be a positive int, got {d!r}")


def _outer(a: jax.Array, b: jax.Array) -> jax.Array:
    """Tensor product of two flattened levels (word of ``a`` followed by word of ``b``)."""
    return (a[..., :, None] * b[..., None, :]).reshape(*a.shape[:-1], -1)


def _split(flat: jax.Array, d: int, depth: int) -> Levels:
    sizes = np.cumsum([d**k for k in range(1, depth + 1)])[:-1]
    return tuple(jnp.split(flat, sizes, axis=-1))


def _join(levels: Levels) -> jax.Array:
    return jnp.concatenate(levels, axis=-1)


def _mul(a: Levels, b: Levels) -> Levels:
    """Truncated product ``(1 + a) ⊗ (1 + b) − 1`` of two elements given by levels 1..N."""
    depth = len(a)
    out = []
    for k in range(1, depth + 1):
        acc = a[k - 1] + b[k - 1]
        for i in range(1, k):
            acc = acc + _outer(a[i - 1], b[k - i - 1])
        out.append(acc)
    return tuple(out)


def _mul_exp(sig: Levels, delta: jax.Array) -> Levels:
    """``S ⊗ exp(Δ)`` truncated at the depth of ``S`` (Horner scheme, see module docstring)."""
    depth = len(sig)
    out = []
    for k in range(1, depth + 1):
        acc = delta / k
        for i in range(1, k):
            acc = _outer(acc + sig[i - 1], delta / (k - i))
        out.append(sig[k - 1] + acc)
    return tuple(out)


def tensor_exp(x: jax.Array, depth: int) -> jax.Array:
    """``exp(x) − 1`` of a vector ``x`` (shape ``(d,)``), flattened levels 1..depth."""
    x = jnp.asarray(x, dtype=jnp.float64)
    _check(x.shape[-1], depth)
    zero = tuple(jnp.zeros((*x.shape[:-1], x.shape[-1] ** k), x.dtype) for k in range(1, depth + 1))
    return _join(_mul_exp(zero, x))


def chen(sig_a: jax.Array, sig_b: jax.Array, d: int, depth: int) -> jax.Array:
    """Truncated tensor product of two flattened signatures (Chen: ``S(a ⋆ b) = S(a) ⊗ S(b)``).

    Args:
        sig_a, sig_b: float64[..., signature_dim(d, depth)], levels 1..depth (level 0 = 1).
        d: path dimension. depth: truncation depth.
    Returns:
        float64[..., signature_dim(d, depth)].
    """
    _check(d, depth)
    return _join(_mul(_split(sig_a, d, depth), _split(sig_b, d, depth)))


def signature(path: jax.Array, depth: int) -> jax.Array:
    """Truncated signature of a path of shape ``(length, d)``: float64[signature_dim(d, depth)].

    Levels 1..depth flattened level by level in row-major word order (iisignature's layout).
    A path with a single point has the zero signature (only the implicit level 0). The carry of
    the scan is the flat vector (one buffer: cheaper per step on CPU than a tuple of levels).
    """
    path = jnp.asarray(path, dtype=jnp.float64)
    if path.ndim != 2 or path.shape[0] < 1:
        raise ValueError(f"path must have shape (length >= 1, d), got {path.shape}")
    d = path.shape[1]
    _check(d, depth)
    increments = path[1:] - path[:-1]

    def step(flat: jax.Array, delta: jax.Array) -> tuple[jax.Array, None]:
        return _join(_mul_exp(_split(flat, d, depth), delta)), None

    flat, _ = jax.lax.scan(step, jnp.zeros((signature_dim(d, depth),), path.dtype), increments)
    return flat


def signature_levels(path: jax.Array, depth: int) -> Levels:
    """:func:`signature` as a tuple of flattened levels ``1..depth`` (level ``k``: ``d**k`` values)."""
    path = jnp.asarray(path, dtype=jnp.float64)
    return _split(signature(path, depth), path.shape[-1], depth)


def tensor_log(sig: jax.Array, d: int, depth: int) -> jax.Array:
    """Expanded tensor logarithm of a flattened signature (same layout and length)."""
    _check(d, depth)
    x = _split(jnp.asarray(sig, dtype=jnp.float64), d, depth)
    zero = tuple(jnp.zeros_like(level) for level in x)
    # Horner: log(1 + x) = x ⊗ (1 − x ⊗ (1/2 − x ⊗ (1/3 − …))), truncated at `depth`.
    acc: Levels = zero
    const = 1.0 / depth
    for n in range(depth - 1, 0, -1):
        # acc_new = 1/n − x ⊗ (const + acc) where (const + acc) has level-0 part `const`.
        prod = _mul_scaled(x, acc, const)
        const, acc = 1.0 / n, tuple(-p for p in prod)
    return _join(_mul_scaled(x, acc, const))


def _mul_scaled(x: Levels, b: Levels, b0: float) -> Levels:
    """``x ⊗ (b0 + b)`` for ``x`` without level 0, truncated."""
    depth = len(x)
    out = []
    for k in range(1, depth + 1):
        acc = b0 * x[k - 1]
        for i in range(1, k):
            acc = acc + _outer(x[i - 1], b[k - i - 1])
        out.append(acc)
    return tuple(out)


@functools.lru_cache(maxsize=64)
def lyndon_words(d: int, depth: int) -> tuple[tuple[int, ...], ...]:
    """Lyndon words over ``{0..d−1}`` of length ``1..depth``, by length then lexicographically."""
    _check(d, depth)
    words = []
    w = [-1]
    while w:  # Duval's algorithm: every Lyndon word of length <= depth, lexicographically
        w[-1] += 1
        words.append(tuple(w))
        n = len(w)
        while len(w) < depth:
            w.append(w[len(w) - n])
        while w and w[-1] == d - 1:
            w.pop()
    return tuple(sorted(words, key=lambda u: (len(u), u)))


def _is_lyndon(w: tuple[int, ...]) -> bool:
    return all(w < w[i:] for i in range(1, len(w)))


def _bracket(w: tuple[int, ...]) -> dict[tuple[int, ...], int]:
    """Expansion in words of the standard bracketing of the Lyndon word ``w``."""
    if len(w) == 1:
        return {w: 1}
    split = next(i for i in range(1, len(w)) if _is_lyndon(w[i:]))
    left, right = _bracket(w[:split]), _bracket(w[split:])
    out: dict[tuple[int, ...], int] = {}
    for a, ca in left.items():
        for b, cb in right.items():
            out[a + b] = out.get(a + b, 0) + ca * cb
            out[b + a] = out.get(b + a, 0) - ca * cb
    return {k: v for k, v in out.items() if v}


def _lyndon_change_of_basis(d: int, depth: int) -> np.ndarray:
    """``B⁻¹`` where ``B[u, w]`` is the coefficient of the Lyndon word ``w`` in the bracket ``P_u``.

    A Lie element ``Σ_u c_u P_u`` has Lyndon-word coordinates ``ℓ = c B``; ``B`` is
    unitriangular (``P_u = u + larger words``), so ``c = ℓ B⁻¹`` exactly (integer inverse).
    """
    words = lyndon_words(d, depth)
    position = {w: i for i, w in enumerate(words)}
    b = np.zeros((len(words), len(words)))
    for i, u in enumerate(words):
        for word, coef in _bracket(u).items():
            if word in position:
                b[i, position[word]] = coef
    return np.rint(np.linalg.inv(b))


@functools.lru_cache(maxsize=64)
def _lyndon_projection(d: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the Lyndon words and the matrix mapping their coordinates to the basis."""
    words = lyndon_words(d, depth)
    offsets = np.concatenate([[0], np.cumsum([d**k for k in range(1, depth + 1)])])
    index = np.array([offsets[len(w) - 1] + sum(c * d ** (len(w) - 1 - j) for j, c in enumerate(w))
                      for w in words], dtype=np.int64)
    return index, _lyndon_change_of_basis(d, depth)


def logsignature(path: jax.Array, depth: int, basis: str = "lyndon") -> jax.Array:
    """Log-signature of a path of shape ``(length, d)``.

    Args:
        basis: ``"lyndon"`` (coefficients on the Lyndon-bracket basis, iisignature's default;
            length :func:`logsignature_dim`) or ``"expanded"`` (the tensor logarithm in the
            signature layout, iisignature's ``'X'``).
    """
    if basis not in ("lyndon", "expanded"):
        raise ValueError(f"basis must be 'lyndon' or 'expanded', got {basis!r}")
    path = jnp.asarray(path, dtype=jnp.float64)
    d = path.shape[-1]
    expanded = tensor_log(signature(path, depth), d, depth)
    if basis == "expanded":
        return expanded
    return lyndon_coordinates(expanded, d, depth)


def lyndon_coordinates(expanded: jax.Array, d: int, depth: int) -> jax.Array:
    """Lyndon-basis coefficients of a Lie element given in expanded (tensor) form."""
    index, inverse = _lyndon_projection(d, depth)
    return expanded[..., index] @ jnp.asarray(inverse)


def time_augment(values: jax.Array, t_end: float = 1.0) -> jax.Array:
    """Path ``(t_i, x_i)`` with ``t`` uniform on ``[0, t_end]``: float64[length, 2] from float64[length]."""
    values = jnp.asarray(values, dtype=jnp.float64)
    n = values.shape[-1]
    t = jnp.linspace(0.0, t_end, n, dtype=values.dtype) if n > 1 else jnp.zeros((1,), values.dtype)
    return jnp.stack([jnp.broadcast_to(t, values.shape), values], axis=-1)


def lead_lag(path: jax.Array) -> jax.Array:
    """Lead–lag transform: ``(length, d) → (2·length − 1, 2d)``, lead channels first.

    The lead moves first, then the lag catches up; the Lévy area between a channel's lead and
    lag equals half its discrete quadratic variation.
    """
    path = jnp.asarray(path, dtype=jnp.float64)
    lead = jnp.repeat(path, 2, axis=0)[1:]
    lag = jnp.repeat(path, 2, axis=0)[:-1]
    return jnp.concatenate([lead, lag], axis=-1)

