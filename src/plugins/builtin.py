"""The built-in kernels, registered through the same hook path as third-party plugins."""

from __future__ import annotations

from ..domain import KernelSpec
from .hookspecs import hookimpl
from .kernel_a import KERNEL_A
from .kernel_b import KERNEL_B
from .kernel_c import KERNEL_C
from .kernel_d import KERNEL_D
from .kernel_n import KERNEL_N
from .kernel_s import KERNEL_S


@hookimpl
def usp_register_kernels() -> list[KernelSpec]:
    return [KERNEL_A, KERNEL_B, KERNEL_C, KERNEL_D, KERNEL_N, KERNEL_S]
