"""aiter's MoE GEMMs on a chip this machine does not have: aiter's own config per call, its kernel's
bytes compiled for the chip, and where the ladder lands when it does not fit.

aiter's real wrapper runs on CPU tensors (``torch.empty``: their pages are never touched) with its
Triton kernels and its reduce replaced by recorders for the duration of the call, so the launch
compiled is the one aiter makes, argument for argument; the lookup it consults is its own or, for a
rung, ours (``ops.imposing``). A tool process only: it replaces aiter's module globals while it runs.
Compiles run in this process (it must not interpret Triton).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from ...config import TileConfig
from ...dispatch import Call, first_fit, second_move_landing
from ...policy import Policy
from ...targets import Chip, amd_async_copy
from .. import patching
from ..binding import Launch, bind
from . import ops

ROUTING = "aiter.ops.triton.moe.moe_routing.routing"
PICKER = "aiter.ops.triton.utils.gemm_config_utils"


@dataclass(frozen=True)
class Shape:
    """One GEMM of a MoE layer as aiter runs it: the up GEMM gathers tokens (N = 2 x intermediate,
    SwiGLU fused), the down GEMM reads the slots in expert order (N = hidden)."""

    name: str  # "up", "down"
    experts: int
    top_k: int
    n: int
    k: int
    gather: bool
    bias: bool
    swizzle: str | None = "CDNA4_SCALE"


@dataclass(frozen=True)
class Row:
    """One call: aiter's config, its bytes, and the config the ladder lands on (None: nothing fits)."""

    shape: Shape
    tokens: int
    block_m: int
    own: dict[str, Any]
    own_bytes: int
    landed: dict[str, Any] | None
    landed_bytes: int | None
    compiled: int
    second: dict[str, Any] | None  # what a recovery on the chip times against the landing (compare_second_move)
    second_bytes: int | None
    picked_stages: int | None  # aiter's pick_gemm_num_stages for aiter's tile, where this aiter has one

    @property
    def fits(self) -> bool:
        return self.landed == self.own


def block_m_of(tokens: int, shape: Shape) -> int:
    """aiter's routing's block_m: the slots per expert as a power of two, 16 to 128."""
    per_expert = max(1, tokens * shape.top_k // shape.experts)
    return max(16, min(1 << (per_expert - 1).bit_length(), 128))


def arguments(op: ops.Op, shape: Shape, tokens: int) -> dict[str, Any]:
    """The wrapper's arguments for a call of ``tokens`` tokens routed evenly: operands of the right
    dtypes, shapes and strides (never filled), aiter's own routing data."""
    routing_module = importlib.import_module(ROUTING)
    block_m = block_m_of(tokens, shape)
    slots = tokens * shape.top_k
    hist = torch.full((shape.experts,), slots // shape.experts, dtype=torch.int32)
    hist[: slots % shape.experts] += 1
    data = routing_module.compute_expt_data_torch(hist, shape.experts, slots, block_m)
    routing = routing_module.RoutingData(block_m, None, hist, shape.experts, shape.top_k, data)
    rows = tokens if shape.gather else slots
    e, n, k = shape.experts, shape.n, shape.k
    x_cols = k // 2 if op.packed_x else k
    x = torch.empty(rows, x_cols, dtype=torch.uint8 if op.packed_x else torch.float8_e4m3fn)
    w_dtype = torch.uint8 if op.bits[1] == 4 else torch.float8_e4m3fn
    w = torch.empty(e, n, k * op.bits[1] // 8, dtype=w_dtype).transpose(1, 2)  # (E, K', N), K' contiguous
    if shape.swizzle == "CDNA4_SCALE":
        w_scales = torch.empty(e, n // 32, k // 32 * 32, dtype=torch.uint8).transpose(1, 2)
    else:
        w_scales = torch.empty(e, n, k // 32, dtype=torch.uint8).transpose(1, 2)
    order = torch.arange(slots, dtype=torch.int32)
    found: dict[str, Any] = {
        "x": x, "w": w, "x_scales": torch.empty(rows, k // 32, dtype=torch.uint8) if op.packed_x else None,
        "w_scales": w_scales, "bias": torch.empty(e, n, dtype=torch.float32) if shape.bias else None,
        "routing_data": routing, "gather_indx": order if shape.gather else None,
        "scatter_indx": None if shape.gather else order, "swizzle_mx_scale": shape.swizzle,
        "apply_swiglu": shape.gather,
    }
    if not op.packed_x:
        found["x_static_scale"] = torch.ones((), dtype=torch.float32)
    return found


def recorded(op: ops.Op, module: ModuleType, call: dict[str, Any], config: dict[str, Any] | None) -> Launch:
    """The GEMM launch aiter's wrapper makes for ``call`` under ``config`` (None: aiter's own choice)."""
    launches: list[Launch] = []
    with _recording(op, module, launches), ops.imposing(config):
        entry = patching.original(module, op.name)
        accepted = inspect.signature(entry).parameters
        entry(**{name: value for name, value in call.items() if name in accepted})
    gemm = [launch for launch in launches if launch[0].fn.__name__.startswith(op.kernel_prefix)]
    if len(gemm) != 1:
        raise RuntimeError(f"aiter's {op.name} made {len(gemm)} GEMM launches where one was expected")
    return gemm[0]


@contextmanager
def _recording(op: ops.Op, module: ModuleType, into: list[Launch]) -> Iterator[None]:
    """The module's Triton kernels record their launches instead of running; its reduce does nothing."""
    saved = {name: value for name, value in vars(module).items() if hasattr(value, "fn") and hasattr(value, "run")}
    saved["reduce_grouped"] = getattr(module, "reduce_grouped", None)

    class Recorder:
        def __init__(self, kernel: Any) -> None:
            self.kernel = kernel

        def __getitem__(self, grid: Any) -> Callable[..., None]:
            def launch(*args: Any, **kwargs: Any) -> None:
                positional, constexprs = bind(self.kernel, args, kwargs)
                into.append((self.kernel, tuple(positional), constexprs))
            return launch

    for name, kernel in saved.items():
        if name != "reduce_grouped":
            setattr(module, name, Recorder(kernel))
    module.reduce_grouped = lambda y, *args, **kwargs: y
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def bytes_needed(launch: Launch, chip: Chip) -> int:
    """Shared memory (LDS) of the launch compiled for ``chip`` in this process."""
    from ...virtual import job_for
    from ...virtual.worker import compile_here

    kernel, args, constexprs = launch
    return compile_here(job_for(kernel, args, constexprs, chip.name)).shared


def plan(op: ops.Op, module: ModuleType, shapes: list[Shape], token_counts: list[int], chip: Chip,
         policy: Policy) -> list[Row]:
    """Every (shape, tokens) call: aiter's config on ``chip``, and the ladder's landing where it does
    not fit (rungs the lower bound rules out are not compiled)."""
    picker = getattr(_optional(PICKER), "pick_gemm_num_stages", None)
    bound = ops.shared_lower_bound(op, amd_async_copy(chip.name))
    rows = []
    for shape in shapes:
        for tokens in token_counts:
            call = arguments(op, shape, tokens)
            gemm = ops.gemm_of(op, call)
            own = ops.own_config(module, gemm, call["routing_data"])
            floors, ceilings = ops.rules(gemm)
            described = Call(kernel=f"aiter.{op.name}", key=("preflight",), arch=chip.name, shape={}, default=ops.as_tile(own),
                             shared_lower_bound=bound, shared_limit=chip.max_shared_mem, floors=floors, ceilings=ceilings)

            def config_of(tile: TileConfig) -> dict[str, Any]:
                return own if tile == described.default else ops.as_config(tile, own)

            def bytes_of(tile: TileConfig) -> int:
                config = config_of(tile)
                return bytes_needed(recorded(op, module, call, None if config is own else config), chip)

            fit = first_fit(described, policy, bytes_of)
            landed = None if fit.landed is None else config_of(fit.landed)
            second = second_bytes = None
            if fit.landed is not None and landed is not own:
                found = second_move_landing(described, policy, fit.landed)
                if found is not None:
                    second = ops.as_config(found, own)
                    second_bytes = bytes_needed(recorded(op, module, call, second), chip)
            picked = None if picker is None else picker(chip.name, own["block_m"], own["block_n"], own["block_k"], *op.bits,
                                                         use_async_padding=True)
            rows.append(Row(shape, tokens, gemm.block_m, own, fit.start_bytes, landed, fit.landed_bytes, fit.compiled, second,
                            second_bytes, picked))
    return rows


def model_shapes(experts: int, top_k: int, hidden: int, intermediate: int, bias: bool,
                 swizzle: str | None = "CDNA4_SCALE") -> list[Shape]:
    """A MoE layer's two GEMMs as aiter runs them."""
    return [Shape("up", experts, top_k, 2 * intermediate, hidden, True, bias, swizzle),
            Shape("down", experts, top_k, hidden, intermediate, False, bias, swizzle)]


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def as_dict(row: Row) -> dict[str, Any]:
    return {**dataclasses.asdict(row), "fits": row.fits}
