"""Preflight of upstream: for each GEMM of a model, upstream's own tile on a chip you do not have, the
bytes it needs there, whether it fits, and the rung the ladder lands on (``resilient-moe preflight
--kernel matmul_ogs``). The run-time path by construction: each call is ``resilient_moe.matmul_ogs``
compiling for the chip (``RESILIENT_MOE_TARGET``), so the winners it records are what a server on that
chip would find.

Upstream's host code needs a GPU (it builds routing and MX layouts with Triton kernels and reads the
device's properties), so this runs on a GPU machine; while it runs, torch reports the target chip's
SM count and, on NVIDIA targets, its capability and shared memory, since upstream's heuristics read
them (process-global: a tool, never a server). Nothing of the target launches.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ... import settings
from ...config import TileConfig
from ...dispatch import Resolution
from ...models import Gemm
from ...targets import TARGET_ENV, Chip
from ...virtual import driver as virtual_driver
from .copies import Upstream, upstream

DTYPES = ("bf16", "fp8", "mxfp4")
"""bf16 activations and weights; fp8 (e4m3) both; bf16 activations with MXFP4 weights in the layouts
upstream makes for the chip (gpt-oss in vLLM and SGLang, DeepSeek-V4's routed experts in ATOM)."""


@dataclass(frozen=True)
class UpstreamRow:
    """One GEMM at one token count: upstream's default on the chip and where the ladder landed."""

    gemm: str
    tokens: int
    dtype: str
    default: TileConfig | None
    default_bytes: int | None  # None when the default fitted and nothing reported its bytes
    limit: int
    landed: TileConfig | None
    landed_bytes: int | None
    attempts: int
    origin: str  # "ladder" or "cache"
    error: str | None = None  # why the call failed (the ladder exhausted, upstream refused the shape)

    @property
    def fits(self) -> bool:
        return self.default is not None and self.landed == self.default

    def as_dict(self) -> dict[str, Any]:
        return {
            "gemm": self.gemm, "tokens": self.tokens, "dtype": self.dtype, "limit": self.limit,
            "default": None if self.default is None else self.default.as_dict(), "default_bytes": self.default_bytes,
            "default_fits": self.fits, "landed": None if self.landed is None else self.landed.as_dict(),
            "landed_bytes": self.landed_bytes, "attempts": self.attempts, "origin": self.origin, "error": self.error,
        }


@contextlib.contextmanager
def as_chip(target: Chip) -> Iterator[None]:
    """torch's device properties and capability as ``target``'s, for upstream's heuristics."""
    real_properties, real_capability = torch.cuda.get_device_properties, torch.cuda.get_device_capability

    def properties(device: Any = None) -> Any:
        real = real_properties(torch.cuda.current_device() if device is None else device)
        seen = {name: getattr(real, name) for name in dir(real) if not name.startswith("_")}
        seen["multi_processor_count"] = target.sm_count
        if target.backend == "cuda":
            seen["shared_memory_per_block_optin"] = target.max_shared_mem
            seen["major"], seen["minor"] = divmod(int(target.arch), 10)
        return types.SimpleNamespace(**seen)

    def capability(device: Any = None) -> tuple[int, int]:
        return divmod(int(target.arch), 10) if target.backend == "cuda" else real_capability(device)

    torch.cuda.get_device_properties, torch.cuda.get_device_capability = properties, capability
    try:
        yield
    finally:
        torch.cuda.get_device_properties, torch.cuda.get_device_capability = real_properties, real_capability


def operands(up: Upstream, gemm: Gemm, tokens: int, dtype: str, target: Chip | None = None,
             seed: int = 0) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of one upstream call for ``gemm``, built with upstream's own API (v3.5: its
    ``routing``; others raise) on this GPU, MX layouts chosen for ``target`` (this GPU when None).
    Down-projections get the rows the up-projection would produce."""
    if up.flavor != "v3.5":
        raise NotImplementedError(f"preflight of upstream builds its routing with triton_kernels.routing (v3.5); this copy is {up.flavor}")
    package = up.module.__name__.rpartition(".")[0]
    routing = _import(package, "routing").routing
    public = up.module
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(tokens, gemm.experts, device="cuda", generator=g, dtype=torch.bfloat16)
    rdata, gather, scatter = routing(logits, gemm.top_k)
    rows = tokens if gemm.mode == "gather" else tokens * gemm.top_k
    x = torch.randn(rows, gemm.k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(gemm.experts, gemm.k, gemm.n, device="cuda", generator=g, dtype=torch.bfloat16) / gemm.k**0.5
    precision = None
    if dtype == "fp8":
        x = x.to(torch.float8_e4m3fn)
        w = w.mT.contiguous().mT.to(torch.float8_e4m3fn)  # upstream wants fp8 weights column-major before sm_100
        precision = public.PrecisionConfig(out_dtype=torch.bfloat16)
    elif dtype == "mxfp4":
        w, scale = mxfp4_weights(package, w, target)
        precision = public.PrecisionConfig(weight_scale=scale, flex_ctx=public.FlexCtx(rhs_data=_import(package, "numerics").InFlexData()))
    elif dtype != "bf16":
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    bias = torch.zeros(gemm.experts, gemm.n, device="cuda", dtype=torch.float32) if gemm.bias else None
    index = {"gather_indx": gather} if gemm.mode == "gather" else {"scatter_indx": scatter, "gammas": rdata.gate_scal}
    return (x, w, bias, rdata), {**index, "precision_config": precision}


def mxfp4_weights(package: str, w: torch.Tensor, target: Chip | None = None) -> tuple[Any, Any]:
    """``w`` [E, K, N] as MXFP4 values and scales along K (quantized on this GPU), in the layouts
    upstream makes for ``target`` (Hopper, Blackwell or CDNA4 swizzles; scales built for 8 warps)."""
    mxfp = _import(package, "numerics_details.mxfp")
    tensor = _import(package, "tensor")
    layout = _import(package, "tensor_details.layout")
    values, scales = mxfp.downcast_to_mxfp(w, torch.uint8, axis=1)
    chosen = contextlib.nullcontext() if target is None else virtual_driver.virtual_target(target)
    with chosen:
        value_layout, value_options = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
        scale_layout, scale_options = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)
    values = tensor.convert_layout(tensor.wrap_torch_tensor(values, dtype=tensor.FP4), value_layout, **value_options)
    scales = tensor.convert_layout(tensor.wrap_torch_tensor(scales), scale_layout, **scale_options)
    return values, scales


def _import(package: str, name: str) -> types.ModuleType:
    import importlib

    return importlib.import_module(f"{package}.{name}")


def run(gemms: Sequence[Gemm], tokens: Sequence[int], target: Chip, dtype: str) -> list[UpstreamRow]:
    """Every GEMM at every token count through ``resilient_moe.matmul_ogs`` on ``target``; winners go
    to the process cache (``RESILIENT_MOE_CACHE_DIR``), as a server's would."""
    from .matmul_ogs import resolved

    os.environ[TARGET_ENV] = target.name
    settings.reset()
    up = upstream("matmul_ogs")
    rows: list[UpstreamRow] = []
    with as_chip(target):
        for gemm in gemms:
            for count in tokens:
                args, kwargs = operands(up, gemm, count, dtype, target)
                with virtual_driver.virtual_target(target) as stand_in:
                    try:
                        resolution = resolved(up, args, kwargs)
                    except Exception as err:  # the row says what happened: preflight reports, it does not stop
                        rows.append(UpstreamRow(gemm.name, count, dtype, None, None, target.max_shared_mem, None, None, 0,
                                                "-", f"{type(err).__name__}: {err}".splitlines()[0][:300]))
                        continue
                    rows.append(_row(gemm, count, dtype, target, resolution, _matmul_bytes(stand_in.launched)))
    return rows


def _matmul_bytes(launched: list[tuple[str, int]]) -> int | None:
    seen = [shared for name, shared in launched if "matmul" in name]
    return max(seen) if seen else None


def _row(gemm: Gemm, tokens: int, dtype: str, target: Chip, resolution: Resolution | None, landed_bytes: int | None) -> UpstreamRow:
    if resolution is None:
        return UpstreamRow(gemm.name, tokens, dtype, None, None, target.max_shared_mem, None, None, 0, "-", "upstream chose no tile")
    attempts = resolution.attempts
    landed = resolution.winner if isinstance(resolution.winner, TileConfig) else None  # else the policy's torch reference
    default = attempts[0].config if attempts else landed
    default_bytes = attempts[0].required if attempts and attempts[0].required is not None else landed_bytes
    return UpstreamRow(gemm.name, tokens, dtype, default, default_bytes, target.max_shared_mem, landed,
                       landed_bytes if landed is not None else None, len(attempts), resolution.origin,
                       None if landed is not None else "no tile fits: the policy's torch reference")
