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

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TileConfig.{field.name} must be a positive int, got {value!r}")
            if field.name.startswith("block_") and value & (value - 1):
                raise ValueError(f"TileConfig.{field.name} must be a power of two, got {value}")

    def replace(self, **changes: int) -> TileConfig:
        """Copy with some fields changed (validated again), e.g. a downgrade rung."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        """'128x256x64 s4 w8 g8': block m x n x k, stages, warps, group_m (how logs and tables show a tile)."""
        return f"{self.block_m}x{self.block_n}x{self.block_k} s{self.num_stages} w{self.num_warps} g{self.group_m}"
