"""vLLM's Triton fused MoE (``vllm.model_executor.layers.fused_moe``).

Two entries run its ``fused_moe_kernel``, and both are covered: the function ``fused_experts`` and the
modular kernel's ``TritonExperts.apply`` (what vLLM's FusedMoE layer runs on the Triton path). Both look
their config up with ``try_get_optimal_moe_config(w1.size(), w2.size(), top_k, dtype, M, block_shape)``,
which returns the package's ``override_config`` first. Turned on by ``patch_vllm()`` in a process, or by
the ``vllm.general_plugins`` entry point vLLM loads in every process it starts (opted in with
``RESILIENT_MOE_ENGINES=vllm``). vLLM is not installable on the machines this is developed on: its
integration is written from vLLM's public source and tested against a from-scratch double.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

import torch

from .fused_moe import Engine, Layer

PACKAGE = "vllm.model_executor.layers.fused_moe"
FUSED_MOE = f"{PACKAGE}.fused_moe"
EXPERTS = (f"{PACKAGE}.experts.triton_moe", FUSED_MOE)  # where TritonExperts lives: newer layout first
OWNER = "vllm"
DEFAULT_CHUNK = 16 * 1024


@functools.cache
def engines() -> tuple[Engine, ...]:
    """vLLM's entries into its fused-MoE kernel, imported on first use (ImportError otherwise)."""
    from ..patching import original

    try:
        package = importlib.import_module(PACKAGE)
        fused_moe = importlib.import_module(FUSED_MOE)
    except ImportError as err:
        raise ImportError(f"vLLM's Triton fused MoE ({FUSED_MOE}) cannot be imported: {err}") from err
    release = version()
    own = functools.partial(_own_config, fused_moe)
    kernels = functools.partial(_kernels, fused_moe)
    found = [Engine("vllm", release, original(fused_moe, "fused_experts"), _function_layer, own,
                    package.override_config, kernels)]
    experts = _triton_experts()
    if experts is not None:
        apply = experts.__dict__["apply"]
        if getattr(apply, "__resilient_moe_front__", False):
            apply = apply.__wrapped__
        found.append(Engine("vllm", release, apply, _experts_layer, own, package.override_config, kernels,
                            empty=lambda arguments, layer: None))
    return tuple(found)


def version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(importlib.import_module("vllm"), "__version__", "unknown"))


def _triton_experts() -> type | None:
    for name in EXPERTS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found = getattr(module, "TritonExperts", None)
        if isinstance(found, type) and "apply" in found.__dict__:
            return found
    return None


def _kernels(fused_moe: Any) -> tuple[Any, ...]:
    return tuple(getattr(fused_moe, name) for name in ("fused_moe_kernel", "fused_moe_kernel_gptq_awq") if hasattr(fused_moe, name))


def _own_config(fused_moe: Any, layer: Layer) -> dict[str, Any]:
    return dict(fused_moe.try_get_optimal_moe_config(
        (layer.experts, layer.n, layer.k), layer.w2_shape, layer.top_k, layer.dtype, layer.tokens,
        block_shape=None if layer.block_shape is None else list(layer.block_shape),
    ))


def _chunk() -> int:
    """Tokens per chunk: vLLM looks its config up for ``min(tokens, VLLM_FUSED_MOE_CHUNK_SIZE)``."""
    try:
        return int(getattr(importlib.import_module("vllm.envs"), "VLLM_FUSED_MOE_CHUNK_SIZE", DEFAULT_CHUNK))
    except ImportError:
        return DEFAULT_CHUNK


def _layer(hidden: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor, quant: Any,
           inplace: bool, tokens: int) -> Layer:
    if quant is not None and hasattr(quant, "config_name"):
        dtype = quant.config_name(hidden.dtype)
    else:
        dtype = "float32" if hidden.dtype == torch.float32 else None
    block_shape = getattr(quant, "block_shape", None)
    return Layer(
        tokens=tokens, experts=w1.shape[0], n=w1.shape[1], k=w1.shape[2], top_k=topk_ids.shape[1], dtype=dtype,
        activation=str(hidden.dtype).removeprefix("torch."),
        block_shape=None if not block_shape else (int(block_shape[0]), int(block_shape[1])),
        per_channel=bool(getattr(quant, "per_out_ch_quant", False)), inplace=inplace,
        w2_shape=(w2.shape[0], w2.shape[1], w2.shape[2]),
    )


def _function_layer(arguments: dict[str, Any]) -> Layer:
    """``fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, inplace, ..., quant_config)``."""
    hidden = arguments["hidden_states"]
    return _layer(hidden, arguments["w1"], arguments["w2"], arguments["topk_ids"], arguments.get("quant_config"),
                  bool(arguments.get("inplace", False)), min(hidden.shape[0], _chunk()))


def _experts_layer(arguments: dict[str, Any]) -> Layer:
    """``TritonExperts.apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, ...)``: the
    result goes to ``output``; vLLM looks the config up for all the tokens at once."""
    hidden = arguments["hidden_states"]
    return _layer(hidden, arguments["w1"], arguments["w2"], arguments["topk_ids"],
                  getattr(arguments["self"], "quant_config", None), False, hidden.shape[0])


def patch_vllm() -> None:
    """Put ours where vLLM's entries are looked up: ``fused_experts`` in every imported module holding
    it, and ``TritonExperts.apply`` on the class. Safe to call again."""
    from ...targets import placement
    from .. import patching
    from .fused_moe import front

    placement()  # RESILIENT_MOE_SHARED_MEMORY_CAP in force before the engine's first launch
    with patching.lock:
        function, *methods = engines()
        patching.swap(OWNER, {id(function.fused_experts): (function.fused_experts, front(function))})
        experts = _triton_experts()
        for method in methods:
            if experts is not None and experts.__dict__.get("apply") is method.fused_experts:
                patching.set_attribute(OWNER, experts, "apply", front(method))


def unpatch_vllm() -> None:
    """Restore exactly what ``patch_vllm`` replaced."""
    from ..patching import restore

    restore(OWNER)


def plugin() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: with ``vllm`` in RESILIENT_MOE_ENGINES, ``patch_vllm()``
    in every process vLLM starts (its engine core and workers load general plugins before any work)."""
    from ..patching import enabled

    if enabled("vllm"):
        patch_vllm()
