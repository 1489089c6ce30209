"""Plain-torch MoE GEMM with the kernel's semantics: the oracle for tests and the last-resort fallback."""

from __future__ import annotations

import torch
from torch import Tensor

from .backends.builtin.launch import Mode, check_operands
from .routing import Routing


def moe_matmul_reference(
    x: Tensor, w: Tensor, routing: Routing, mode: Mode = "gather", bias: Tensor | None = None
) -> Tensor:
    """Same inputs, output shape and dtype as the kernel, accumulated in fp32.

    Loops over experts on the host (reads the offsets, so it synchronizes): meant for correctness.
    """
    check_operands(x, w, bias, routing, mode)
    n = w.shape[2]
    rows = x[routing.gather_idx.long()] if mode == "gather" else x
    h = torch.empty((routing.n_rows, n), dtype=torch.float32, device=x.device)
    offsets = routing.expert_offsets.tolist()
    for expert, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        h[lo:hi] = rows[lo:hi].float() @ w[expert].float()
        if bias is not None:
            h[lo:hi] += bias[expert].float()
    if mode == "gather":
        return h.to(x.dtype)
    slots = torch.zeros((routing.n_tokens * routing.top_k, n), dtype=torch.float32, device=x.device)
    scatter_idx = routing.scatter_idx.long()
    slots[scatter_idx] = h * routing.gammas.reshape(-1)[scatter_idx, None]
    return slots.view(routing.n_tokens, routing.top_k, n).sum(dim=1).to(x.dtype)
