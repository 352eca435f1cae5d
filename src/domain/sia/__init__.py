"""System identification (SIA): roughness of the path by wavelet-transform modulus maxima."""

from ._wtmm import REGULAR_HOLDER, WTMMResult, WTMMSkeleton, holder_exponent, wtmm, wtmm_skeleton

__all__ = ["REGULAR_HOLDER", "WTMMResult", "WTMMSkeleton", "holder_exponent", "wtmm", "wtmm_skeleton"]
