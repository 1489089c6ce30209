"""ROCm aiter's Triton MoE GEMMs (``moe_gemm_a8w4``, ``moe_gemm_a4w4``, ``moe_gemm_a8w8``) behind the same
dispatcher as the other backends.

ops.py says what a call is (aiter's config as the default rung, the rules aiter states, a lower bound
on LDS) and imposes a rung through the module's own config lookup for one call and thread; front.py
runs a call through the dispatcher and puts ours where serving code looks the wrappers up
(``patch_aiter``); source.py finds aiter, installed or as a source tree without its compiled parts;
preflight.py compiles aiter's real launches for a chip this machine does not have.
"""

from .front import patch_aiter, unpatch_aiter

__all__ = ["patch_aiter", "unpatch_aiter"]
