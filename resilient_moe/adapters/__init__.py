"""Fronts for other MoE GEMM libraries, behind the same dispatcher as the builtin kernel.

``triton_kernels`` (upstream Triton's MoE GEMMs): change one import to get the out-of-shared-memory
fallback, ``from resilient_moe import matmul_ogs`` (v3.5, v3.6) or ``from resilient_moe import matmul``
(v3.7 and later), or call ``patch_triton_kernels()`` once after the serving framework imported its
MoE layer. Nothing of upstream is imported until the first call.
"""

from .triton_kernels import (
    matmul,
    matmul_ogs,
    patch_triton_kernels,
    unpatch_triton_kernels,
)

__all__ = ["matmul", "matmul_ogs", "patch_triton_kernels", "unpatch_triton_kernels"]
