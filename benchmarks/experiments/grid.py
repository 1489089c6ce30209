"""Experiment (not a library path): what the static upper-bound grid costs, and what replaces it.

    python benchmarks/experiments/grid.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

The kernel's grid is an upper bound on the tiles, (cdiv(rows, block_m) + experts) m-tiles times the
n-tiles, so the host never reads routing data; programs past the real tile count leave at once. But a
program that leaves still holds its shared memory while it runs (192 KiB: one per SM), so the empty
ones run as whole waves after the real tiles. experiments/breakdown.py found our GEMM kernel 3 to 8%
behind matmul_ogs's on skewed routings, where most of those programs are empty. Variants, timed as
device time per kernel (torch.profiler), rotating rounds, best round each:
- bound: the library kernel and grid;
- exact: the library kernel on the exact tile count (a host sync: only possible in an experiment);
- lower: cdiv(rows, block_m) m-tiles, a lower bound on the real ones (no expert has fewer than its
  rows over block_m), each program taking tiles pid, pid + grid, ...: no program is ever empty;
- persistent: one program per SM, the same loop.

Run on an H100 (results/experiment-grid-h100.json): with the default 4 stages the exact grid runs at
0.98 to 1.02 of the bound on all 12 GEMMs, so the empty programs cost nothing measurable there (at 3
stages up to 1.07, on Mixtral down); the looped forms run at 0.95 to 1.01 (lower) and 0.83 to 1.01
(persistent). The grid stays; what is left against matmul_ogs (GEMM kernel alone, 4 stages: 0.94 to
1.04) is inside the K loop.
"""
import dataclasses
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl

from resilient_moe._moe_details._kernel import expert_tiles, tile_matmul, tile_of

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROUNDS = 3


@triton.jit
def _looped(
    X, W, Bias, Y, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, n_experts, N, K,
    stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_be, stride_bn, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EXPERTS_POW2: tl.constexpr, SCATTER: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_N: tl.constexpr, INDEX_64: tl.constexpr, IEEE_FP32: tl.constexpr,
):
    experts, row_lo, row_hi, m_tiles, m_tiles_end, num_pid_m = expert_tiles(
        ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2
    )
    num_pid_n = tl.cdiv(N, BLOCK_N)
    for t in range(tl.program_id(0), num_pid_m * num_pid_n, tl.num_programs(0)):
        expert, pid_n, row_start, row_end = tile_of(
            t, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m, num_pid_n, BLOCK_M, GROUP_M
        )
        tile_matmul(
            X, W, Bias, Y, GatherIdx, ScatterIdx, Gammas, expert, pid_n, row_start, row_end, N, K,
            stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_be, stride_bn, stride_ym, stride_yn,
            BLOCK_M, BLOCK_N, BLOCK_K, SCATTER, HAS_BIAS, EVEN_K, EVEN_N, INDEX_64, IEEE_FP32,
        )


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, upstream
    from breakdown import profiled_rounds, save
    from resilient_moe._moe_details.launch import prepare

    out_dir = sys.argv[1]
    up = upstream()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "k": g.k, "n": g.n}
        variants: dict[str, Any] = {}
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        for stages in (4, 3):
            tile = rm.TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=stages)
            launch = prepare(a, w, None, routing, mode, tile)
            n_tiles = triton.cdiv(g.n, tile.block_n)
            counts = (routing.expert_offsets[1:] - routing.expert_offsets[:-1]).long()
            exact = int(((counts + tile.block_m - 1) // tile.block_m).sum()) * n_tiles
            lower = triton.cdiv(routing.n_rows, tile.block_m) * n_tiles
            row[f"s{stages}_programs"] = {"bound": launch.grid[0], "exact": exact, "lower": lower, "sms": sms}
            forms = {
                "bound": launch,
                "exact": dataclasses.replace(launch, grid=(exact,)),
                "lower": dataclasses.replace(launch, kernel=_looped, grid=(lower,)),
                "persistent": dataclasses.replace(launch, kernel=_looped, grid=(min(sms, exact),)),
            }
            launch.launch()
            ref = launch.y.clone()
            for name, form in forms.items():
                launch.y.fill_(float("nan"))
                form.launch()
                row.setdefault("equal", {})[f"{name} s{stages}"] = bool(torch.equal(launch.y, ref))
                variants[f"{name} s{stages}"] = form.launch
        save(out_dir, "grid", rows, row, profiled_rounds(variants, ROUNDS), g.flops, rounds=ROUNDS)


if __name__ == "__main__":
    main()
