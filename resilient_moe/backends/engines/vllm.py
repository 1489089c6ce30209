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

import contextlib
import functools
import importlib
import importlib.metadata
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .fused_moe import Engine, Layer

if TYPE_CHECKING:
    from ...targets import Chip
    from .configs import Tuning
    from ..binding import Launch

PACKAGE = "vllm.model_executor.layers.fused_moe"
FUSED_MOE = f"{PACKAGE}.fused_moe"
EXPERTS = (f"{PACKAGE}.experts.triton_moe", FUSED_MOE)  # where TritonExperts lives: newer layout first
OWNER = "vllm"
DEFAULT_CHUNK = 16 * 1024
NAIVE_SPARSITY = 4
"""vLLM assigns one block per (token, expert) slot when slots x 4 <= experts (its SPARSITY_FACTOR)."""


@functools.cache
def engines() -> tuple[Engine, ...]:
    """vLLM's entries into its fused-MoE kernel, imported on first use (ImportError otherwise)."""
    from ..patching import original

    fused_moe = _fused_moe()  # imports its package first
    package = importlib.import_module(PACKAGE)
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


def _fused_moe() -> Any:
    try:
        return importlib.import_module(FUSED_MOE)
    except ImportError as err:
        raise ImportError(f"vLLM's Triton fused MoE ({FUSED_MOE}) cannot be imported: {err}") from err


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


def tuning() -> Tuning:
    """vLLM's tuned-config files: ``$VLLM_TUNED_CONFIG_FOLDER/E=..,N=..,device_name=..[,dtype=..][,block_shape=[n,k]].json``,
    one file for both GEMMs, keyed by M, stamped with the Triton version as vLLM's tuner does."""
    from .configs import Tuning

    fused_moe = _fused_moe()
    return Tuning("vllm", version(), functools.partial(_own_config, fused_moe), _on_target, launches, file_names,
                  lambda directory: directory, "VLLM_TUNED_CONFIG_FOLDER", stamp="triton_version")


@contextlib.contextmanager
def _on_target(chip: Chip, limit: int, device_name: str) -> Iterator[None]:
    """vLLM's config lookup as it runs on the target: its platform's device name (the tuned file it
    would find) and whether it is ROCm (its default's stages). Its default does not read the chip's
    shared memory, so ``limit`` does not change it. Preflight is a tool process; a server never runs this."""
    fused_moe = importlib.import_module(FUSED_MOE)
    with _platform(device_name, rocm=chip.backend == "hip"):
        fused_moe.get_moe_configs.cache_clear()
        try:
            yield
        finally:
            fused_moe.get_moe_configs.cache_clear()


@contextlib.contextmanager
def _platform(device_name: str, rocm: bool) -> Iterator[None]:
    """vLLM's ``current_platform`` answering as the target would, and as it was afterwards."""
    platform = importlib.import_module("vllm.platforms").current_platform
    own = {name: platform.__dict__[name] for name in ("get_device_name", "is_rocm") if name in platform.__dict__}
    platform.get_device_name = lambda *_, **__: device_name
    platform.is_rocm = lambda: rocm
    try:
        yield
    finally:
        for name in ("get_device_name", "is_rocm"):
            if name in own:
                setattr(platform, name, own[name])
            else:
                delattr(platform, name)


def file_names(layer: Layer, device_name: str) -> list[str]:
    """The one file vLLM looks up for the layer: ``get_config_file_name(E, N, dtype, block_shape)`` with
    N = w2's K (doubled for int4 weights, as its lookup does)."""
    fused_moe = importlib.import_module(FUSED_MOE)
    n = layer.w2_shape[2] * (2 if layer.dtype == "int4_w4a16" else 1)
    with _platform(device_name, rocm=False):
        return [fused_moe.get_config_file_name(layer.experts, n, layer.dtype, None if layer.block_shape is None else list(layer.block_shape))]


def launches(layer: Layer, tile: dict[str, Any], arch: str) -> list[Launch]:
    """The two ``fused_moe_kernel`` launches (up and down GEMM) of vLLM's ``TritonExperts`` for a layer
    under a config, as ``invoke_fused_moe_triton_kernel`` makes them (vLLM's public source): EM from
    ``moe_align_block_size``'s padding, or one block per slot on the naive path of very sparse batches;
    SPLIT_K 1; BLOCK_SIZE_K within the quant block; SWAP_AB for fp8 on sm_90 at small block_m; no bias,
    no tensor descriptors. Checked against the launches the vLLM double makes (tests/test_engine_vllm.py)."""
    from .. import binding
    from . import launch

    kernel = importlib.import_module(FUSED_MOE).fused_moe_kernel

    def unknown(name: str) -> str:
        return f"vLLM {version()}'s fused_moe_kernel takes {name!r}, which resilient_moe's preflight does not know"

    block_m = tile["BLOCK_SIZE_M"]
    slots = layer.tokens * layer.top_k
    naive = slots * NAIVE_SPARSITY <= layer.experts
    block_k = tile["BLOCK_SIZE_K"] if layer.block_shape is None else min(tile["BLOCK_SIZE_K"], *layer.block_shape)
    sorted_rows = slots + layer.experts * (block_m - 1)
    if slots < layer.experts:
        sorted_rows = min(sorted_rows, slots * block_m)
    described = []
    for gemm in launch.gemms(layer):
        em = slots * block_m if naive else min(sorted_rows, gemm.rows * gemm.top_k * block_m) if gemm.rows < block_m else sorted_rows
        values = {
            **launch.shared_values(layer, {**tile, "BLOCK_SIZE_K": block_k, "SPLIT_K": 1}, gemm, em, "vLLM"),
            "b_bias_ptr": None, "stride_bbe": 0, "stride_bbn": 0, "naive_block_assignment": naive, "HAS_BIAS": False,
            "SWAP_AB": layer.dtype == "fp8_w8a8" and arch == "sm_90" and block_m < 64 and tile["BLOCK_SIZE_N"] >= 64,
            "USE_TD": False,
        }
        positional, constexprs = binding.split(kernel, values, unknown)
        described.append((kernel, tuple(positional), constexprs))
    return described
