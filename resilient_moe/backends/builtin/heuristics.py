"""The builtin kernel's heuristics: its first guess of a tile per call (the dispatcher downgrades it if
it does not fit), as triton_kernels keeps ``opt_flags`` beside ``_matmul_ogs``."""

from __future__ import annotations

import torch
import triton

from ...config import TileConfig

_LARGE_SMEM_NVIDIA: frozenset[str] = frozenset({"sm_90", "sm_90a", "sm_100", "sm_100a"})
"""NVIDIA archs with about 228 KiB of shared memory per block; others get smaller first guesses."""
_PERSISTENT_FIRST: frozenset[str] = frozenset({"sm_90", "sm_90a"})
"""Where prefill tiles start persistent: it beat the one-tile kernel there (docs/design.md, "Persistent kernel")."""


def default_config(
    n_rows: int, n: int, k: int, n_experts: int, dtype: torch.dtype, arch: str | None
) -> TileConfig:
    """First guess for Hopper-class GPUs; the dispatcher downgrades it if it does not fit.

    block_m follows the mean rows per expert so small batches do not pad tiles with idle rows.
    128x256x64 at 4 stages (192 KiB of shared memory) was the fastest one-tile bf16 prefill tile on an
    H200. On sm_90, 2-byte prefill tiles start persistent at 3 stages (4 leave no room for the
    epilogue's TMA buffer: 213 KiB at 3), faster than one tile per program there (docs/design.md,
    "Persistent kernel"); decode tiles stay one per program.
    """
    rows_per_expert = triton.cdiv(n_rows, max(n_experts, 1))
    block_m = min(128, max(16, triton.next_power_of_2(rows_per_expert)))
    block_n = 256 if block_m == 128 and n >= 2048 else 128
    block_n = min(block_n, max(16, triton.next_power_of_2(n)))
    block_k = 32 if dtype == torch.float32 else 64
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    persistent = arch in _PERSISTENT_FIRST and block_m == 128 and dtype != torch.float32
    num_stages = 3 if persistent else 4
    if arch is not None and arch.startswith("gfx"):
        num_stages = 2
    elif arch is not None and arch not in _LARGE_SMEM_NVIDIA:
        block_n = min(block_n, 128)
        num_stages = 3
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return TileConfig(block_m, block_n, block_k, group_m=8, num_warps=num_warps, num_stages=num_stages,
                      is_persistent=persistent)
