"""Tile configuration of the MoE GEMM kernel, shared by heuristics, rungs, cache and launch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
            value = getattr(self, field.name)
            if field.name == "is_persistent":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TileConfig.{field.name} must be a positive int, got {value!r}")
            if field.name.startswith("block_") and value & (value - 1):
                raise ValueError(f"TileConfig.{field.name} must be a power of two, got {value}")

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
