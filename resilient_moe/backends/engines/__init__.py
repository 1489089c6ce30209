"""The engines' own Triton MoE kernel: SGLang's and vLLM's ``fused_moe_kernel``, whose config dict is
the tile, behind the same dispatcher as the other backends.

fused_moe.py describes a fused-experts call to the dispatcher (key, the engine's own config as the
default, an attempt under the engine's ``override_config``, legality, a shared-memory lower bound);
sglang.py and vllm.py say where each engine's functions are, how it launches its kernel, where its
files are and how it is turned on; launch.py binds launches as compile jobs; configs.py writes the
engines' own tuned-config files, fit-checked for a chip; warmup.py resolves the batch sizes an engine
captures in CUDA graphs before it captures them.
"""

from .fused_moe import CaptureMissError
from .sglang import patch_sglang, unpatch_sglang
from .vllm import patch_vllm, unpatch_vllm
from .warmup import warm_up

__all__ = ["CaptureMissError", "patch_sglang", "patch_vllm", "unpatch_sglang", "unpatch_vllm", "warm_up"]
