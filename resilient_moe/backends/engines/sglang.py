"""SGLang's Triton fused MoE (``sglang.srt.layers.moe.moe_runner.triton_utils``), 0.5.x.

Where its functions are, what one ``fused_experts`` call is, and how it is turned on: ``patch_sglang()``
in a process, or the ``sglang.srt.plugins`` entry point SGLang loads in every process it starts
(opted in with ``RESILIENT_MOE_ENGINES=sglang``). Covered: the fused path SGLang's Triton runner takes
without an all-to-all backend or LoRA (``fused_experts``); the permute path (DeepEP, LoRA) is not.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .fused_moe import Engine, Layer

if TYPE_CHECKING:
    from ...targets import Chip
    from .configs import Tuning
    from ..binding import Launch

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


def tuning() -> Tuning:
    """SGLang's tuned-config files: ``$SGLANG_MOE_CONFIG_DIR/configs/triton_X_Y_Z/``, an up-projection file
    and its down-projection twin per layer (``get_config_file_name(..., down_moe=)``), keyed by M."""
    from .configs import Tuning

    return Tuning("sglang", version(), engine().own_config, _on_target, launches, file_names, _folder,
                  "SGLANG_MOE_CONFIG_DIR", dropped=frozenset({"USE_TMA"}))


@contextlib.contextmanager
def _on_target(chip: Chip, limit: int, device_name: str) -> Iterator[None]:
    """SGLang's config lookup as it runs on the target: its device name (the tuned file it would find)
    and, where its version picks a default by the chip's shared memory, the target's. Preflight is a
    tool process; a server never runs this."""
    config = importlib.import_module(CONFIG)
    _server_settings()
    saved = {name: getattr(config, name) for name in ("get_device_name", "_get_cuda_shared_memory_per_block_optin") if hasattr(config, name)}
    config.get_device_name = lambda *_: device_name
    if "_get_cuda_shared_memory_per_block_optin" in saved:
        config._get_cuda_shared_memory_per_block_optin = lambda: None if chip.backend == "hip" else limit
    config.get_moe_configs.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
        config.get_moe_configs.cache_clear()


def _server_settings() -> None:
    """SGLang reads its server's settings in the config lookup; a tool process has none, so it states
    the defaults (``ServerArgs`` for no model), as a server does at start."""
    from sglang.srt.runtime_context import get_context, get_exec

    try:
        get_exec()
    except ValueError:
        from sglang.srt.server_args import ServerArgs

        get_context().set_server_args(ServerArgs(model_path="preflight"))


def file_names(layer: Layer, device_name: str) -> list[str]:
    """The up-projection file SGLang looks up for the layer, and its down-projection twin."""
    config = importlib.import_module(CONFIG)
    block = list(layer.block_shape) if layer.block_shape else None
    saved = config.get_device_name
    config.get_device_name = lambda *_: device_name
    try:
        return [config.get_config_file_name(layer.experts, layer.w2_shape[2], layer.dtype, block, layer.per_channel, down_moe=down)
                for down in (False, True)]
    finally:
        config.get_device_name = saved


def _folder(directory: Path) -> Path:
    import triton

    return directory / "configs" / f"triton_{triton.__version__.replace('.', '_')}"


def launches(layer: Layer, tile: dict[str, Any], arch: str) -> list[Launch]:
    """The two ``fused_moe_kernel`` launches (up and down GEMM) SGLang's fused path makes for a layer under
    a config, as the JIT specializes them, for compiling on a chip without running SGLang (preflight).
    SGLang's default server path: no TMA, no fused all-reduce or SwiGLU epilogue, no PDL before sm_90.
    tests/test_engine_sglang.py checks the result against the launches SGLang itself makes."""
    from .. import binding
    from . import launch

    kernel = importlib.import_module(KERNELS).fused_moe_kernel

    def unknown(name: str) -> str:
        return f"SGLang {version()}'s fused_moe_kernel takes {name!r}, which resilient_moe's preflight does not know"

    block_m = tile["BLOCK_SIZE_M"]
    padded = (layer.tokens * layer.top_k + (layer.experts + 1) * (block_m - 1) + 3) // 4 * 4
    pdl = arch.startswith("sm_") and int(arch[3:]) >= 90
    described = []
    for gemm in launch.gemms(layer):
        values = {
            **launch.shared_values(layer, tile, gemm, padded, "SGLang"),
            "a_desc": None, "b_desc": None, "bias_ptr": None, "add_mask_ptr": None, "stride_bias_e": 0, "stride_bias_n": 0,
            "even_Ks": gemm.k % tile["BLOCK_SIZE_K"] == 0, "c_sorted": False, "ROUTER_TOPK": layer.top_k if gemm.routed else 1,
            "swap_ab": layer.dtype == "fp8_w8a8" and arch == "sm_90" and block_m < 64 and tile["BLOCK_SIZE_N"] >= 64,
            "FUSE_ADD_TO_OUTPUT": False, "MASK_OUTPUT": False, "FUSE_SUM_ALL_REDUCE": False,
            **({"USE_GDC": True, "GDC_EARLY": gemm.rows <= 512} if pdl else {}),
        }
        positional, constexprs = binding.split(kernel, values, unknown)
        described.append((kernel, tuple(positional), constexprs))
    return described
