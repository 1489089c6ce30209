"""Running SGLang's real Triton fused-MoE path on a CPU, in the Triton interpreter: the few things a CPU
lacks, written from scratch for the tests (SGLang's own kernels, config lookup and code run unchanged).

- ``sgl_moe_align_block_size``: SGLang calls the ``sgl_kernel`` wheel's CUDA op; this stand-in fills
  the same buffers in torch (tokens sorted by expert, each expert padded to block_size, one expert id
  per block, -1 past the end).
- ``silu_and_mul`` and per-tensor ``scaled_fp8_quant``: SGLang's CUDA helpers; the same math in torch.
- the two fused-experts torch ops are registered for the CUDA key only; here their Python bodies are
  registered for the CPU key too.
- ``get_device_name``: a CPU has none; the tests name the chip whose tuned files SGLang would look up.
- a server states its settings and its tensor-parallel group (one rank here) before any MoE call;
- PDL (``griddepcontrol``) is off: the interpreter has no such instruction.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from typing import Any

import torch
import torch.nn.functional as F

FUSED_MOE = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe"
DEVICE_NAME = "NVIDIA GeForce RTX 4090"

_ready = False
_library: Any = None


def available() -> bool:
    return importlib.util.find_spec("sglang") is not None


def align_block_size_stand_in(
    topk_ids: torch.Tensor, buckets: int, block_size: int, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
    tokens_post_pad: torch.Tensor, cumsum: torch.Tensor, *_: Any, **__: Any,
) -> None:
    """Stand-in for sgl_kernel's moe_align_block_size (``buckets`` = experts + 1; ids are valid here)."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    experts = buckets - 1
    counts = torch.bincount(flat, minlength=experts)
    padded = (counts + block_size - 1) // block_size * block_size
    sorted_ids.fill_(flat.numel())
    expert_ids.fill_(-1)
    offset = 0
    for expert in range(experts):
        rows = (flat == expert).nonzero(as_tuple=True)[0]
        sorted_ids[offset:offset + rows.numel()] = rows.to(sorted_ids.dtype)
        expert_ids[offset // block_size:(offset + int(padded[expert])) // block_size] = expert
        offset += int(padded[expert])
    tokens_post_pad.fill_(offset)
    cumsum.zero_()


def silu_and_mul_stand_in(x: torch.Tensor, out: torch.Tensor, **_: Any) -> None:
    half = x.shape[-1] // 2
    out.copy_(F.silu(x[..., :half].float()).to(x.dtype) * x[..., half:])


def scaled_fp8_quant_stand_in(
    x: torch.Tensor, scale: torch.Tensor | None = None, use_per_token_if_dynamic: bool = False, **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor fp8 activation quantization (dynamic when no scale is given), as sgl_kernel's op does."""
    if use_per_token_if_dynamic:
        raise NotImplementedError("per-token fp8 activation quantization has no CPU stand-in")
    top = torch.finfo(torch.float8_e4m3fn).max
    if scale is None:
        scale = (x.abs().amax().float() / top).clamp(min=1e-12).reshape(1)
    return (x.float() / scale).clamp(-top, top).to(torch.float8_e4m3fn), scale


def prepare() -> Any:
    """Import SGLang's fused-MoE modules and set the CPU stand-ins up (once); returns the module."""
    global _ready, _library
    fused_moe = importlib.import_module(FUSED_MOE)
    if _ready:
        return fused_moe
    from sglang.srt.runtime_context import get_context, get_parallel
    from sglang.srt.server_args import ServerArgs

    get_context().set_server_args(ServerArgs(model_path="dummy"))
    get_parallel().override_permanently(tp_group=types.SimpleNamespace(world_size=1))  # one rank
    align = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size")
    align.sgl_moe_align_block_size = align_block_size_stand_in
    fused_moe.silu_and_mul = silu_and_mul_stand_in
    kernels = importlib.import_module("sglang.kernels.ops.moe.fused_moe_triton_kernels")
    kernels.is_arch_support_pdl = lambda: False
    kernels.scaled_fp8_quant = scaled_fp8_quant_stand_in
    fused_moe.is_arch_support_pdl = lambda: False
    config = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config")
    config.get_device_name = lambda *_: DEVICE_NAME
    _library = torch.library.Library("sglang", "IMPL")
    for name in ("outplace_fused_experts", "inplace_fused_experts"):
        _library.impl(name, getattr(fused_moe, name).__wrapped__, "CPU")
    _ready = True
    return fused_moe
