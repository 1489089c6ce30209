"""Double of vllm.platforms: the platform object whose device name names the tuned-config files."""

from __future__ import annotations


class Platform:
    """Double of vLLM's current platform: a CUDA device of a fixed name (no GPU needed)."""

    def get_device_name(self, device_id: int = 0) -> str:
        return "NVIDIA GeForce RTX 4090"

    def is_rocm(self) -> bool:
        return False


current_platform = Platform()
