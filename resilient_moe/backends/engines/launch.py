"""The engines' ``fused_moe_kernel`` launches as compile jobs: the arguments both engines pass for one GEMM
of a fused-experts call, so preflight compiles what the engine would launch without running it.
Arguments are matched by name (``binding.split``): a parameter the description does not know and that
has no default is an error naming it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .fused_moe import Layer

DESCRIBED = (None, "float32", "fp8_w8a8", "int8_w8a8")
"""The dtype selectors whose launches are described (the w*a16 formats run another kernel)."""


@dataclass(frozen=True)
class Gemm:
    """One of a fused-experts call's two GEMMs, as the engines launch it."""

    n: int
    k: int
    rows: int  # the activations' rows: the tokens (up), or tokens x top-k (down)
    top_k: int  # slots per row: the layer's top-k (up), 1 (down)
    routed: bool  # multiplies by the router's weights (the down GEMM)


def gemms(layer: Layer) -> tuple[Gemm, Gemm]:
    """The up GEMM (w1: gathers tokens, N = 2 x intermediate) and the down GEMM (w2, N = hidden)."""
    return (Gemm(layer.n, layer.k, layer.tokens, layer.top_k, False),
            Gemm(layer.w2_shape[1], layer.w2_shape[2], layer.tokens * layer.top_k, 1, True))


def shared_values(layer: Layer, tile: dict[str, Any], gemm: Gemm, em: int, engine: str) -> dict[str, Any]:
    """The arguments, by name, that SGLang's and vLLM's kernels both take for ``gemm`` under ``tile``,
    with ``em`` rows of sorted token ids, as the JIT specializes them: contiguous operands, no bias."""
    import triton
    import triton.language as tl

    if layer.dtype not in DESCRIBED:
        raise NotImplementedError(f"preflight of {engine}'s {layer.dtype} path (fused_moe_kernel_gptq_awq) is not described yet")
    eight_bit = layer.dtype in ("fp8_w8a8", "int8_w8a8")
    operand = {"fp8_w8a8": torch.float8_e4m3fn, "int8_w8a8": torch.int8}.get(layer.dtype or "", getattr(torch, layer.activation))
    out = getattr(torch, layer.activation)
    group_n, group_k = layer.block_shape or (0, 0)
    n, k = gemm.n, gemm.k
    scale_a = scale_b = None
    scale_strides = (0, 0, 0, 0, 0)
    if eight_bit:
        scale_a, scale_b = pointer(torch.float32), pointer(torch.float32)
        if layer.block_shape is not None:
            ks, ns = triton.cdiv(k, group_k), triton.cdiv(n, group_n)
            scale_strides = (ks, 1, ns * ks, 1, ks)  # a_scale [tokens, k/gk], b_scale [E, n/gn, k/gk]
    values = {
        "a_ptr": pointer(operand), "b_ptr": pointer(operand), "c_ptr": pointer(out),
        "a_scale_ptr": scale_a, "b_scale_ptr": scale_b, "topk_weights_ptr": pointer(torch.float32),
        "sorted_token_ids_ptr": pointer(torch.int32), "expert_ids_ptr": pointer(torch.int32),
        "num_tokens_post_padded_ptr": pointer(torch.int32),
        "N": n, "K": k, "EM": specialized(em), "num_valid_tokens": specialized(gemm.rows * gemm.top_k),
        "stride_am": k, "stride_ak": 1, "stride_be": n * k, "stride_bk": 1, "stride_bn": k, "stride_cm": n, "stride_cn": 1,
        "stride_asm": scale_strides[0], "stride_ask": scale_strides[1], "stride_bse": scale_strides[2],
        "stride_bsk": scale_strides[3], "stride_bsn": scale_strides[4], "group_n": group_n, "group_k": group_k,
        "MUL_ROUTED_WEIGHT": gemm.routed, "top_k": gemm.top_k,
        "compute_type": tl.bfloat16 if out == torch.bfloat16 else tl.float16,
        "use_fp8_w8a8": layer.dtype == "fp8_w8a8", "use_int8_w8a8": layer.dtype == "int8_w8a8",
        "use_int8_w8a16": False, "per_channel_quant": layer.per_channel,
        **{name: value for name, value in tile.items() if name.isupper() and name != "USE_TMA"},
    }
    values.update((name, tile[name]) for name in ("num_warps", "num_stages") if name in tile)
    return values


def pointer(dtype: torch.dtype) -> torch.Tensor:
    """A pointer argument: the JIT sees its dtype and alignment only."""
    return torch.empty(1, dtype=dtype)


def specialized(value: int) -> int:
    """An integer argument as the JIT specializes it (1, a multiple of 16, or neither), so the M rows of
    one config share one compile: their token counts differ, not their code."""
    return value if value == 1 or value >= 2**31 else 16 if value % 16 == 0 else 17
