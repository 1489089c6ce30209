"""Tile configuration of the MoE GEMM kernel, shared by heuristics, rungs, cache and launch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._schema import power_of_two

MAX_BLOCK = 1024
"""Largest block_m, block_n and block_k: every tile the kernel holds (block_m x block_k, block_k x block_n,
block_m x block_n) then stays within the 2**20 elements Triton allows a tensor (TRITON_MAX_TENSOR_NUMEL)."""
MAX_WARPS = 32
"""Most warps a program may have: 1024 threads, a block's limit on NVIDIA and AMD (16 wave64 warps there)."""
MAX_STAGES = 8
"""Most pipeline stages: above every heuristic (upstream triton_kernels stops at 5); 10**6 stages kept a
compile running for minutes."""

_LIMITS = {"block_m": MAX_BLOCK, "block_n": MAX_BLOCK, "block_k": MAX_BLOCK, "num_warps": MAX_WARPS,
           "num_stages": MAX_STAGES}
_POWERS_OF_TWO = frozenset({"block_m", "block_n", "block_k", "num_warps"})


def check_tile_field(field: str, value: object, name: str | None = None) -> int:
    """``value`` if Triton and the chips accept it for ``field``, else a ValueError naming ``name`` (default:
    the field) and the value. Shared by TileConfig and the policy's tile fields and ladder floors."""
    name = name or field
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if field in _POWERS_OF_TWO:
        power_of_two(name, value)
    limit = _LIMITS.get(field)
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be at most {limit}, got {value}")
    return value


@dataclass(frozen=True)
class TileConfig:
    """Meta-parameters of one kernel compile; frozen so it can key caches and be compared."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    is_persistent: bool = False  # one program per SM looping over tiles, operands through TMA (NVIDIA sm_90)

    def __post_init__(self) -> None:
        if not isinstance(self.is_persistent, bool):
            raise ValueError(f"TileConfig.is_persistent must be a bool, got {self.is_persistent!r}")
        for field in dataclasses.fields(self):
            if field.name != "is_persistent":
                check_tile_field(field.name, getattr(self, field.name), f"TileConfig.{field.name}")

    def replace(self, **changes: int | bool) -> TileConfig:
        """Copy with some fields changed (validated again), e.g. a downgrade rung."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, int | bool]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        """'128x256x64 s4 w8 g8': block m x n x k, stages, warps, group_m, then ' persistent' where it is
        (how logs and tables show a tile)."""
        tile = f"{self.block_m}x{self.block_n}x{self.block_k} s{self.num_stages} w{self.num_warps} g{self.group_m}"
        return f"{tile} persistent" if self.is_persistent else tile


TILE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TileConfig))
"""A tile's fields, in order: what a rung sets on a backend's own config object and what logs compact."""
