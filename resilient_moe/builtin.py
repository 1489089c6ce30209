"""The builtin backend: ``moe_matmul``, our own MoE GEMM with gather/scatter, behind the dispatcher.

The hot path of a call whose exact operands were seen before is: an emptiness check, the operand
key, one dict lookup, the launch-hook check, the output allocation (none with ``out`` in gather mode)
and the compiled kernel's own launcher (Triton's JIT front end ran once, on the first call). A new
shape in a known shape class costs one JIT launch. No compile, no file I/O, no host-device sync.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import triton
from torch import Tensor

from . import events, virtual
from ._moe_details import smem
from ._moe_details.launch import (
    BoundLaunch,
    Mode,
    check_operands,
    default_config,
    hooks_installed,
    operand_key,
    prepare,
)
from .cache import REFERENCE, Key, default_cache, row_bucket
from .config import TileConfig
from .dispatch import Call, resolve
from .policy import Policy, active_policy
from .reference import moe_matmul_reference
from .routing import Routing
from .targets import Placement, compile_env, placement, shared_limit

KERNEL = "resilient_moe.moe_matmul"
_TRITON = f"triton-{triton.__version__}"


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
    bound = default_cache().derived.get(exact)
    if bound is None or hooks_installed():
        return _launch(x, w, bias, routing, mode, out, policy, exact)
    return bound(x, w, bias, routing, out)


def _launch(
    x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, out: Tensor | None, policy: Policy,
    exact: tuple[object, ...],
) -> Tensor:
    """Every call but a cached one: a JIT launch of the winner (bound for the next call with the same
    operand key), or a resolution. Kept out of ``moe_matmul`` so that the cached path is a few lines:
    between kernel launches the CPU's caches are cold, and every line that path runs costs a miss
    (splitting it out cut a cached call by about 1.5 us with the caches flushed between calls)."""
    cache = default_cache()
    where = placement()
    key = cache_key(x, w, bias, routing, mode, where.arch, policy)
    winner = cache.lookup(key)
    if isinstance(winner, TileConfig):
        launch = prepare(x, w, bias, routing, mode, winner, out)
        cache.derive(exact, BoundLaunch.bind(launch, launch.launch()))
        return launch.finish()

    def reference() -> Tensor:
        result = moe_matmul_reference(x, w, routing, mode, bias)
        return result if out is None else out.copy_(result)

    if winner == REFERENCE:
        return reference()

    def attempt(config: TileConfig) -> Tensor:
        launch = prepare(x, w, bias, routing, mode, config, out)
        if where.virtual is not None:
            virtual.fits(launch.kernel, launch.args, launch.constexprs, where.virtual.name)
        return launch.run()

    call = plan(x, w, bias, routing, mode, where.arch, key, out, _timer(x, w, bias, routing, mode, where))
    return resolve(call, attempt, policy, cache, reference)


def cache_key(
    x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, arch: str, policy: Policy
) -> Key:
    """The shape class a winner is shared by: everything that changes which tiles fit, or the default."""
    return (
        KERNEL, mode, arch, _TRITON, x.dtype, row_bucket(routing.n_rows), *w.shape, routing.top_k,
        bias is not None, w.stride(2) == 1, policy.fingerprint,
        *(f"{name}={value}" for name, value in compile_env() if arch.startswith("gfx")),
    )


def plan(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    routing: Routing,
    mode: Mode,
    arch: str,
    key: Key,
    out: Tensor | None = None,
    timer: Callable[[TileConfig], float] | None = None,
) -> Call:
    """What the dispatcher needs for a miss: validated operands, the heuristic's default, event context,
    and what lets it step over a tile certain not to fit without compiling it (the kernel's lower bound
    of its shared memory, the chip's limit)."""
    check_operands(x, w, bias, routing, mode, out)
    n_experts, k, n = w.shape
    return Call(
        kernel=f"{KERNEL}.{mode}",
        key=key,
        arch=arch,
        shape={"rows": routing.n_rows, "n": n, "k": k, "experts": n_experts, "top_k": routing.top_k},
        default=default_config(routing.n_rows, n, k, n_experts, x.dtype, arch),
        fields={"dtype": str(x.dtype).removeprefix("torch.")},
        shared_lower_bound=smem.lower_bound(x, w, arch),
        shared_limit=shared_limit(arch, x.device),
        rows_per_expert=triton.cdiv(routing.n_rows, n_experts),
        timer=timer,
        forms=_forms,
    )


def _forms(config: TileConfig) -> list[TileConfig]:
    """A persistent tile's other form, for ``ladder.compare_forms``: the same tile, one per program,
    which any GPU runs. Not the reverse: decode tiles ran slower persistent (docs/design.md,
    "Persistent kernel"), and timing a second form costs a compile."""
    return [config.replace(is_persistent=False)] if config.is_persistent else []


def _timer(
    x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, where: Placement
) -> Callable[[TileConfig], float] | None:
    """Milliseconds of a launch of a tile on these operands, for ``ladder.compare`` and ``compare_forms``; None
    where a timing means nothing or must not run: the interpreter, a virtual chip, operands off the GPU,
    or a CUDA graph being captured. CUDA events around plain calls: no cache-flush buffer to allocate
    (triton's do_bench takes 256 MB), so a server whose memory is spoken for can still recover."""
    if where.interpreter or where.virtual is not None or x.device.type != "cuda":
        return None
    if torch.cuda.is_current_stream_capturing():
        return None

    def timer(config: TileConfig) -> float:
        run = functools.partial(_launch_once, x, w, bias, routing, mode, config)
        run()  # compiles; its result is dropped
        estimate = _elapsed_ms(run, 1)
        return _elapsed_ms(run, max(3, min(100, int(TIMED_MS / max(estimate, 1e-3)))))

    return timer


TIMED_MS = 10.0
"""About how long one timing round of a comparison runs a tile (at least 3 launches, at most 100)."""


def _launch_once(x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, config: TileConfig) -> None:
    prepare(x, w, bias, routing, mode, config).run()


def _elapsed_ms(run: Callable[[], None], times: int) -> float:
    """Mean device time of ``run`` over ``times`` back-to-back calls (synchronizes once)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(times):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / times


def _empty(x: Tensor, w: Tensor, bias: Tensor | None, routing: Routing, mode: Mode, out: Tensor | None) -> Tensor:
    """Sentinels for a call with no rows: gather gives [0, N], scatter gives zeros [T, N]."""
    check_operands(x, w, bias, routing, mode, out)
    rows = 0 if mode == "gather" else routing.n_tokens
    events.empty_input(kernel=f"{KERNEL}.{mode}", tokens=routing.n_tokens, experts=routing.n_experts)
    if out is not None:
        return out.zero_()
    return torch.zeros((rows, w.shape[2]), dtype=x.dtype, device=x.device)

