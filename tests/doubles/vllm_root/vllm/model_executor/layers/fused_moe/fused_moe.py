"""Double of vllm's fused_moe.py: the config lookup, the kernel's launcher and two entries that run the
(double) kernel, following vLLM's public source where resilient_moe depends on it: the launch
(``invoke_fused_moe_triton_kernel``: EM, the naive path, SPLIT_K forced to 1, BLOCK_SIZE_K within the
quant block, ``**config``), the lookup order and the file names. Its fp8 per-tensor default is the
147456-byte tile users of SGLang hit (vLLM's own is a heuristic), so recovery is exercised."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from doubles.fused_moe_kernel_double import fused_moe_kernel
from vllm.platforms import current_platform

CHUNK_SIZE = 16 * 1024
FP8_MAX = 448.0
launches: list[dict[str, Any]] = []  # every config the kernel was launched with (for the tests)


class QuantConfig:
    """Double of FusedMoEQuantConfig: what the lookup and the launches read of it."""

    def __init__(self, use_fp8_w8a8: bool = False, block_shape: list[int] | None = None,
                 w1_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None) -> None:
        self.use_fp8_w8a8, self.block_shape, self.per_out_ch_quant = use_fp8_w8a8, block_shape, False
        self.w1_scale, self.w2_scale = w1_scale, w2_scale

    def config_name(self, dtype: torch.dtype) -> str | None:
        return "fp8_w8a8" if self.use_fp8_w8a8 else ("float32" if dtype == torch.float32 else None)


def get_config_file_name(E: int, N: int, dtype: str | None, block_shape: list[int] | None = None) -> str:
    device_name = current_platform.get_device_name().replace(" ", "_")
    dtype_selector = "" if not dtype else f",dtype={dtype}"
    block_selector = "" if not block_shape or not all(block_shape) else f",block_shape={block_shape}".replace(" ", "")
    return f"E={E},N={N},device_name={device_name}{dtype_selector}{block_selector}.json"


@functools.lru_cache
def get_moe_configs(E: int, N: int, dtype: str | None, block_n: int | None = None, block_k: int | None = None):
    block_shape = [block_n, block_k] if block_n and block_k else None
    name = get_config_file_name(E, N, dtype, block_shape)
    folder = os.getenv("VLLM_TUNED_CONFIG_FOLDER")
    for path in ([os.path.join(folder, name)] if folder else []):
        if os.path.exists(path):
            with open(path) as f:
                table = json.load(f)
            table.pop("triton_version", None)
            return {int(key): value for key, value in table.items()}
    return None


def get_default_config(M: int, E: int, N: int, K: int, topk: int, dtype: str | None, block_shape=None) -> dict[str, int]:
    if dtype == "fp8_w8a8" and block_shape is None:
        return {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 32, "num_warps": 8, "num_stages": 4}
    if dtype == "fp8_w8a8":
        return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": block_shape[0], "BLOCK_SIZE_K": block_shape[1], "GROUP_SIZE_M": 32,
                "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
    if M <= E:
        return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "SPLIT_K": 1}
    return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8, "SPLIT_K": 1}


def try_get_optimal_moe_config(w1_shape, w2_shape, top_k: int, dtype: str | None, M: int, block_shape=None) -> dict[str, int]:
    from vllm.model_executor.layers.fused_moe import get_config

    override = get_config()
    if override:
        return override
    E, _, N = w2_shape
    configs = get_moe_configs(E, N, dtype, *(block_shape or (0, 0)))
    if configs:
        return configs[min(configs.keys(), key=lambda x: abs(x - M))]
    return get_default_config(M, E, N, w1_shape[2], top_k, dtype, block_shape)


def moe_align_block_size(topk_ids: torch.Tensor, block_size: int, num_experts: int):
    """Slots sorted by expert, each expert's run padded to a multiple of ``block_size`` with the
    padding value ``numel``; the expert of every block; the padded length. No host synchronization."""
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    length = numel + num_experts * (block_size - 1)
    if numel < num_experts:
        length = min(length, numel * block_size)
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    ends = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    experts = flat[order]
    rank = torch.arange(numel, device=flat.device) - (counts.cumsum(0) - counts)[experts]
    sorted_ids = torch.full((length,), numel, dtype=torch.int32, device=flat.device)
    sorted_ids[(ends - padded)[experts] + rank] = order.to(torch.int32)
    starts = torch.arange(triton.cdiv(length, block_size), device=flat.device) * block_size
    expert_ids = torch.searchsorted(ends, starts, right=True).clamp(max=num_experts - 1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


def _prepare_expert_assignment(topk_ids: torch.Tensor, config: dict[str, Any], num_experts: int):
    """vLLM's naive path for very sparse batches (tokens x top-k x 4 <= experts): one block per slot."""
    if topk_ids.numel() * 4 <= num_experts:
        size = torch.full((1,), topk_ids.numel() * config["BLOCK_SIZE_M"], dtype=torch.int32, device=topk_ids.device)
        return None, topk_ids.reshape(-1).to(torch.int32), size
    return moe_align_block_size(topk_ids, config["BLOCK_SIZE_M"], num_experts)


def invoke_fused_moe_triton_kernel(A, B, C, A_scale, B_scale, topk_weights, sorted_token_ids, expert_ids,
                                   num_tokens_post_padded, mul_routed_weight: bool, top_k: int, config: dict[str, Any],
                                   compute_type, use_fp8_w8a8: bool, use_int8_w8a8: bool, use_int8_w8a16: bool,
                                   use_int4_w4a16: bool, per_channel_quant: bool, block_shape=None, B_bias=None) -> None:
    launches.append({k: config[k] for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages") if k in config})
    M = A.size(0)
    num_tokens = M * top_k
    if sorted_token_ids is None:
        EM = num_tokens * config["BLOCK_SIZE_M"]
    else:
        EM = sorted_token_ids.size(0)
        if M < config["BLOCK_SIZE_M"]:
            EM = min(EM, M * top_k * config["BLOCK_SIZE_M"])
    swap_ab = (use_fp8_w8a8 and A.is_cuda and torch.cuda.get_device_capability(A.device) == (9, 0)
               and config["BLOCK_SIZE_M"] < 64 and config["BLOCK_SIZE_N"] >= 64)
    config = config.copy()
    config["SPLIT_K"] = 1
    block_k = config.pop("BLOCK_SIZE_K")
    if block_shape is not None:
        block_k = min(block_k, min(block_shape[0], block_shape[1]))
    grid = (triton.cdiv(EM, config["BLOCK_SIZE_M"]) * triton.cdiv(B.size(1), config["BLOCK_SIZE_N"]),)
    two_d = A_scale is not None and A_scale.ndim == 2
    fused_moe_kernel[grid](
        A, B, C, B_bias, A_scale, B_scale, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
        B.size(1), B.size(2), EM, num_tokens, A.stride(0), A.stride(1), B.stride(0), B.stride(2), B.stride(1),
        C.stride(1), C.stride(2), A_scale.stride(0) if two_d else 0, A_scale.stride(1) if two_d else 0,
        B_scale.stride(0) if B_scale is not None and B_scale.ndim >= 2 else 0,
        B_scale.stride(2) if B_scale is not None and B_scale.ndim == 3 else 0,
        B_scale.stride(1) if B_scale is not None and B_scale.ndim >= 2 else 0,
        B_bias.stride(0) if B_bias is not None else 0, B_bias.stride(1) if B_bias is not None else 0,
        0 if block_shape is None else block_shape[0], 0 if block_shape is None else block_shape[1],
        MUL_ROUTED_WEIGHT=mul_routed_weight, top_k=top_k, compute_type=compute_type, use_fp8_w8a8=use_fp8_w8a8,
        use_int8_w8a8=use_int8_w8a8, use_int8_w8a16=use_int8_w8a16, per_channel_quant=per_channel_quant,
        naive_block_assignment=sorted_token_ids is None, HAS_BIAS=B_bias is not None, BLOCK_SIZE_K=block_k,
        SWAP_AB=swap_ab, **config,
    )


def _quantized(x: torch.Tensor, quant: QuantConfig | None):
    """fp8 activations and their scales as vLLM quantizes them: per tensor, or per token and K group."""
    if quant is None or not quant.use_fp8_w8a8:
        return x, None
    if quant.block_shape is None:
        scale = (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12).reshape(1)
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
    groups = x.float().view(x.shape[0], -1, quant.block_shape[1])
    scale = (groups.abs().amax(-1) / FP8_MAX).clamp(min=1e-12)
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view_as(x), scale


def _forward(hidden_states, w1, w2, topk_weights, topk_ids, config, quant: QuantConfig | None) -> torch.Tensor:
    M, top_k = topk_ids.shape
    compute = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[hidden_states.dtype]
    fp8 = quant is not None and quant.use_fp8_w8a8
    block = None if quant is None else quant.block_shape
    sorted_ids, expert_ids, padded = _prepare_expert_assignment(topk_ids, config, w1.shape[0])
    up = torch.empty(M, top_k, w1.shape[1], dtype=hidden_states.dtype, device=hidden_states.device)
    a, a_scale = _quantized(hidden_states, quant)
    invoke_fused_moe_triton_kernel(a, w1, up, a_scale, None if quant is None else quant.w1_scale, topk_weights,
                                   sorted_ids, expert_ids, padded, False, top_k, config, compute, fp8, False, False,
                                   False, False, block)
    half = w1.shape[1] // 2
    flat = up.view(M * top_k, -1)
    act = (F.silu(flat[:, :half].float()) * flat[:, half:].float()).to(hidden_states.dtype)
    down = torch.empty(M, top_k, w2.shape[1], dtype=hidden_states.dtype, device=hidden_states.device)
    a, a_scale = _quantized(act, quant)
    invoke_fused_moe_triton_kernel(a, w2, down, a_scale, None if quant is None else quant.w2_scale, topk_weights,
                                   sorted_ids, expert_ids, padded, True, 1, config, compute, fp8, False, False,
                                   False, False, block)
    return down.float().sum(1).to(hidden_states.dtype)


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, inplace: bool = False, activation: str = "silu",
                  apply_router_weight_on_input: bool = False, global_num_experts: int = -1, expert_map=None,
                  quant_config: QuantConfig | None = None) -> torch.Tensor:
    dtype = quant_config.config_name(hidden_states.dtype) if quant_config is not None else None
    M = min(hidden_states.shape[0], CHUNK_SIZE)
    config = try_get_optimal_moe_config(w1.size(), w2.size(), topk_ids.shape[1], dtype, M,
                                        block_shape=None if quant_config is None else quant_config.block_shape)
    out = _forward(hidden_states, w1, w2, topk_weights, topk_ids, config, quant_config)
    if inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out


class TritonExperts:
    """Double of vLLM's modular Triton experts: ``apply`` writes the result into ``output``."""

    def __init__(self, quant_config: QuantConfig | None = None) -> None:
        self.quant_config = quant_config or QuantConfig()

    def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation="silu", global_num_experts=-1,
              expert_map=None, a1q_scale=None, a2_scale=None, workspace13=None, workspace2=None,
              expert_tokens_meta=None, apply_router_weight_on_input=False) -> None:
        config = try_get_optimal_moe_config(w1.size(), w2.size(), topk_ids.shape[1],
                                            self.quant_config.config_name(hidden_states.dtype), hidden_states.shape[0],
                                            block_shape=self.quant_config.block_shape)
        output.copy_(_forward(hidden_states, w1, w2, topk_weights, topk_ids, config, self.quant_config))
