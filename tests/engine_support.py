"""Shared by the engine tests: a small fp16 MoE layer, and fp8 weights (the fixtures ``small_chip`` and
``use_policy`` are in conftest.py)."""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def moe_layer(tokens: int = 8, experts: int = 4, hidden: int = 64, intermediate: int = 32, top_k: int = 2, seed: int = 0):
    """x [tokens, hidden], w1 [E, 2I, hidden], w2 [E, hidden, I], top-k weights and ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(DEVICE, torch.float16)
    w1 = (torch.randn(experts, 2 * intermediate, hidden, generator=g) / 8).to(DEVICE, torch.float16)
    w2 = (torch.randn(experts, hidden, intermediate, generator=g) / 8).to(DEVICE, torch.float16)
    weights, ids = torch.topk(torch.randn(tokens, experts, generator=g).softmax(-1), top_k)
    return x, w1, w2, weights.to(DEVICE), ids.to(DEVICE, torch.int32)


def fp8_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert fp8 weights and their scales."""
    top = torch.finfo(torch.float8_e4m3fn).max
    scale = (w.abs().amax(dim=(1, 2)).float() / top).clamp(min=1e-12)
    return (w.float() / scale[:, None, None]).clamp(-top, top).to(torch.float8_e4m3fn), scale


def fp8_block(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled fp8 weights [E, N, K] and their scales [E, N/bn, K/bk] (DeepSeek-V3's layout)."""
    top = torch.finfo(torch.float8_e4m3fn).max
    e, n, k = w.shape
    bn, bk = block
    tiles = w.float().view(e, n // bn, bn, k // bk, bk)
    scale = (tiles.abs().amax(dim=(2, 4)) / top).clamp(min=1e-12)
    q = (tiles / scale[:, :, None, :, None]).clamp(-top, top).to(torch.float8_e4m3fn)
    return q.view(e, n, k), scale
