"""Double of vllm.model_executor.layers.fused_moe: override_config as vLLM has it (no try/finally)."""

from contextlib import contextmanager
from typing import Any

_config: dict[str, Any] | None = None


@contextmanager
def override_config(config):
    global _config
    old_config = _config
    _config = config
    yield
    _config = old_config


def get_config() -> dict[str, Any] | None:
    return _config


from .fused_moe import TritonExperts, fused_experts, try_get_optimal_moe_config  # noqa: E402

__all__ = ["override_config", "get_config", "fused_experts", "TritonExperts", "try_get_optimal_moe_config"]
