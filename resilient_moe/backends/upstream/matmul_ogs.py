"""``matmul_ogs`` and ``matmul``: upstream's public functions, same arguments and result, but a tile
that does not fit the chip steps down the ladder instead of failing. A call only describes itself to
the dispatcher (its key, upstream's own default tile, an attempt under a given tile); dispatch does the rest."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ... import events, settings
from ...cache import row_bucket
from ...config import TILE_FIELDS, TileConfig
from ...dispatch import Call, Resolution, resolve
from ...policy import active_policy
from ...targets import Placement, compile_env_key, compiler_tag, placement
from ...virtual import virtual_target
from . import formats
from .copies import LEARN, Upstream, _Learn, _Learned, _tiled, copy_named, upstream, upstream_or_none

_TRITON = compiler_tag()


@dataclass(frozen=True)
class _Names:
    """Parameter names of one public function (the operands, the output buffer, the routing)."""

    x: str
    w: str
    out: str
    routing: str


_NAMES = {
    "matmul_ogs": _Names("x", "w", "y", "routing_data"),
    "matmul": _Names("a", "b", "c", "a_ragged_metadata"),
}


def matmul_ogs(*args: Any, **kwargs: Any) -> Any:
    """Upstream ``triton_kernels.matmul_ogs.matmul_ogs`` (v3.5, v3.6), with the tiling fallback.

    Same arguments and result as the installed upstream function. A call with no rows to compute
    returns zeros of the output's shape (or zero-fills ``y``) without calling upstream."""
    return _call(upstream("matmul_ogs"), args, kwargs)


matmul_ogs.__resilient_moe_front__ = True  # type: ignore[attr-defined]


def matmul(*args: Any, **kwargs: Any) -> Any:
    """Upstream ``triton_kernels.matmul.matmul`` (v3.7 and later), with the tiling fallback.

    Same arguments and result as the installed upstream function. A call with no rows to compute
    returns zeros of the output's shape (or zero-fills ``c``) without calling upstream."""
    return _call(upstream("matmul"), args, kwargs)


matmul.__resilient_moe_front__ = True  # type: ignore[attr-defined]


def front(up: Upstream) -> Callable[..., Any]:
    """Our function in place of one copy's (``matmul_ogs`` / ``matmul`` for the standalone package)."""
    if up is upstream_or_none():
        return matmul if up.entry == "matmul" else matmul_ogs
    name = up.module.__name__

    @functools.wraps(up.fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _call(copy_named(name), args, kwargs)

    wrapper.__resilient_moe_front__ = True  # type: ignore[attr-defined]
    return wrapper


class UpstreamKey(NamedTuple):
    """The shape class an upstream winner is shared by (its text form keys the cache file)."""

    kernel: str
    arch: str
    triton: str
    source: str  # the copy (standalone, vLLM's, SGLang's) and a hash of its matmul code
    x: str  # dtype and layout class of each operand
    w: str
    rows: int  # the row count's power-of-two bucket
    n: int
    k: int
    experts: int
    gather: bool
    scatter: bool
    precision: str  # the precision config's shape: scales, their layouts, flex, out dtype
    activation: str  # the fused activation (SwiGLU halves N)
    out: str  # the given output buffer's dtype, if any
    constraints: str  # upstream's opt-flags constraints in force: a winner never crosses them
    compile_env: str  # TRITON_HIP_USE_ASYNC_COPY on AMD chips: one LDS buffer more per tile with it
    policy: str


def _call(up: Upstream, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return run(up, args, kwargs)[0]


def resolved(up: Upstream, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Resolution | None:
    """Run one call of copy ``up`` and say how its tile was settled (None: no tile to choose)."""
    return run(up, args, kwargs)[1]


def run(up: Upstream, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Resolution | None]:
    """One call of copy ``up`` with the tiling fallback: its result, and how its tile was settled."""
    entry = up.entry
    names = _NAMES[entry]
    x, w = _argument(up, names.x, args, kwargs), _argument(up, names.w, args, kwargs)
    if x is None or w is None:
        return up.fn(*args, **kwargs), None  # upstream's own error for missing operands
    gather, scatter = _argument(up, "gather_indx", args, kwargs), _argument(up, "scatter_indx", args, kwargs)
    k, n = w.shape[-2], w.shape[-1]
    experts = w.shape[0] if len(w.shape) == 3 else 1
    rows = x.shape[-2] if gather is None else _length(gather)
    if rows == 0 or n == 0:
        given = up.signature.bind(*args, **kwargs).arguments
        return _empty(entry, given, names, x, rows, n, experts, scatter), None

    policy = active_policy()
    where = placement()
    constraints = up.constraints()
    precision_config = _argument(up, "precision_config", args, kwargs)
    key = UpstreamKey(
        f"triton_kernels.{entry}", where.arch, _TRITON, up.source, formats.operand(x), formats.operand(w),
        row_bucket(rows), n, k, experts, gather is not None, scatter is not None, formats.precision(precision_config),
        formats.activation(_argument(up, "fused_activation", args, kwargs)),
        formats.operand(_argument(up, names.out, args, kwargs)), formats.constraints_text(constraints),
        compile_env_key(where.arch), policy.fingerprint,
    )

    def attempt(config: TileConfig | _Learn) -> Any:
        with _on_target(where):
            return _tiled(config, up.fn, args, kwargs)

    def describe() -> Call:
        try:
            finished = attempt(LEARN)
        except _Learned as learned:
            flags = learned.flags
        else:
            raise _RanUntiled(finished)  # upstream never asked for flags on this path: nothing to tile
        try:
            default = TileConfig(**{name: getattr(flags, name) for name in TILE_FIELDS})
        except (TypeError, ValueError):  # a tile the ladder cannot express: run upstream as it is
            raise _RanUntiled(up.fn(*args, **kwargs)) from None
        allowed = formats.rules(default, constraints, x, w, precision_config, _argument(up, names.routing, args, kwargs) is not None)
        return Call(
            kernel=f"triton_kernels.{entry}",
            key=key,
            arch=where.arch,
            shape={"rows": rows, "n": n, "k": k, "experts": experts},
            default=default,
            fields={"dtype": _dtype(x), "flavor": up.flavor, "copy": up.source},
            rows_per_expert=-(-rows // experts),
            tied=allowed.tied,
            floors=allowed.floors,
        )

    try:
        return resolve(key, attempt, describe, policy, settings.cache())
    except _RanUntiled as ran:
        return ran.result, None


class _RanUntiled(Exception):
    """Upstream ran without a tile to choose (or with one the ladder cannot express): its result."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def _on_target(where: Placement) -> contextlib.AbstractContextManager[Any]:
    """Compile for the virtual chip, if one is set and this process compiles (preflight on a GPU
    machine): the JIT then raises that chip's real OutOfResources. Process-global: not for serving."""
    if where.virtual is not None and not where.interpreter:
        return virtual_target(where.virtual)
    return contextlib.nullcontext()


def _argument(up: Upstream, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One argument of an upstream call, passed by position or by name (None when not given)."""
    index = up.positions.get(name)
    if index is not None and index < len(args):
        return args[index]
    return kwargs.get(name)


def _length(indx: Any) -> int:
    """Rows of an index: v3.5/v3.6 wrap it (``GatherIndx.src_indx``), v3.7+ pass the tensor."""
    return getattr(indx, "src_indx", indx).shape[0]


def _dtype(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _torch(t: Any) -> torch.Tensor:
    """The torch tensor behind an operand (upstream also accepts its own ``Tensor`` wrapper)."""
    if isinstance(t, torch.Tensor):
        return t
    data = getattr(getattr(t, "storage", None), "data", None)
    if isinstance(data, torch.Tensor):
        return data
    raise TypeError(f"expected a torch.Tensor or a triton_kernels Tensor, got {type(t).__name__}")


def _empty(entry: str, given: dict[str, Any], names: _Names, x: Any, rows: int, n: int, experts: int, scatter: Any) -> Any:
    """Zeros of upstream's output shape, without calling upstream (upstream up to v3.8 divides by
    zero computing its flags for zero rows). The given output buffer is zero-filled and returned."""
    events.empty_input(kernel=f"triton_kernels.{entry}", tokens=x.shape[-2], experts=experts)
    batched = len(x.shape) == 3
    out = given.get(names.out)
    if out is not None:
        _torch(out).zero_()
        return out.squeeze(0) if not batched and len(out.shape) == 3 else out
    if scatter is not None and entry == "matmul":
        rows = _length(scatter)  # one output row per scattered row (v3.7+ combines top-k outside)
    elif scatter is not None:
        n_act = getattr(given.get(names.routing), "n_expts_act", 1) or 1
        rows = rows if n_act == 1 else _length(scatter) // n_act  # one per token after the top-k sum
    activation = given.get("fused_activation")
    reduction = getattr(activation, "reduction_n", None) or getattr(getattr(activation, "specs", None), "reduction_n", None) or 1
    data = _torch(x)
    out_dtype = getattr(given.get("precision_config"), "out_dtype", None)
    dtype = out_dtype if isinstance(out_dtype, torch.dtype) else data.dtype
    shape = (x.shape[0], rows, n // reduction) if batched else (rows, n // reduction)
    return torch.zeros(shape, dtype=dtype, device=data.device)
