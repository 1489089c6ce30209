"""Experiment (not a library path): the persistent default tile's group_m, per prefill GEMM.

    python benchmarks/experiments/group_m.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

group_m decides which tiles run side by side: group_m m-tiles sweep the n-tiles together, so W
columns are shared by up to group_m m-tiles and X rows by the n-tiles in between. On the H100's
DeepSeek-V3 up uniform GEMM the persistent kernel loses to L2 misses on W between an expert's two
m-tiles (experiments/dynamic_schedule.py); at group_m 1 an expert's m-tiles are a whole row of n-tiles
apart, at 8 (the default) next to each other. This times the library's persistent default tile at
group_m 1, 2, 4, 8 and 16 on the 12 prefill GEMMs of the kernel section: device time of the GEMM
kernel alone (torch.profiler), rotating rounds, best round each, against matmul_ogs.

H100, three runs (results/experiment-group-m-h100.json, -second-run-, -third-run-h100.json):
DeepSeek-V3 up uniform at group_m 16 ran 1.008, 0.885 and 0.973 of matmul_ogs, group_m 8 0.939, 0.882
and 0.917 (1, 2 and 4: 0.94 to 1.005): 16 is at or above 8 on that row in every run but holds
matmul_ogs in none reliably; the row moves from run to run, as the drift of the dealt-out schedule
predicts. Elsewhere group_m 8 is at or near the best: 1 and 2 lose up to 44% on Mixtral (few experts,
many m-tiles each), and 16 loses 1.5 to 3% on gpt-oss down in all three runs. The default stays 8.
"""
import dataclasses
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5
GROUP_MS = (1, 2, 4, 8, 16)


def variants_for(g: Any, tile: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The library's launch of ``tile`` at each group size."""
    from resilient_moe._moe_details.launch import prepare

    return {f"g{group_m}": prepare(g.x, g.w, None, g.routing, g.mode, dataclasses.replace(tile, group_m=group_m)).launch
            for group_m in GROUP_MS}


def main() -> None:
    from breakdown import against_ogs

    against_ogs("group-m", variants_for, ROUNDS)


if __name__ == "__main__":
    main()
