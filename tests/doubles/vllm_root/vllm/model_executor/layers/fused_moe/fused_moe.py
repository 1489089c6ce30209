"""Double of vllm's fused_moe.py: the config lookup and two entries that run the (double) kernel."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
import triton

from doubles.fused_moe_kernel_double import fused_moe_kernel

DEVICE_NAME = "NVIDIA GeForce RTX 4090"
CHUNK_SIZE = 16 * 1024
launches: list[dict[str, Any]] = []  # every config the kernel was launched with (for the tests)


class QuantConfig:
    """Double of FusedMoEQuantConfig: what the config lookup reads of it."""

    def __init__(self, use_fp8_w8a8: bool = False, block_shape: list[int] | None = None) -> None:
        self.use_fp8_w8a8, self.block_shape, self.per_out_ch_quant = use_fp8_w8a8, block_shape, False

    def config_name(self, dtype: torch.dtype) -> str | None:
        return "fp8_w8a8" if self.use_fp8_w8a8 else ("float32" if dtype == torch.float32 else None)


def get_config_file_name(E: int, N: int, dtype: str | None, block_shape: list[int] | None = None) -> str:
    device_name = DEVICE_NAME.replace(" ", "_")
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


def _expert_gemm(x: torch.Tensor, w: torch.Tensor, topk_ids: torch.Tensor, config: dict[str, Any], rows_of: torch.Tensor) -> torch.Tensor:
    """out[j] = x[rows_of[j]] @ w[expert of j].T for every (token, slot) j: one kernel launch per expert
    over every slot, kept where the slot's expert matches. No host synchronization, so the call can be
    captured in a CUDA graph, as vLLM's own is."""
    flat = topk_ids.reshape(-1)
    out = torch.zeros(flat.numel(), w.shape[1], dtype=x.dtype, device=x.device)
    tile = {k: config[k] for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages") if k in config}
    launches.append(dict(tile))
    a = x[rows_of].contiguous()
    for expert in range(w.shape[0]):
        c = torch.empty(a.shape[0], w.shape[1], dtype=x.dtype, device=x.device)
        b = w[expert]
        grid = (triton.cdiv(a.shape[0], tile["BLOCK_SIZE_M"]) * triton.cdiv(b.shape[0], tile["BLOCK_SIZE_N"]),)
        fused_moe_kernel[grid](a, b, c, a.shape[0], b.shape[0], a.shape[1], a.stride(0), a.stride(1),
                               b.stride(0), b.stride(1), c.stride(0), c.stride(1), **tile)
        out = torch.where((flat == expert)[:, None], c, out)
    return out


def _forward(hidden_states, w1, w2, topk_weights, topk_ids, config) -> torch.Tensor:
    tokens, top_k = topk_ids.shape
    slots = torch.arange(tokens * top_k, device=hidden_states.device)
    h = _expert_gemm(hidden_states, w1, topk_ids, config, slots // top_k)
    half = h.shape[1] // 2
    act = (F.silu(h[:, :half].float()) * h[:, half:].float()).to(hidden_states.dtype)
    y = _expert_gemm(act, w2, topk_ids, config, slots)
    return (y.float().view(tokens, top_k, -1) * topk_weights.float()[..., None]).sum(1).to(hidden_states.dtype)


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, inplace: bool = False, activation: str = "silu",
                  apply_router_weight_on_input: bool = False, global_num_experts: int = -1, expert_map=None,
                  quant_config: QuantConfig | None = None) -> torch.Tensor:
    dtype = quant_config.config_name(hidden_states.dtype) if quant_config is not None else None
    M = min(hidden_states.shape[0], CHUNK_SIZE)
    config = try_get_optimal_moe_config(w1.size(), w2.size(), topk_ids.shape[1], dtype, M,
                                        block_shape=None if quant_config is None else quant_config.block_shape)
    out = _forward(hidden_states, w1, w2, topk_weights, topk_ids, config)
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
        output.copy_(_forward(hidden_states, w1, w2, topk_weights, topk_ids, config))
