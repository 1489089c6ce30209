"""Double of aiter's routing data: tokens per expert, their offsets, and each block's (block, expert)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExptData:
    hist: torch.Tensor  # rows per expert
    token_offs_raw: torch.Tensor  # [E + 1]: first row of each expert
    token_offs_pad: torch.Tensor  # [E + 1]: first block of each expert
    block_pid_map: torch.Tensor  # per block: (block within the expert << 16) | expert, -1 past the last


@dataclass
class RoutingData:
    block_m: int
    gate_scal: torch.Tensor | None
    expt_hist: torch.Tensor
    n_expts_tot: int
    n_expts_act: int
    expt_data: ExptData | None = None

    def n_blocks(self, n_rows: int, block_m: int) -> int:
        """At most this many blocks cover ``n_rows`` rows split over the experts."""
        if n_rows <= self.n_expts_tot:
            return n_rows
        return -(-max(n_rows - self.n_expts_tot + 1, 0) // block_m) + self.n_expts_tot - 1


def compute_expt_data_torch(hist: torch.Tensor, n_expts_tot: int, n_gates: int, block_m: int) -> ExptData:
    blocks = (hist + block_m - 1) // block_m
    offs_raw = torch.cat([torch.zeros(1, dtype=torch.int32), hist.cumsum(0).int()])
    offs_pad = torch.cat([torch.zeros(1, dtype=torch.int32), blocks.cumsum(0).int()])
    most = RoutingData(block_m, None, hist, n_expts_tot, 1).n_blocks(n_gates, block_m)
    pid_map = torch.full((most,), -1, dtype=torch.int32)
    for expert in range(n_expts_tot):
        for block in range(int(blocks[expert])):
            pid_map[int(offs_pad[expert]) + block] = (block << 16) | expert
    return ExptData(hist.int(), offs_raw, offs_pad, pid_map)
