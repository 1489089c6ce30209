"""Experiment (not a library path): the persistent default tile's group_m, per prefill GEMM.

    python benchmarks/experiments/group_m.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

group_m decides which tiles run side by side: group_m m-tiles sweep the n-tiles together, so W
columns are shared by up to group_m m-tiles and X rows by the n-tiles in between. On the H100's
DeepSeek-V3 up uniform GEMM the persistent kernel loses to L2 misses on W between an expert's two
m-tiles (experiments/dynamic_schedule.py); at group_m 1 an expert's m-tiles are a whole row of n-tiles
apart, at 8 (the default) next to each other. This times the library's persistent default tile at
group_m 1, 2, 4, 8 and 16 on the 12 prefill GEMMs of the kernel section: device time of the GEMM
kernel alone (torch.profiler), rotating rounds, best round each, against matmul_ogs.

H100, two runs (results/experiment-group-m-h100.json, -second-run-h100.json): DeepSeek-V3 up uniform
at group_m 16 ran 1.008 of matmul_ogs in the first and 0.885 in the second (group_m 8: 0.939, 0.882;
1, 2 and 4: 0.94 to 1.005), so no group size holds that row: it moves with the run, as the drift of
the dealt-out schedule predicts. Elsewhere group_m 8 is at or near the best: 1 and 2 lose up to 44% on
Mixtral (few experts, many m-tiles each), 16 loses 2 to 3% on gpt-oss down in both runs. The default
stays 8.
"""
import dataclasses
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5
GROUP_MS = (1, 2, 4, 8, 16)


def main() -> None:
    from bench_moe import CASES, gemms, upstream
    from breakdown import profiled_rounds, save
    from resilient_moe._moe_details.launch import default_config, prepare
    from resilient_moe.targets import placement

    out_dir = sys.argv[1]
    up = upstream()
    arch = placement().arch
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        tile = default_config(routing.n_rows, g.n, g.k, g.case.experts, a.dtype, arch)
        variants: dict[str, Any] = {
            f"g{group_m}": prepare(a, w, None, routing, mode, dataclasses.replace(tile, group_m=group_m)).launch
            for group_m in GROUP_MS
        }
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        for run in variants.values():
            run()
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "tile": tile.as_dict()}
        best = profiled_rounds(variants, ROUNDS)
        if "ogs" in best:
            row["vs_ogs"] = {k: round(best["ogs"] / v, 3) for k, v in best.items()}
        save(out_dir, "group-m", rows, row, best, g.flops, rounds=ROUNDS)


if __name__ == "__main__":
    main()
