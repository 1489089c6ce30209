"""A two-GEMM MoE layer on the builtin kernel: route, gather up-projection, SwiGLU, scatter down-projection.

Shows ``rm.route``, ``rm.moe_matmul`` in both modes, and a check against ``rm.moe_matmul_reference``.
On a machine without a GPU the kernels run in the Triton interpreter (fp16: the interpreter's bf16
``tl.dot`` is wrong), on small shapes, in a few seconds.

Run: python examples/moe_layer.py
"""

from __future__ import annotations

import os

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is imported

import resilient_moe as rm  # noqa: E402

TOKENS, EXPERTS, TOP_K, HIDDEN, FFN = (4096, 64, 4, 2048, 1024) if GPU else (32, 4, 2, 128, 64)
DEVICE, DTYPE = ("cuda", torch.bfloat16) if GPU else ("cpu", torch.float16)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """Gate and up are fused in the up-projection's output: [rows, 2 * ffn] -> [rows, ffn]."""
    gate, up = h.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(h.dtype)


def moe_layer(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, routing: rm.Routing) -> torch.Tensor:
    """x [T, hidden] -> [T, hidden]: each token's top-k experts, summed with the router's weights."""
    h = rm.moe_matmul(x, w_up, routing, mode="gather")  # [T * top_k, 2 * ffn], rows in expert order
    return rm.moe_matmul(swiglu(h), w_down, routing, mode="scatter")  # gamma-weighted sum per token


def reference_layer(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, routing: rm.Routing) -> torch.Tensor:
    h = rm.moe_matmul_reference(x, w_up, routing, mode="gather")
    return rm.moe_matmul_reference(swiglu(h), w_down, routing, mode="scatter")


def main() -> int:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, HIDDEN, generator=g).to(DEVICE, DTYPE)
    w_up = (torch.randn(EXPERTS, HIDDEN, 2 * FFN, generator=g) / HIDDEN**0.5).to(DEVICE, DTYPE)
    w_down = (torch.randn(EXPERTS, FFN, HIDDEN, generator=g) / FFN**0.5).to(DEVICE, DTYPE)
    routing = rm.route(torch.randn(TOKENS, EXPERTS, generator=g).to(DEVICE), TOP_K)

    y = moe_layer(x, w_up, w_down, routing)
    ref = reference_layer(x, w_up, w_down, routing)
    error = (y.float() - ref.float()).abs().max().item()
    tolerance = 2e-2 * ref.float().abs().max().item()
    where = "GPU" if GPU else "Triton interpreter"
    print(f"MoE layer on the {where}: {TOKENS} tokens, {EXPERTS} experts, top-{TOP_K}, hidden {HIDDEN}, "
          f"ffn {FFN}, {str(DTYPE).removeprefix('torch.')} -> output {tuple(y.shape)}")
    ok = error <= tolerance
    print(f"max abs error against rm.moe_matmul_reference: {error:.3g} (tolerance {tolerance:.3g}): "
          f"{'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
