"""Bound launches: a winner's compiled kernel launched through its own launcher, past Triton's JIT front
end, for operands whose exact layout was seen before (the builtin's cached-call hot path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from triton import knobs
from triton.compiler.compiler import CompiledKernel
from triton.knobs import HookChain
from triton.runtime.driver import driver

from ...routing import Routing
from .launch import TENSOR_PARAMS, KernelLaunch, Mode, output_for, tensor_args

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
            tail=_tail(launch, len(TENSOR_PARAMS)),
            slot_sum=None if launch.then is None else BoundSum.bind(launch.then),
        )

    def __call__(self, x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, out: Tensor | None) -> Tensor:
        if self.scatter:
            stream = self.stream_of(self.device)
            y = output_for(x, self.n, routing, True, None)
            self.launcher(
                self.grid, 1, 1, stream, self.function, self.metadata, None, None, None,
                *tensor_args(x, w, bias, y, routing, True), *self.tail,
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
