"""System identification (SIA): roughness of the path by wavelet-transform modulus maxima, and
spectral diagnostics (Koopman modes, Paley–Wiener integral)."""

from ._spectral import KoopmanSpectrum, PaleyWiener, koopman_spectrum, paley_wiener
from ._wtmm import REGULAR_HOLDER, WTMMResult, WTMMSkeleton, holder_exponent, wtmm, wtmm_skeleton

__all__ = [
    "REGULAR_HOLDER", "KoopmanSpectrum", "PaleyWiener", "WTMMResult", "WTMMSkeleton", "holder_exponent",
    "koopman_spectrum", "paley_wiener", "wtmm", "wtmm_skeleton",
]
