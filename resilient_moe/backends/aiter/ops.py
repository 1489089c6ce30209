"""aiter's Triton MoE GEMMs (``moe_gemm_a8w4``, ``moe_gemm_a4w4``, ``moe_gemm_a8w8``) behind the dispatcher.

aiter's own config for the call (its module's ``get_kernel_config_triton`` or ``get_kernel_config``:
a tuned JSON entry, a proxy entry or a heuristic) is the default rung. A rung is imposed through that
lookup: the module's function is replaced once by one that returns the rung set for the current
thread and call (a context variable) and otherwise asks aiter's own, so nothing is written per call
and other threads see aiter's choice. Rules aiter states are kept: block_m is the routing's (it is the
dispatch key, not a tunable), block_k stays at least 256 under the CDNA4 scale swizzle, and the
AMD-only fields (``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``) and aiter's others
(``xcd_swizzle``, ``split_k``, ``w_cache_modifier``) stay as aiter chose them.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ...config import TileConfig

MOE = "aiter.ops.triton.moe"
LOOKUPS = ("get_kernel_config_triton", "get_kernel_config")
"""The names aiter's wrappers have called their Triton config lookup (newest first)."""

OWNER = "aiter"
"""Whose names ``patching`` records: ``unpatch_aiter()`` restores them all."""

AMD_OPTIONS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
"""aiter's launch options for CDNA, kept as aiter chose them."""

TILE_FIELDS = ("block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages")
"""aiter's config keys that are our tile's fields (the same names)."""


@dataclass(frozen=True)
class Op:
    """One of aiter's MoE GEMMs: where it is, and what its operands are."""

    name: str  # the wrapper: moe_gemm_a8w4
    module: str
    bits: tuple[int, int]  # activation and weight bits, as aiter's stage picker takes them
    packed_x: bool = False  # the activations hold two fp4 values per byte (a4w4): K is twice their columns

    @property
    def kernel_prefix(self) -> str:
        """The wrapper's Triton kernels are the module globals named ``_<name>...``."""
        return "_" + self.name


OPS = {op.name: op for op in (
    Op("moe_gemm_a8w4", f"{MOE}.moe_op_gemm_a8w4", (8, 4)),
    Op("moe_gemm_a4w4", f"{MOE}.moe_op_gemm_a4w4", (4, 4), packed_x=True),
    Op("moe_gemm_a8w8", f"{MOE}.moe_op_gemm_a8w8", (8, 8)),
)}


@dataclass(frozen=True)
class Gemm:
    """What one call computes, in the terms of aiter's config lookup."""

    m: int  # rows: the gathered (token, expert) slots, else the tokens
    n: int
    k: int
    block_m: int  # the routing's, fixed
    swizzle: str | None  # swizzle_mx_scale: None, "CDNA4_SCALE", ...
    experts: int
    top_k: int


def gemm_of(op: Op, arguments: dict[str, Any]) -> Gemm:
    """The sizes aiter's wrapper derives before its config lookup (M from the gather indices, K and
    N from the operands, the unpadded sizes where block_m is 16)."""
    x, w, routing = arguments["x"], arguments["w"], arguments.get("routing_data")
    if routing is None:
        raise ValueError(f"{op.name}: routing_data is None; aiter's MoE GEMMs take their block_m from it")
    gather = arguments.get("gather_indx")
    m = x.shape[-2] if gather is None else gather.shape[0]
    k = x.shape[-1] * (2 if op.packed_x else 1)
    n = w.shape[-1]
    if routing.block_m == 16:
        n = arguments.get("unpadded_N") or n
        k = arguments.get("unpadded_K") or k
    return Gemm(m, n, k, routing.block_m, arguments.get("swizzle_mx_scale"), routing.n_expts_tot, routing.n_expts_act)


def kernels(op: Op, module: ModuleType) -> list[Any]:
    """The wrapper's Triton GEMM kernels (its module's globals named ``_<op>...``)."""
    return [value for name, value in vars(module).items() if name.startswith(op.kernel_prefix) and hasattr(value, "fn")]


def lookup(module: ModuleType) -> Callable[..., dict[str, Any]]:
    """aiter's own config lookup of the module (never ours)."""
    for name in LOOKUPS:
        found = getattr(module, name, None)
        if found is not None:
            return getattr(found, "__resilient_moe_original__", found)
    raise AttributeError(f"{module.__name__} has none of {', '.join(LOOKUPS)}: this aiter is not one resilient_moe knows")


def own_config(module: ModuleType, gemm: Gemm, routing: Any) -> dict[str, Any]:
    """aiter's config for the call, as its wrapper would launch it (the CDNA4 swizzle's block_k >= 256
    applied, as the wrapper applies it after the lookup)."""
    found = lookup(module)
    config = dict(found(gemm.m, gemm.n, gemm.k, routing, gemm.swizzle) if _takes_swizzle(found) else found(gemm.m, gemm.n, gemm.k, routing))
    if gemm.swizzle == "CDNA4_SCALE" and config["block_k"] < 256:
        config["block_k"] = 256
    return config


@functools.cache
def _takes_swizzle(found: Callable[..., Any]) -> bool:
    """Whether this aiter's lookup takes the swizzle (it does since aiter #3580)."""
    return len(inspect.signature(found).parameters) >= 5


def as_tile(config: dict[str, Any]) -> TileConfig:
    return TileConfig(**{name: config[name] for name in TILE_FIELDS})


def as_config(tile: TileConfig, own: dict[str, Any]) -> dict[str, Any]:
    """A tile as aiter's config dict, keeping every field of its own choice we do not tile."""
    return {**own, **{name: getattr(tile, name) for name in TILE_FIELDS}}


def rules(gemm: Gemm) -> tuple[dict[str, int], dict[str, int]]:
    """Floors and ceilings aiter states: block_m is the routing's; under the CDNA4 scale swizzle the
    scales unswizzle in 256-wide K blocks and 32-wide N blocks."""
    floors = {"block_m": gemm.block_m}
    ceilings = {"block_m": gemm.block_m}
    if gemm.swizzle == "CDNA4_SCALE":
        floors.update(block_k=256, block_n=32)
    return floors, ceilings


_imposed: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("resilient_moe_aiter_config", default=None)


def hook(module: ModuleType) -> None:
    """Replace the module's config lookup, once, by one that returns the config imposed for the current
    call (``imposing``) and otherwise aiter's own (``patching.restore("aiter")`` puts it back)."""
    from .. import patching

    for name in LOOKUPS:
        original = getattr(module, name, None)
        if original is None or getattr(original, "__resilient_moe_original__", None) is not None:
            continue

        @functools.wraps(original)
        def consulted(*args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> dict[str, Any]:
            imposed = _imposed.get()
            return dict(imposed) if imposed is not None else __original(*args, **kwargs)

        consulted.__resilient_moe_original__ = original  # type: ignore[attr-defined]
        patching.set_attribute(OWNER, module, name, consulted)


@contextmanager
def imposing(config: dict[str, Any] | None) -> Iterator[None]:
    """aiter's lookup answers ``config`` in this thread while the block runs (None: aiter's own)."""
    token = _imposed.set(config)
    try:
        yield
    finally:
        _imposed.reset(token)


def shared_lower_bound(op: Op, async_copy: bool) -> Callable[[TileConfig], int]:
    """Bytes a tile needs at least on CDNA: the activation tiles a pipelined ``dot_scaled`` keeps in LDS,
    one per stage with async copies, one per stage but one without (at least one). The weight tile
    counts for nothing: depending on its layout the compiler may read it straight into registers.
    Checked against real compiles of aiter's kernel for gfx950 (tests/test_aiter.py)."""
    bits_a = op.bits[0]

    def bound(tile: TileConfig) -> int:
        buffers = max(tile.num_stages if async_copy else tile.num_stages - 1, 1)
        return buffers * tile.block_m * tile.block_k * bits_a // 8

    return bound
