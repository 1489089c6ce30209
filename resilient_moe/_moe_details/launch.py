"""Host side of the MoE GEMM kernel: validation, output allocation, grid and arguments.

Everything here reads shapes, dtypes and host ints only (no sync, no data-dependent op), so a
launch can be prepared from meta tensors to compile for a chip that is not present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import triton
from torch import Tensor
from triton import knobs
from triton.compiler.compiler import CompiledKernel
from triton.knobs import HookChain
from triton.runtime.driver import driver
from triton.tools.ragged_tma import create_ragged_descriptor
from triton.tools.tensor_descriptor import TensorDescriptor

from ..config import TileConfig
from ..routing import Routing
from ._kernel import _moe_matmul_kernel, _moe_matmul_persistent_kernel, _slot_sum_kernel, _tile_map_kernel

Mode = Literal["gather", "scatter"]
MODES: tuple[Mode, ...] = ("gather", "scatter")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
_LARGE_SMEM_NVIDIA: frozenset[str] = frozenset({"sm_90", "sm_90a", "sm_100", "sm_100a"})
"""NVIDIA archs with about 228 KiB of shared memory per block; others get smaller first guesses."""
_PERSISTENT_FIRST: frozenset[str] = frozenset({"sm_90", "sm_90a"})
"""Where prefill tiles start persistent: it beat the one-tile kernel there (docs/design.md, "Persistent kernel")."""


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


@dataclass(frozen=True)
class BoundLaunch:
    """A launch with Triton's JIT front end done once: argument binding, specialization and the
    compiled-kernel lookup cost more host time than the launch itself at decode sizes.

    Valid only for operands whose ``operand_key`` equals the key it was bound under: that key holds
    every value that decides validation, output shape, grid and Triton's specialization. A call
    allocates the output (unless given ``out``) and hands the arguments to the compiled kernel's own
    launcher; in scatter mode the slot sum follows, bound the same way.
    """

    launcher: Any
    function: Any
    metadata: Any
    stream_of: Callable[[int], int]
    device: int  # x's device index, part of the operand key: the stream is looked up without asking x
    grid: int
    n: int
    scatter: bool
    tail: tuple[Any, ...]  # sizes and strides (fixed by the operand key), then the constexpr values
    slot_sum: BoundSum | None  # scatter mode's second kernel

    @classmethod
    def bind(cls, launch: KernelLaunch, compiled: Any) -> BoundLaunch | None:
        """The bound form of a launch the JIT just ran; None where there is nothing to bind: the
        interpreter, or the persistent kernel, whose TMA descriptors hold this call's pointers (a
        prefill launch, where the JIT's host time hides behind milliseconds of GPU work)."""
        if not isinstance(compiled, CompiledKernel) or launch.before is not None:
            return None
        return cls(
            launcher=compiled.run,
            function=compiled.function,
            metadata=compiled.packed_metadata,
            stream_of=driver.active.get_current_stream,
            device=launch.args[0].get_device(),
            grid=launch.grid[0],
            n=launch.y.shape[1],
            scatter=bool(launch.constexprs["SCATTER"]),
            tail=_tail(launch, len(_TENSOR_PARAMS)),
            slot_sum=None if launch.then is None else BoundSum.bind(launch.then),
        )

    def __call__(self, x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, out: Tensor | None) -> Tensor:
        if self.scatter:
            stream = self.stream_of(self.device)
            y = _output(x, self.n, routing, True, None)
            self.launcher(
                self.grid, 1, 1, stream, self.function, self.metadata, None, None, None,
                *_tensors(x, w, bias, y, routing, True), *self.tail,
            )
            result = x.new_empty(routing.n_tokens, self.n) if out is None else out
            self.slot_sum(stream, y, routing.slot_to_row, result)
            return result
        # gather, the decode path: written out, since each helper call is a measurable share of the launch
        y = x.new_empty(routing.n_rows, self.n) if out is None else out
        self.launcher(
            self.grid, 1, 1, self.stream_of(self.device), self.function, self.metadata, None, None, None,
            x, w, bias, y, routing.expert_offsets, routing.gather_idx, None, None, *self.tail,
        )
        return y


@dataclass(frozen=True)
class BoundSum:
    """Scatter mode's slot sum bound like the GEMM before it: its grid, sizes and constexprs are fixed
    by the same operand key (token count, top_k, N, the output's strides)."""

    launcher: Any
    function: Any
    metadata: Any
    grid: tuple[int, int]
    tail: tuple[Any, ...]

    @classmethod
    def bind(cls, launch: KernelLaunch) -> BoundSum:
        """Compiled through the JIT's own specialization (a cache hit once it has run), not launched."""
        compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.constexprs)
        return cls(compiled.run, compiled.function, compiled.packed_metadata, launch.grid, _tail(launch, 3))

    def __call__(self, stream: int, y: Tensor, slot_to_row: Tensor, out: Tensor) -> None:
        self.launcher(
            *self.grid, 1, stream, self.function, self.metadata, None, None, None, y, slot_to_row, out, *self.tail
        )


def _tail(launch: KernelLaunch, tensors: int) -> tuple[Any, ...]:
    """A launch's arguments after its first ``tensors`` tensors, then its constexpr values in kernel order."""
    names = launch.kernel.arg_names[len(launch.args):]
    return (*launch.args[tensors:], *(launch.constexprs[name] for name in names))


def hooks_installed() -> bool:
    """Whether a profiler hooks Triton launches; bound launches skip hooks, so they step aside then.
    On every cached call, so the usual case (two HookChains) reads two attributes and nothing more."""
    runtime = knobs.runtime
    try:
        return bool(runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls)
    except AttributeError:  # a plain callable (or None) set in place of a chain
        return _hooked(runtime.launch_enter_hook) or _hooked(runtime.launch_exit_hook)


def _hooked(hook: Any) -> bool:
    """A HookChain with callbacks, or a plain callable set in its place."""
    return bool(hook.calls) if isinstance(hook, HookChain) else hook is not None


def operand_key(
    x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, out: Tensor | None = None, prefix: Any = None
) -> tuple[Any, ...]:
    """Everything ``prepare`` reads from the operands, exactly: equal keys mean the same validation
    outcome, output shape, grid and Triton specialization (dtypes, int values, pointer alignment).
    ``prefix`` leads the key (the caller's policy fingerprint), so a cached call builds one flat tuple."""
    return (
        prefix, mode, routing.launch_layout,
        x.dtype, x.shape, x.stride(), x.data_ptr() % 16, x.get_device(),
        w.dtype, w.shape, w.stride(), w.data_ptr() % 16, w.get_device(),
        None if bias is None else (bias.dtype, bias.shape, bias.stride(), bias.data_ptr() % 16, bias.get_device()),
        None if out is None else (out.dtype, out.shape, out.stride(), out.data_ptr() % 16, out.get_device()),
        x.dtype is torch.float32 and torch.get_float32_matmul_precision(),
    )


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


def prepare(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    routing: Routing,
    mode: Mode,
    config: TileConfig,
    out: Tensor | None = None,
) -> KernelLaunch:
    """Validate, allocate the output (unless ``out`` is given) and build the launch; shape-only, so
    meta tensors work.

    gather: x [T, K] -> out [n_rows, N] in expert order.
    scatter: x [n_rows, K] in expert order -> out [T, N], the gamma-weighted sum over each token's slots.
    fp32 follows torch.get_float32_matmul_precision(): "highest" (torch's default) means no tf32.
    """
    check_operands(x, w, bias, routing, mode, out)
    n_experts, k, n = w.shape
    scatter = mode == "scatter"
    y = _output(x, n, routing, scatter, out)
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
    args = (*_tensors(x, w, bias, y, routing, scatter), *_sizes(x, w, bias, y))
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
    ragged sides (Y's rows, and in scatter mode X's), then what ``_tensors`` gives the other kernel."""
    n_experts, k, n = w.shape
    w_desc = TensorDescriptor(w, [n_experts, k, n], list(w.stride()), [1, config.block_k, config.block_n])
    x_desc = create_ragged_descriptor(x, [config.block_m, config.block_k]) if scatter else None
    y_desc = create_ragged_descriptor(y, [config.block_m, config.block_n])
    _, _, _, _, offsets, gather_idx, scatter_idx, gammas = _tensors(x, w, bias, y, routing, scatter)
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


def _output(x: Tensor, n: int, routing: Routing, scatter: bool, out: Tensor | None) -> Tensor:
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


_TENSOR_PARAMS = ("X", "W", "Bias", "Y", "ExpertOffsets", "GatherIdx", "ScatterIdx", "Gammas")
"""The kernel's first parameters; the sizes and strides follow them."""


def _tensors(
    x: Tensor, w: Tensor, bias: Tensor | None, y: Tensor, routing: Routing, scatter: bool
) -> tuple[Tensor | None, ...]:
    if scatter:
        return (x, w, bias, y, routing.expert_offsets, None, routing.scatter_idx, routing.flat_gammas)
    return (x, w, bias, y, routing.expert_offsets, routing.gather_idx, None, None)


def _sizes(x: Tensor, w: Tensor, bias: Tensor | None, y: Tensor) -> tuple[int, ...]:
    n_experts, k, n = w.shape
    bias_strides = (0, 0) if bias is None else bias.stride()
    return (n_experts, n, k, *x.stride(), *w.stride(), *bias_strides, *y.stride())


def default_config(
    n_rows: int, n: int, k: int, n_experts: int, dtype: torch.dtype, arch: str | None
) -> TileConfig:
    """First guess for Hopper-class GPUs; the dispatcher downgrades it if it does not fit.

    block_m follows the mean rows per expert so small batches do not pad tiles with idle rows.
    128x256x64 at 4 stages (192 KiB of shared memory) was the fastest one-tile bf16 prefill tile on an
    H200. On sm_90, 2-byte prefill tiles start persistent at 3 stages (4 leave no room for the
    epilogue's TMA buffer: 213 KiB at 3), faster than one tile per program there (docs/design.md,
    "Persistent kernel"); decode tiles stay one per program.
    """
    rows_per_expert = triton.cdiv(n_rows, max(n_experts, 1))
    block_m = min(128, max(16, triton.next_power_of_2(rows_per_expert)))
    block_n = 256 if block_m == 128 and n >= 2048 else 128
    block_n = min(block_n, max(16, triton.next_power_of_2(n)))
    block_k = 32 if dtype == torch.float32 else 64
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    persistent = arch in _PERSISTENT_FIRST and block_m == 128 and dtype != torch.float32
    num_stages = 3 if persistent else 4
    if arch is not None and arch.startswith("gfx"):
        num_stages = 2
    elif arch is not None and arch not in _LARGE_SMEM_NVIDIA:
        block_n = min(block_n, 128)
        num_stages = 3
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return TileConfig(block_m, block_n, block_k, group_m=8, num_warps=num_warps, num_stages=num_stages,
                      is_persistent=persistent)
