"""resilient_moe: Triton MoE GEMMs that keep running when a tile does not fit the chip.

Flow of a call: policy (policy.py) -> ladder (ladder.py) -> dispatch (dispatch.py, one protocol for
every backend) -> backends/ (builtin/: our kernel; upstream/: upstream's matmul_ogs; engines/: SGLang's
and vLLM's fused_moe_kernel; aiter/: ROCm aiter's MoE GEMMs) ->
cache (cache.py) and events (events.py). virtual/ compiles for chips this machine does not have;
targets.py lists them; settings.py holds the process-global state and ``reset()``.

Names are imported on first use: whether Triton interprets or compiles is fixed when a kernel
module is imported, so ``import resilient_moe`` must not import one (the CLI decides first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CHIPS": "targets",
    "Chip": "targets",
    "Attempt": "dispatch",
    "LadderExhaustedError": "dispatch",
    "Resolution": "dispatch",
    "reset": "settings",
    "resolution": "backends.builtin.moe_matmul",
    "Policy": "policy",
    "PolicyError": "policy",
    "load_policy": "policy",
    "Routing": "routing",
    "route": "routing",
    "TileConfig": "config",
    "TilingCache": "cache",
    "moe_matmul": "backends.builtin.moe_matmul",
    "moe_matmul_reference": "reference",
    **dict.fromkeys(("matmul", "matmul_ogs", "patch_triton_kernels", "unpatch_triton_kernels"), "backends.upstream"),
    **dict.fromkeys(("patch_sglang", "unpatch_sglang", "patch_vllm", "unpatch_vllm", "warm_up", "CaptureMissError"),
                    "backends.engines"),
    **dict.fromkeys(("patch_aiter", "unpatch_aiter"), "backends.aiter"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resilient_moe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from .backends.upstream import (
        matmul,
        matmul_ogs,
        patch_triton_kernels,
        unpatch_triton_kernels,
    )
    from .backends.aiter import patch_aiter, unpatch_aiter
    from .backends.builtin.moe_matmul import moe_matmul, resolution
    from .backends.engines import CaptureMissError, patch_sglang, patch_vllm, unpatch_sglang, unpatch_vllm, warm_up
    from .cache import TilingCache
    from .config import TileConfig
    from .dispatch import Attempt, LadderExhaustedError, Resolution
    from .policy import Policy, PolicyError, load_policy
    from .reference import moe_matmul_reference
    from .routing import Routing, route
    from .settings import reset
    from .targets import CHIPS, Chip
