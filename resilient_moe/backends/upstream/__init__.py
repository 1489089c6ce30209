"""The upstream ``triton_kernels`` backend: its MoE GEMMs behind the same dispatcher as the builtin kernel.

``triton_kernels`` (upstream Triton's MoE GEMMs): change one import to get the out-of-shared-memory
fallback, ``from resilient_moe import matmul_ogs`` (v3.5, v3.6) or ``from resilient_moe import matmul``
(v3.7 and later), or call ``patch_triton_kernels()`` once after the serving framework imported its
MoE layer. Nothing of upstream is imported until the first call.

copies.py finds every copy (standalone, vLLM's, SGLang's) and hooks its make_opt_flags; matmul_ogs.py
describes each call to the dispatcher, formats.py what its format allows; patch.py swaps our functions
in where serving code looks upstream's up; preflight.py runs upstream for a chip you do not have.
"""

from .matmul_ogs import matmul, matmul_ogs
from .patch import patch_triton_kernels, unpatch_triton_kernels


__all__ = ["matmul", "matmul_ogs", "patch_triton_kernels", "unpatch_triton_kernels"]
