"""The builtin backend: ``moe_matmul``, our own MoE GEMM with gather/scatter, behind the dispatcher.

The hot path of a call whose exact operands were seen before is: an emptiness check, the operand
key, one dict lookup, the launch-hook check, the output allocation (none with ``out`` in gather mode)
and the compiled kernel's own launcher (Triton's JIT front end ran once, on the first call). A new
shape in a known shape class costs one JIT launch. No compile, no file I/O, no host-device sync.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
from torch import Tensor

from ... import events, settings, virtual
from . import smem
from .launch import INTERPRETED
from .bound import BoundLaunch, hooks_installed, operand_key
from .heuristics import default_config
from .launch import KernelLaunch, Mode, Operands, build, check_operands
from ...cache import row_bucket
from ...config import TileConfig
from ...dispatch import Call, Resolution, resolve
from ...policy import Policy, active_policy
from ...reference import moe_matmul_reference
from ...routing import Routing
from ...settings import LAUNCHES
from ..timing import timed_ms
from ...targets import INTERPRETER_LOCK, Placement, compile_env_key, compiler_tag, placement, shared_limit

KERNEL = "resilient_moe.moe_matmul"
_TRITON = compiler_tag()


def moe_matmul(
    x: Tensor,
    w: Tensor,
    routing: Routing,
    mode: Mode = "gather",
    bias: Tensor | None = None,
    *,
    out: Tensor | None = None,
    policy: Policy | None = None,
) -> Tensor:
    """MoE GEMM with outer gather (``mode="gather"``) or gamma-weighted scatter (``mode="scatter"``).

    gather:  x [T, K] -> [n_rows, N], row r = x[gather_idx[r]] @ w[e] + bias[e], rows in expert order.
    scatter: x [n_rows, K] (expert order) -> [T, N], y[t] = sum_j gammas[t, j] * (row @ w[e] + bias[e]).
    ``out``: a buffer of that shape and x's dtype to write into and return, like matmul_ogs's ``y``
    (no allocation in gather mode; a static buffer for CUDA graphs). It must not overlap x.
    Nothing to compute (zero tokens, or none routed to a local expert) returns zeros without a launch.
    """
    if routing.n_rows == 0:
        return _empty(x, w, bias, routing, mode, out)
    policy = active_policy(policy)
    exact = operand_key(x, w, bias, routing, mode, out, policy.fingerprint)
    bound = LAUNCHES.get(exact)
    if bound is None or hooks_installed():
        return _launch(Operands.checked(x, w, bias, routing, mode, out), policy, exact)
    return bound(x, w, bias, routing, out)


def _serialized_if_interpreted(launch: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """In the interpreter, one launch at a time (``targets.INTERPRETER_LOCK``). Compiled kernels (a GPU's)
    are not wrapped: the lock costs them nothing, not even a branch. Every interpreted call passes
    here, since the interpreter binds no launch for the cached path."""
    if not INTERPRETED:
        return launch

    @functools.wraps(launch)
    def serialized(*args: object, **kwargs: object) -> Tensor:
        with INTERPRETER_LOCK:
            return launch(*args, **kwargs)

    return serialized


@_serialized_if_interpreted
def _launch(ops: Operands, policy: Policy, exact: tuple[object, ...]) -> Tensor:
    """Every call but a bound one, through the dispatcher: a known winner (then bound for the next call
    with the same operand key), or a climb. Kept out of ``moe_matmul`` so that the cached path is a
    few lines: between kernel launches the CPU's caches are cold, and every line that path runs costs
    a miss (splitting it out cut a cached call by about 1.5 us with the caches flushed between calls)."""
    where = placement()
    key = cache_key(ops, where.arch, policy)

    def attempt(config: TileConfig) -> tuple[Tensor, KernelLaunch, object]:
        launch = build(ops, config)
        if where.virtual is not None:
            virtual.fits(launch.kernel, launch.args, launch.constexprs, where.virtual.name)
        compiled = launch.launch()
        return launch.finish(), launch, compiled

    def reference() -> tuple[Tensor, None, None]:
        result = moe_matmul_reference(ops.x, ops.w, ops.routing, ops.mode, ops.bias)
        return (result if ops.out is None else ops.out.copy_(result)), None, None

    (result, launch, compiled), resolution = resolve(
        key, attempt, lambda: plan(ops, where.arch, key, _timer(ops, where)), policy, settings.cache(), reference
    )
    if resolution.origin == "cache" and launch is not None:
        LAUNCHES.put(exact, BoundLaunch.bind(launch, compiled))
    return result


class ShapeKey(NamedTuple):
    """The shape class a winner is shared by: everything that changes which tiles fit, or the default.
    A tuple, so its text form (``cache.key_text``) keys the file."""

    kernel: str
    mode: str
    arch: str
    triton: str
    dtype: torch.dtype
    rows: int  # the row count's power-of-two bucket
    experts: int
    k: int
    n: int
    top_k: int
    bias: bool
    w_n_contiguous: bool
    policy: str
    compile_env: str  # TRITON_HIP_USE_ASYNC_COPY on AMD chips: it changes the LDS a tile needs


def cache_key(ops: Operands, arch: str, policy: Policy) -> ShapeKey:
    return ShapeKey(
        KERNEL, ops.mode, arch, _TRITON, ops.x.dtype, row_bucket(ops.routing.n_rows), *ops.w.shape,
        ops.routing.top_k, ops.bias is not None, ops.w.stride(2) == 1, policy.fingerprint, compile_env_key(arch),
    )


def resolution(
    x: Tensor, w: Tensor, routing: Routing, mode: Mode = "gather", bias: Tensor | None = None, *,
    out: Tensor | None = None, policy: Policy | None = None,
) -> Resolution | None:
    """How a ``moe_matmul`` call with these operands was resolved in this process (its winner, the
    attempts and timings of its climb, where the winner came from); None before any such call."""
    key = cache_key(Operands.checked(x, w, bias, routing, mode, out), placement().arch, active_policy(policy))
    return settings.cache().resolutions.get(key)


def plan(ops: Operands, arch: str, key: ShapeKey, timer: Callable[[TileConfig], float] | None = None) -> Call:
    """What the dispatcher needs for a miss: the heuristic's default, event context, and what lets it
    step over a tile certain not to fit without compiling it (the kernel's lower bound of its shared
    memory, the chip's limit)."""
    n_experts, k, n = ops.w.shape
    return Call(
        kernel=f"{KERNEL}.{ops.mode}",
        key=key,
        arch=arch,
        shape={"rows": ops.routing.n_rows, "n": n, "k": k, "experts": n_experts, "top_k": ops.routing.top_k},
        default=default_config(ops.routing.n_rows, n, k, n_experts, ops.x.dtype, arch),
        fields={"dtype": str(ops.x.dtype).removeprefix("torch.")},
        shared_lower_bound=smem.lower_bound(ops.x, ops.w, arch),
        shared_limit=shared_limit(arch, ops.x.device),
        rows_per_expert=triton.cdiv(ops.routing.n_rows, n_experts),
        timer=timer,
        forms=_forms,
    )


def _forms(config: TileConfig) -> list[TileConfig]:
    """A persistent tile's other form, for ``ladder.compare_forms``: the same tile, one per program,
    which any GPU runs. Not the reverse: decode tiles ran slower persistent (docs/design.md,
    "Persistent kernel"), and timing a second form costs a compile."""
    return [config.replace(is_persistent=False)] if config.is_persistent else []


def _timer(ops: Operands, where: Placement) -> Callable[[TileConfig], float] | None:
    """Milliseconds of a launch of a tile on these operands, for ``ladder.compare`` and ``compare_forms``; None
    where a timing means nothing or must not run: the interpreter, a virtual chip, operands off the GPU,
    or a CUDA graph being captured (``timing.timed_ms``)."""
    if where.interpreter or where.virtual is not None or ops.x.device.type != "cuda":
        return None
    if torch.cuda.is_current_stream_capturing():
        return None

    def timer(config: TileConfig) -> float:
        return timed_ms(functools.partial(_launch_once, ops, config))

    return timer


def _launch_once(ops: Operands, config: TileConfig) -> None:
    build(dataclasses.replace(ops, out=None), config).run()


def _empty(x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, out: Tensor | None) -> Tensor:
    """Sentinels for a call with no rows: gather gives [0, N], scatter gives zeros [T, N]."""
    check_operands(x, w, bias, routing, mode, out)
    rows = 0 if mode == "gather" else routing.n_tokens
    events.empty_input(kernel=f"{KERNEL}.{mode}", tokens=routing.n_tokens, experts=routing.n_experts)
    if out is not None:
        return out.zero_()
    return torch.zeros((rows, w.shape[2]), dtype=x.dtype, device=x.device)

