"""SGLang's Triton fused MoE (``sglang.srt.layers.moe.moe_runner.triton_utils``), 0.5.x.

Where its functions are, what one ``fused_experts`` call is, and how it is turned on: ``patch_sglang()``
in a process, or the ``sglang.srt.plugins`` entry point SGLang loads in every process it starts
(opted in with ``RESILIENT_MOE_ENGINES=sglang``). Covered: the fused path SGLang's Triton runner takes
without an all-to-all backend or LoRA (``fused_experts``); the permute path (DeepEP, LoRA) is not.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

import torch

from .fused_moe import Engine, Layer

PACKAGE = "sglang.srt.layers.moe.moe_runner.triton_utils"
FUSED_MOE = f"{PACKAGE}.fused_moe"
CONFIG = f"{PACKAGE}.fused_moe_triton_config"
KERNELS = "sglang.kernels.ops.moe.fused_moe_triton_kernels"
HOOK_TARGET = f"{FUSED_MOE}.fused_experts"


@functools.cache
def engine() -> Engine:
    """SGLang's fused-MoE path, imported on first use (ImportError with what is missing otherwise)."""
    from ..patching import original

    try:
        fused_moe = importlib.import_module(FUSED_MOE)
        utils = importlib.import_module(PACKAGE)
        config = importlib.import_module(CONFIG)
    except ImportError as err:
        raise ImportError(f"SGLang's Triton fused MoE ({FUSED_MOE}) cannot be imported: {err}") from err

    def own_config(layer: Layer) -> dict[str, Any]:
        chosen, _ = config.try_get_optimal_moe_config(
            (layer.experts, layer.n, layer.k), layer.w2_shape, layer.top_k, layer.dtype, layer.tokens,
            block_shape=None if layer.block_shape is None else list(layer.block_shape),
            per_channel_quant=layer.per_channel, return_down_config=True,
        )
        return dict(chosen)

    def kernels() -> tuple[Any, ...]:
        module = importlib.import_module(KERNELS)
        return tuple(getattr(module, name) for name in ("fused_moe_kernel", "fused_moe_kernel_gptq_awq") if hasattr(module, name))

    def layer(arguments: dict[str, Any]) -> Layer:
        return _layer(arguments, fused_moe, config)

    return Engine("sglang", version(), original(fused_moe, "fused_experts"), layer, own_config, utils.override_config, kernels)


def version() -> str:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(importlib.import_module("sglang"), "__version__", "unknown"))


def _layer(arguments: dict[str, Any], fused_moe: Any, config: Any) -> Layer:
    """One ``fused_experts(hidden_states, w1, w2, topk_output, moe_runner_config, ...)`` call, with the
    sizes SGLang's own lookup takes (``_prepare_fused_moe_run``): w2's K less the fp8 padding."""
    hidden: torch.Tensor = arguments["hidden_states"]
    w1: torch.Tensor = arguments["w1"]
    w2: torch.Tensor = arguments["w2"]
    topk_ids = arguments["topk_output"][1]
    flags = {name: bool(arguments.get(name, False)) for name in ("use_fp8_w8a8", "use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16")}
    block_shape = arguments.get("block_shape")
    padded = 0
    if (flags["use_fp8_w8a8"] or flags["use_int8_w8a8"]) and block_shape is None and not getattr(fused_moe, "_use_aiter", False):
        padded = int(getattr(fused_moe, "padding_size", 0))
    runner = arguments.get("moe_runner_config")
    return Layer(
        tokens=hidden.shape[0], experts=w1.shape[0], n=w1.shape[1], k=w1.shape[2], top_k=topk_ids.shape[1],
        dtype=config.get_config_dtype_str(dtype=hidden.dtype, **flags),
        activation=str(hidden.dtype).removeprefix("torch."),
        block_shape=None if block_shape is None else (int(block_shape[0]), int(block_shape[1])),
        per_channel=bool(arguments.get("per_channel_quant", False)),
        inplace=bool(getattr(runner, "inplace", False)),
        w2_shape=(w2.shape[0], w2.shape[1], w2.shape[2] - padded),
    )


def patch_sglang() -> None:
    """Put our ``fused_experts`` where SGLang's is looked up: its module (which SGLang's Triton runner
    imports from at every call) and every imported module holding it as a global. Safe to call again."""
    from ...targets import placement
    from .. import patching
    from .fused_moe import front

    placement()  # RESILIENT_MOE_SHARED_MEMORY_CAP in force before the engine's first launch
    with patching.lock:
        ours = engine()
        patching.swap("sglang", {id(ours.fused_experts): (ours.fused_experts, front(ours))})


def unpatch_sglang() -> None:
    """Restore exactly the names ``patch_sglang`` replaced."""
    from ..patching import restore

    restore("sglang")


def plugin() -> None:
    """SGLang's ``sglang.srt.plugins`` entry point: with ``sglang`` in RESILIENT_MOE_ENGINES, register our
    ``fused_experts`` with SGLang's HookRegistry as a REPLACE hook, which SGLang applies in every process."""
    from ..patching import enabled

    if not enabled("sglang"):
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from .fused_moe import front

    HookRegistry.register(HOOK_TARGET, front(engine()), HookType.REPLACE)


def launches(layer: Layer, tile: dict[str, Any], arch: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """The two ``fused_moe_kernel`` launches (up and down GEMM) SGLang's fused path makes for a layer under
    a config, as the JIT specializes them, for compiling on a chip without running SGLang (preflight).
    SGLang's default server path: no TMA, no fused all-reduce or SwiGLU epilogue, no PDL before sm_90.
    The arguments are matched to the kernel's parameters by name, so a renamed or added parameter
    without a default is an error naming it; tests/test_engine_sglang.py checks the result against
    the launches SGLang itself makes."""
    import triton
    import triton.language as tl

    from .fused_moe import split_launch

    kernel = importlib.import_module(KERNELS).fused_moe_kernel

    def unknown(name: str) -> str:
        return f"SGLang {version()}'s fused_moe_kernel takes {name!r}, which resilient_moe's preflight does not know"

    eight_bit = layer.dtype in ("fp8_w8a8", "int8_w8a8")
    if layer.dtype not in (None, "float32", "fp8_w8a8", "int8_w8a8"):
        raise NotImplementedError(f"preflight of SGLang's {layer.dtype} path (fused_moe_kernel_gptq_awq) is not described yet")
    operand = {"fp8_w8a8": torch.float8_e4m3fn, "int8_w8a8": torch.int8}.get(layer.dtype or "", getattr(torch, layer.activation))
    out = getattr(torch, layer.activation)
    block_m = tile["BLOCK_SIZE_M"]
    rows = layer.tokens * layer.top_k
    padded = (rows + (layer.experts + 1) * (block_m - 1) + 3) // 4 * 4
    group_n, group_k = layer.block_shape or (0, 0)
    sm90 = arch == "sm_90"
    pdl = arch.startswith("sm_") and int(arch[3:]) >= 90

    def pointer(dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(1, dtype=dtype)  # the JIT sees a pointer's dtype and alignment only

    def gemm(n: int, k: int, tokens: int, routed: bool, top_k: int) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        scale_a = scale_b = None
        scale_strides = (0, 0, 0, 0, 0)
        if eight_bit:
            scale_a, scale_b = pointer(torch.float32), pointer(torch.float32)
            if layer.block_shape is not None:
                ks, ns = triton.cdiv(k, group_k), triton.cdiv(n, group_n)
                scale_strides = (ks, 1, ns * ks, 1, ks)  # a_scale [tokens, k/gk], b_scale [E, n/gn, k/gk]
        values = {
            "a_ptr": pointer(operand), "a_desc": None, "b_ptr": pointer(operand), "b_desc": None, "bias_ptr": None,
            "c_ptr": pointer(out), "a_scale_ptr": scale_a, "b_scale_ptr": scale_b,
            "topk_weights_ptr": pointer(torch.float32), "sorted_token_ids_ptr": pointer(torch.int32),
            "expert_ids_ptr": pointer(torch.int32), "num_tokens_post_padded_ptr": pointer(torch.int32),
            "add_mask_ptr": None, "N": n, "K": k, "EM": _specialized(padded), "num_valid_tokens": _specialized(tokens * top_k),
            "stride_am": k, "stride_ak": 1, "stride_be": n * k, "stride_bk": 1, "stride_bn": k,
            "stride_bias_e": 0, "stride_bias_n": 0, "stride_cm": n, "stride_cn": 1,
            "stride_asm": scale_strides[0], "stride_ask": scale_strides[1], "stride_bse": scale_strides[2],
            "stride_bsk": scale_strides[3], "stride_bsn": scale_strides[4], "group_n": group_n, "group_k": group_k,
            "MUL_ROUTED_WEIGHT": routed, "top_k": top_k, "compute_type": tl.bfloat16 if out == torch.bfloat16 else tl.float16,
            "use_fp8_w8a8": layer.dtype == "fp8_w8a8", "use_int8_w8a8": layer.dtype == "int8_w8a8",
            "use_int8_w8a16": False, "per_channel_quant": layer.per_channel, "even_Ks": k % tile["BLOCK_SIZE_K"] == 0,
            "c_sorted": False, "ROUTER_TOPK": layer.top_k if routed else 1,
            "swap_ab": layer.dtype == "fp8_w8a8" and sm90 and block_m < 64 and tile["BLOCK_SIZE_N"] >= 64,
            "FUSE_ADD_TO_OUTPUT": False, "MASK_OUTPUT": False, "FUSE_SUM_ALL_REDUCE": False,
            **({"USE_GDC": True, "GDC_EARLY": tokens <= 512} if pdl else {}),
            **{name: value for name, value in tile.items() if name.isupper() and name != "USE_TMA"},
        }
        values.update((name, tile[name]) for name in ("num_warps", "num_stages") if name in tile)
        positional, constexprs = split_launch(kernel, values, unknown)
        return kernel, tuple(positional), constexprs

    return [gemm(layer.n, layer.k, layer.tokens, False, layer.top_k),
            gemm(layer.w2_shape[1], layer.w2_shape[2], rows, True, 1)]


def _specialized(value: int) -> int:
    """An integer argument as the JIT specializes it (1, a multiple of 16, or neither), so the M rows of
    one config share one compile: their token counts differ, not their code."""
    return value if value == 1 or value >= 2**31 else 16 if value % 16 == 0 else 17
