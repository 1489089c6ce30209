"""Host side of the MoE GEMM kernel: validation, output allocation, grid and arguments.

Everything here reads shapes, dtypes and host ints only (no sync, no data-dependent op), so a
launch can be prepared from meta tensors to compile for a chip that is not present.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction
from triton.tools.ragged_tma import create_ragged_descriptor
from triton.tools.tensor_descriptor import TensorDescriptor

from ...config import TileConfig
from ...routing import Routing
from ._kernel import _moe_matmul_kernel, _moe_matmul_persistent_kernel, _slot_sum_kernel, _tile_map_kernel

Mode = Literal["gather", "scatter"]
MODES: tuple[Mode, ...] = ("gather", "scatter")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
INTERPRETED = isinstance(_moe_matmul_kernel, InterpretedFunction)
"""Whether the kernels run in Triton's interpreter: fixed when they were defined, by TRITON_INTERPRET then."""


@dataclass(frozen=True)
class KernelLaunch:
    """One ready launch: `kernel[grid](*args, **constexprs)`, then `finish()` gives the result.

    Kept apart from running so a dispatcher can compile (`kernel.warmup`) or retry with other
    constexprs while reusing the same arguments and output.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, int | bool]
    y: Tensor  # what the kernel writes: the output, or in scatter mode the rows the slot sum adds
    result: Tensor  # what the call returns: y, or in scatter mode the slot sum's output
    then: KernelLaunch | None = None  # scatter mode: the slot sum, launched by finish()
    before: KernelLaunch | None = None  # the persistent kernel: its tile map, launched first

    def launch(self) -> Any:
        """Launch through Triton's JIT (compiling on first use); returns what the JIT returns."""
        if self.grid[0] > 0:
            if self.before is not None:
                self.before.launch()
            return self.kernel[self.grid](*self.args, **self.constexprs)
        return None

    def finish(self) -> Tensor:
        """The result, once what follows the launch (scatter mode's slot sum) has been launched."""
        if self.then is not None:
            self.then.launch()
        return self.result

    def run(self) -> Tensor:
        self.launch()
        return self.finish()


def check_operands(
    x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: str, out: Tensor | None = None
) -> None:
    """Raise ValueError naming the first argument whose shape, dtype or device does not fit."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [rows, K], got shape {tuple(x.shape)}")
    if w.dim() != 3:
        raise ValueError(f"w must be 3-D [E, K, N], got shape {tuple(w.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x.dtype ({x.dtype}) must be one of {SUPPORTED_DTYPES}")
    if w.dtype != x.dtype:
        raise ValueError(f"w.dtype ({w.dtype}) must equal x.dtype ({x.dtype})")
    n_experts, k, n = w.shape
    if n_experts != routing.n_experts:
        raise ValueError(f"w.shape[0] (E={n_experts}) must equal routing.n_experts ({routing.n_experts})")
    if k != x.shape[1]:
        raise ValueError(f"w.shape[1] (K={k}) must equal x.shape[1] (K={x.shape[1]})")
    if mode == "gather" and x.shape[0] != routing.n_tokens:
        raise ValueError(
            f"x.shape[0] ({x.shape[0]}) must equal routing.n_tokens ({routing.n_tokens}) in gather mode"
        )
    if mode == "scatter" and x.shape[0] != routing.n_rows:
        raise ValueError(
            f"x.shape[0] ({x.shape[0]}) must equal routing.n_rows ({routing.n_rows}) in scatter mode"
        )
    if bias is not None:
        if tuple(bias.shape) != (n_experts, n):
            raise ValueError(f"bias.shape {tuple(bias.shape)} must be (E, N) = {(n_experts, n)}")
        if bias.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"bias.dtype ({bias.dtype}) must be one of {SUPPORTED_DTYPES}")
    if out is not None:
        rows = routing.n_rows if mode == "gather" else routing.n_tokens
        if tuple(out.shape) != (rows, n):
            raise ValueError(f"out.shape {tuple(out.shape)} must be {(rows, n)} in {mode} mode")
        if out.dtype != x.dtype:
            raise ValueError(f"out.dtype ({out.dtype}) must equal x.dtype ({x.dtype})")
    named = {"w": w, "bias": bias, "out": out, "routing.expert_offsets": routing.expert_offsets}
    for name, tensor in named.items():
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name}.device ({tensor.device}) must equal x.device ({x.device})")
    if x.device.type != "cpu" or not routing.n_rows:  # GPU runs compile; meta tensors and empty calls launch nothing
        return
    if not INTERPRETED:
        raise ValueError(
            "x is on the CPU, where Triton runs kernels only in its interpreter: move the tensors to the GPU, "
            "or set TRITON_INTERPRET=1 before importing resilient_moe (the interpreter is slow: for tests)"
        )
    if x.dtype == torch.bfloat16:
        warnings.warn(
            "bf16 in the Triton interpreter: its tl.dot computes bf16 wrongly (errors of 1e11 measured), so this "
            "result is not to be trusted; use fp16 or fp32 on the CPU, bf16 on a GPU (tile choices still hold)",
            RuntimeWarning,
            stacklevel=2,
        )


@dataclass(frozen=True)
class Operands:
    """One call's operands, validated once (``checked``): the shape-class key, the plan and every
    attempt read them without checking again."""

    x: Tensor
    w: Tensor
    bias: Tensor | None
    routing: Routing
    mode: Mode
    out: Tensor | None = None

    @classmethod
    def checked(
        cls, x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, out: Tensor | None = None
    ) -> Operands:
        check_operands(x, w, bias, routing, mode, out)
        return cls(x, w, bias, routing, mode, out)


def prepare(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    routing: Routing,
    mode: Mode,
    config: TileConfig,
    out: Tensor | None = None,
) -> KernelLaunch:
    """``build`` for operands not yet validated."""
    return build(Operands.checked(x, w, bias, routing, mode, out), config)


def build(ops: Operands, config: TileConfig) -> KernelLaunch:
    """Allocate the output (unless ``ops.out`` is given) and build the launch; shape-only, so meta
    tensors work.

    gather: x [T, K] -> out [n_rows, N] in expert order.
    scatter: x [n_rows, K] in expert order -> out [T, N], the gamma-weighted sum over each token's slots.
    fp32 follows torch.get_float32_matmul_precision(): "highest" (torch's default) means no tf32.
    """
    x, w, bias, routing, mode, out = ops.x, ops.w, ops.bias, ops.routing, ops.mode, ops.out
    n_experts, k, n = w.shape
    scatter = mode == "scatter"
    y = output_for(x, n, routing, scatter, out)
    max_m_tiles = min(triton.cdiv(routing.n_rows, config.block_m) + n_experts, routing.n_rows)
    constexprs: dict[str, int | bool] = {
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_K": config.block_k,
        "GROUP_M": config.group_m,
        "SCATTER": scatter,
        "HAS_BIAS": bias is not None,
        "EVEN_K": k % config.block_k == 0,
        "INDEX_64": any(_spans_int32(t) for t in (x, w, bias, y)),
        "IEEE_FP32": x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest",
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }
    then = _slot_sum(y, routing, out) if scatter else None
    result = y if then is None else then.result
    if config.is_persistent and tma_ready(x, w, y, scatter):
        tile_map = _tile_map(routing, config.block_m, max_m_tiles)
        programs = min(_sm_count(x), max_m_tiles * triton.cdiv(n, config.block_n))
        args = _persistent_args(x, w, bias, y, routing, scatter, config, tile_map)
        return KernelLaunch(_moe_matmul_persistent_kernel, (programs,), args, constexprs, y, result, then, tile_map)
    grid = (max_m_tiles * triton.cdiv(n, config.block_n),)
    args = (*tensor_args(x, w, bias, y, routing, scatter), *_sizes(x, w, bias, y))
    constexprs.update(EXPERTS_POW2=triton.next_power_of_2(n_experts), EVEN_N=n % config.block_n == 0)
    return KernelLaunch(_moe_matmul_kernel, grid, args, constexprs, y, result, then)


def tma_ready(x: Tensor, w: Tensor, y: Tensor, scatter: bool) -> bool:
    """Whether the persistent kernel's TMA descriptors can cover these operands: W, Y and in scatter
    mode X, each with a unit last stride and its other strides and base 16-byte aligned (otherwise the
    one-tile kernel runs the same tile)."""
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])
        for t in ((w, y, x) if scatter else (w, y))
    )


_TILE_MAP_BLOCK = 128
"""m-tiles a program of ``_tile_map_kernel`` lists."""


def _tile_map(routing: Routing, block_m: int, max_m_tiles: int) -> KernelLaunch:
    """The persistent kernel's first launch: its m-tiles as (expert, m-block), and their count."""
    offsets = routing.expert_offsets
    tile_map = torch.empty((2, max_m_tiles), dtype=torch.int32, device=offsets.device)
    count = torch.empty(1, dtype=torch.int32, device=offsets.device)
    constexprs: dict[str, int | bool] = {
        "BLOCK_M": block_m, "EXPERTS_POW2": triton.next_power_of_2(routing.n_experts), "BLOCK": _TILE_MAP_BLOCK,
        "num_warps": 4,
    }
    args = (offsets, tile_map, count, routing.n_experts, max_m_tiles, tile_map.stride(0))
    grid = (triton.cdiv(max_m_tiles, _TILE_MAP_BLOCK),)
    return KernelLaunch(_tile_map_kernel, grid, args, constexprs, tile_map, count)


def _persistent_args(
    x: Tensor, w: Tensor, bias: Tensor | None, y: Tensor, routing: Routing, scatter: bool, config: TileConfig,
    tile_map: KernelLaunch,
) -> tuple[Any, ...]:
    """``_moe_matmul_persistent_kernel``'s arguments: host-built TMA descriptors for W and for the
    ragged sides (Y's rows, and in scatter mode X's), then what ``tensor_args`` gives the other kernel."""
    n_experts, k, n = w.shape
    w_desc = TensorDescriptor(w, [n_experts, k, n], list(w.stride()), [1, config.block_k, config.block_n])
    x_desc = create_ragged_descriptor(x, [config.block_m, config.block_k]) if scatter else None
    y_desc = create_ragged_descriptor(y, [config.block_m, config.block_n])
    _, _, _, _, offsets, gather_idx, scatter_idx, gammas = tensor_args(x, w, bias, y, routing, scatter)
    bias_strides = (0, 0) if bias is None else bias.stride()
    return (
        x, x_desc, w_desc, bias, y, y_desc, offsets, gather_idx, scatter_idx, gammas, tile_map.y, tile_map.result,
        n, k, *x.stride(), *bias_strides, *y.stride(), tile_map.y.stride(0),
    )


def _sm_count(x: Tensor) -> int:
    """Programs of the persistent kernel: one per SM on a GPU; a few elsewhere (the interpreter, a
    virtual chip's compile), so that a program still loops over several tiles."""
    if x.device.type == "cuda":
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 4


def _spans_int32(tensor: Tensor | None) -> bool:
    """Whether an element offset into ``tensor`` can exceed int32 (its last element's, strides >= 0)."""
    if tensor is None:
        return False
    return sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) >= 2**31


def output_for(x: Tensor, n: int, routing: Routing, scatter: bool, out: Tensor | None) -> Tensor:
    """What the GEMM writes: [n_rows, N] in expert order, ``out`` in gather mode if given; scatter
    mode's rows are its own, which ``_slot_sum`` adds into the output."""
    return x.new_empty(routing.n_rows, n) if scatter or out is None else out


SLOT_SUM_BLOCK_N = 1024
"""Columns per program of the slot sum: 512 to 2048 ran alike (docs/design.md, "Scatter mode and slot sum")."""


def _slot_sum(y: Tensor, routing: Routing, out: Tensor | None) -> KernelLaunch:
    """Scatter mode's second launch: each token's ``top_k`` rows of ``y`` (through ``slot_to_row``)
    summed into ``out`` (or a new [T, N]). Shape-only, like ``prepare``."""
    n = y.shape[1]
    result = y.new_empty(routing.n_tokens, n) if out is None else out
    block_n = min(SLOT_SUM_BLOCK_N, triton.next_power_of_2(n))
    constexprs: dict[str, int | bool] = {
        "TOP_K": routing.top_k,
        "BLOCK_N": block_n,
        "INDEX_64": _spans_int32(y) or _spans_int32(result),
        "num_warps": 4,
    }
    args = (y, routing.slot_to_row, result, n, y.stride(0), *result.stride())
    return KernelLaunch(_slot_sum_kernel, (routing.n_tokens, triton.cdiv(n, block_n)), args, constexprs, result, result)


TENSOR_PARAMS = ("X", "W", "Bias", "Y", "ExpertOffsets", "GatherIdx", "ScatterIdx", "Gammas")
"""The kernel's first parameters; the sizes and strides follow them."""


def tensor_args(
    x: Tensor, w: Tensor, bias: Tensor | None, y: Tensor, routing: Routing, scatter: bool
) -> tuple[Tensor | None, ...]:
    if scatter:
        return (x, w, bias, y, routing.expert_offsets, None, routing.scatter_idx, routing.flat_gammas)
    return (x, w, bias, y, routing.expert_offsets, routing.gather_idx, None, None)


def _sizes(x: Tensor, w: Tensor, bias: Tensor | None, y: Tensor) -> tuple[int, ...]:
    n_experts, k, n = w.shape
    bias_strides = (0, 0) if bias is None else bias.stride()
    return (n_experts, n, k, *x.stride(), *w.stride(), *bias_strides, *y.stride())
