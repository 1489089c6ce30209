"""What an upstream call's format does to its tile: the parts of the call that change shared memory or
legality (they go into the cache key), and the rules a format and a layout impose on rungs.

The rules are upstream's own, from its opt_flags and kernels (v3.5.1), checked on an H200 where a
broken rule compiles (docs/matmul_ogs.md has the table and the measurements):

- a constraint the caller set (``update_opt_flags_constraints``, vLLM's and SGLang's load-time ones)
  ties its field: upstream asserts its flags honour it;
- the Hopper MX scale layout is swizzled for one ``num_warps`` (upstream takes num_warps from it; a
  different count gives wrong numbers, not an error), and serves block_n in multiples of 32 per warp
  and block_k in multiples of 64;
- the Blackwell MX layouts serve block_n in multiples of 128 and block_k of 128 or 256;
- the CDNA4 MX scale swizzle serves block_n in multiples of 32 and block_k in multiples of 256;
- an MX scale covers 32 values of K, an 8-bit dot needs K of 32, a ragged block_m is 16 or more.

Every field is a power of two and a rung only shrinks one, so a least value per field states them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ...config import TILE_FIELDS, TileConfig
from ...settings import BoundedStore

MX_BLOCK = 32  # values of K one MX scale covers

_described = BoundedStore(1024)  # id(precision config) -> (it, its text): configs are made once per layer


@dataclass(frozen=True)
class Rules:
    """What a call's format allows the ladder: fields it ties and the least value of others."""

    tied: frozenset[str]
    floors: dict[str, int]


def layout(t: Any) -> Any:
    """The layout of an upstream ``Tensor`` (None for a plain torch tensor or no tensor)."""
    return getattr(getattr(t, "storage", None), "layout", None)


def layout_name(t: Any) -> str:
    found = layout(t)
    return "strided" if found is None else type(found).__name__


def operand(t: Any) -> str:
    """An operand's dtype and layout class, as text (``float4_e2m1:HopperMXValueLayout``)."""
    if t is None:
        return "-"
    dtype = getattr(t, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else type(t).__name__
    found = layout(t)
    return name if found is None else f"{name}:{_layout_text(found)}"


def _layout_text(found: Any) -> str:
    params = {k: v for k, v in sorted(vars(found).items()) if isinstance(v, (bool, int, str)) and not k.startswith("_")}
    return type(found).__name__ + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def precision(config: Any) -> str:
    """The precision config's shape: which scales and flex data it carries, their dtypes and layouts,
    its out dtype and switches; not the values of its scales, which change no tile."""
    if config is None:
        return "-"
    held = _described.get(id(config))
    if held is not None and held[0] is config:
        return held[1]
    text = _shape(config)
    _described.put(id(config), (config, text))
    return text


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor) or hasattr(value, "storage"):
        return operand(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return "float"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = ((f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value))
        inner = ",".join(f"{name}={_shape(v)}" for name, v in parts if v is not None)
        return f"{type(value).__name__}({inner})"
    return type(value).__name__


def activation(fused: Any) -> str:
    """The fused activation's name and reduction (SwiGLU halves N), as text; ``-`` for none."""
    if fused is None:
        return "-"
    specs = getattr(fused, "specs", fused)
    name = getattr(specs, "name", None) or type(fused).__name__
    reduction = getattr(fused, "reduction_n", None) or getattr(specs, "reduction_n", None) or 1  # v3.5: on the activation
    return f"{name}/{reduction}"


def constraints_text(constraints: dict[str, Any]) -> str:
    return ",".join(f"{name}={value!r}" for name, value in sorted(constraints.items())) or "-"


def rules(default: TileConfig, constraints: dict[str, Any], x: Any, w: Any, precision_config: Any, ragged: bool) -> Rules:
    """The rules of one call (module docstring): ``default`` is upstream's own tile for it."""
    tied = {name for name in TILE_FIELDS if name in constraints}
    floors: dict[str, int] = {}

    def at_least(name: str, value: int) -> None:
        floors[name] = max(floors.get(name, 1), value)

    scale = getattr(precision_config, "weight_scale", None)
    kind = layout_name(scale) if scale is not None else None
    if kind == "HopperMXScaleLayout":
        tied.add("num_warps")
        at_least("block_n", 32 * default.num_warps)
        at_least("block_k", 64)
    elif (kind or "").startswith("Blackwell") or layout_name(w).startswith("Blackwell"):
        at_least("block_n", 128)
        at_least("block_k", 128)
    elif kind == "CDNA4MXScaleLayout":
        at_least("block_n", 32)
        at_least("block_k", 256)
    if scale is not None:
        at_least("block_k", MX_BLOCK)
    if min(_bits(x), _bits(w)) <= 8:
        at_least("block_k", 32)
    if ragged:
        at_least("block_m", 16)
    return Rules(frozenset(tied), {name: value for name, value in floors.items() if name not in tied})


def _bits(t: Any) -> int:
    dtype = getattr(t, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize * 8
    bits = getattr(dtype, "bitwidth", None)
    return bits if isinstance(bits, int) else 16
