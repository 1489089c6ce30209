"""Experiment (not a library path): the persistent kernel with tiles handed out at run time.

    python benchmarks/experiments/dynamic_schedule.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

Nsight Compute on an H100 (experiments/ncu_forms.py), DeepSeek-V3 up uniform: every form of the GEMM
runs at 86 to 88% of DRAM bandwidth, and the time follows the bytes read: the persistent kernel 20.3 GB,
the one-tile kernel 18.4, matmul_ogs 18.1, for 15.0 GB of weights. The SMs ask L2 for the same bytes in
all three; what differs is how often an expert's W columns are still in L2 when its second m-tile
(the same n, the next tile in order) reads them. With tiles dealt out in advance (tile p, p + SMs,
...) each program's start times drift as a random walk of tile durations, so the two m-tiles of an
expert fall out of step; with the hardware's scheduling (one-tile kernel) the next tile starts on the
next SM that frees. Here each program takes its next tile from an atomic counter when it finishes
one (``PREFETCH``: when it starts one, so the counter's latency hides under the tile): the loop can no
longer be flattened, so the next tile's loads no longer start under this one's epilogue.

Device time of the GEMM kernel alone (torch.profiler), rotating rounds, best round each.

H100, against matmul_ogs (results/experiment-dynamic-schedule-h100.json): DeepSeek-V3 up uniform
1.047 (dealt out: 0.895; one tile per program: 1.017); each of the other 11 prefill GEMMs 1 to 9%
behind the dealt-out persistent kernel, which holds 0.98 to 1.05 there. Not adopted.
"""
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.ragged_tma import load_ragged, to_ragged_indices

from resilient_moe._moe_details._kernel import store_tile, swizzle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5


@triton.jit
def _dynamic(
    X, XDesc, WDesc, Bias, Y, YDesc, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, TileMap, TileCount,
    N, K, stride_xm, stride_xk, stride_be, stride_bn, stride_ym, stride_yn, stride_map, Counter,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SCATTER: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INDEX_64: tl.constexpr,
    IEEE_FP32: tl.constexpr, PREFETCH: tl.constexpr,
):
    """The library's ``_moe_matmul_persistent_kernel`` (bias and fp32 left out), its tiles taken from
    ``Counter`` (zeroed before the launch) instead of dealt out by program id."""
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    num_pid_m = tl.load(TileCount)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    offs_k = tl.arange(0, BLOCK_K)
    t = tl.atomic_add(Counter, 1)
    while t < num_tiles:
        if PREFETCH:
            t_next = tl.atomic_add(Counter, 1)
        pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(TileMap + pid_m)
        off_m = tl.load(TileMap + stride_map + pid_m) * BLOCK_M
        row_lo = tl.load(ExpertOffsets + expert)
        count = tl.load(ExpertOffsets + expert + 1) - row_lo
        off_n = pid_n * BLOCK_N
        if not SCATTER:
            wrapped = tl.max_contiguous(tl.multiple_of((off_m + tl.arange(0, BLOCK_M)) % count, BLOCK_M), BLOCK_M)
            x_rows = tl.load(GatherIdx + row_lo + wrapped)
            x_ptrs = X + x_rows.to(index)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(tl.cdiv(K, BLOCK_K)):
            if SCATTER:
                x = load_ragged(XDesc, row_lo, count, [off_m, ki * BLOCK_K])
            else:
                x = tl.load(x_ptrs)
                x_ptrs += BLOCK_K * stride_xk
            w = WDesc.load([expert, ki * BLOCK_K, off_n]).reshape(BLOCK_K, BLOCK_N)
            acc = tl.dot(x, w, acc)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if SCATTER:
            rows = off_m + tl.arange(0, BLOCK_M)
            row_mask = rows < count
            slots = tl.load(ScatterIdx + row_lo + rows, mask=row_mask, other=0)
            acc *= tl.load(Gammas + slots, mask=row_mask, other=0.0)[:, None]
            store_tile(Y, acc, slots, row_mask, offs_n, offs_n < N, stride_ym, stride_yn, index)
        else:
            c0, c1, c2 = to_ragged_indices(row_lo, count, off_m)
            YDesc.store([c0, c1, c2, off_n], acc.to(Y.dtype.element_ty).reshape([1, 1, BLOCK_M, BLOCK_N]))
        if PREFETCH:
            t = t_next
        else:
            t = tl.atomic_add(Counter, 1)


def dynamic_launch(launch: Any, prefetch: bool) -> Any:
    """A callable running ``launch`` (a persistent KernelLaunch of the library) on ``_dynamic``."""
    counter = torch.zeros(1, dtype=torch.int32, device=launch.y.device)
    constexprs = {**launch.constexprs, "PREFETCH": prefetch}

    def run() -> None:
        counter.zero_()
        launch.before.launch()
        _dynamic[launch.grid](*launch.args, counter, **constexprs)

    return run


def variants_for(g: Any, tile: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The library's persistent and one-tile launches of ``tile``, and ``_dynamic`` with and without
    prefetch (``row`` records whether each equals the persistent kernel's output)."""
    from breakdown import both_forms
    from resilient_moe._moe_details.launch import prepare

    variants, ref = both_forms(g, tile)
    for name, prefetch in (("dynamic", False), ("dynamic_prefetch", True)):
        launch = prepare(g.x, g.w, None, g.routing, g.mode, tile)
        run = dynamic_launch(launch, prefetch)
        run()
        row[f"{name}_equal"] = bool(torch.equal(launch.y, ref))
        variants[name] = run
    return variants


def main() -> None:
    from breakdown import against_ogs

    against_ogs("dynamic-schedule", variants_for, ROUNDS)


if __name__ == "__main__":
    main()
