"""Experiment (not a library path): two m-tiles of one expert per tile, sharing each W load.

    python benchmarks/experiments/m_pairs.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

experiments/dynamic_schedule.py found why the persistent kernel trails on the H100's DeepSeek-V3 up
uniform GEMM: an expert gets 128 +- 11 rows, so about half the experts have a second, nearly empty
m-tile, which reads the expert's W columns again; whether L2 still holds them depends on the two
m-tiles staying in step. Here a tile covers 2 x BLOCK_M rows of one expert (the tile map built for
2 x BLOCK_M) and its K loop loads each W block once for both halves, so W is read from DRAM once per
expert and n-tile whatever the schedule does. Two accumulators of BLOCK_M x BLOCK_N (BLOCK_N 128,
so they hold the registers of one 128 x 256 tile). ``SKIP``: the second half's dot runs only where
the expert has rows there (its loads are masked or clipped either way), so a one-m-tile expert does
the MMA work it does today; without it the dot always runs (a 256-row tile's work).

``split``: the pairs through that kernel (every half computed, so nothing is skipped), then each
expert's odd last m-tile through the library's persistent kernel, two launches after one map kernel.
Also timed: the library's persistent kernel at block_m 256 (one 256 x 128 tile), which reads W once
per expert too but always does 256 rows of MMA.

H100, GEMM kernels alone against matmul_ogs (results/experiment-m-pairs-h100.json; all outputs equal
the library's bit for bit): on DeepSeek-V3 up uniform, split 1.007 and m256 1.000 against the
persistent kernel's 0.923, so reading W once per expert recovers the row, but the one-tile kernel ran
it at 1.040 in the same run. On the other 11 prefill GEMMs the pair loop is slower per FLOP: split
0.66 to 0.95, every half computed 0.66 to 0.82, SKIP 0.29 to 0.65 (the dot under a branch keeps the
second half's loads out of the pipeline: 147 KB of shared memory at 3 stages against 180 KB), m256
0.71 to 0.89, where the persistent kernel holds 0.98 to 1.04. Not adopted. A Triton note: a
branch around the second half's stores inside the flattened tile loop fails TritonGPUFuseNestedLoops
("scf.if ... source has 2 operands, but target successor needs 3"), so those stores rely on the ragged
descriptor's and the row mask's clipping instead.
"""
import dataclasses
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.ragged_tma import load_ragged, to_ragged_indices

from resilient_moe._moe_details._kernel import expert_tiles, store_tile, swizzle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5


@triton.jit
def _paired(
    X, XDesc, WDesc, Bias, Y, YDesc, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, TileMap, TileCount,
    N, K, stride_xm, stride_xk, stride_be, stride_bn, stride_ym, stride_yn, stride_map,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SCATTER: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INDEX_64: tl.constexpr,
    IEEE_FP32: tl.constexpr, SKIP: tl.constexpr,
):
    """The library's ``_moe_matmul_persistent_kernel`` (bias, fp32 and uneven K left out) over tiles
    of 2 x BLOCK_M rows: TileMap lists them (built for 2 x BLOCK_M), XDesc and YDesc have BLOCK_M rows."""
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    num_pid_m = tl.load(TileCount)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    for t in tl.range(tl.program_id(0), num_pid_m * num_pid_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(TileMap + pid_m)
        off_a = tl.load(TileMap + stride_map + pid_m) * (2 * BLOCK_M)
        off_b = off_a + BLOCK_M
        row_lo = tl.load(ExpertOffsets + expert)
        count = tl.load(ExpertOffsets + expert + 1) - row_lo
        has_b = off_b < count
        off_n = pid_n * BLOCK_N
        if not SCATTER:
            wrapped_a = tl.max_contiguous(tl.multiple_of((off_a + tl.arange(0, BLOCK_M)) % count, BLOCK_M), BLOCK_M)
            wrapped_b = tl.max_contiguous(tl.multiple_of((off_b + tl.arange(0, BLOCK_M)) % count, BLOCK_M), BLOCK_M)
            xa_ptrs = X + tl.load(GatherIdx + row_lo + wrapped_a).to(index)[:, None] * stride_xm + offs_k[None, :] * stride_xk
            xb_ptrs = X + tl.load(GatherIdx + row_lo + wrapped_b).to(index)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(tl.cdiv(K, BLOCK_K)):
            w = WDesc.load([expert, ki * BLOCK_K, off_n]).reshape(BLOCK_K, BLOCK_N)
            if SCATTER:
                x_a = load_ragged(XDesc, row_lo, count, [off_a, ki * BLOCK_K])
                x_b = load_ragged(XDesc, row_lo, count, [off_b, ki * BLOCK_K])
            else:
                x_a = tl.load(xa_ptrs)
                x_b = tl.load(xb_ptrs, mask=has_b, other=0.0)
                xa_ptrs += BLOCK_K * stride_xk
                xb_ptrs += BLOCK_K * stride_xk
            acc_a = tl.dot(x_a, w, acc_a)
            if SKIP:
                if has_b:
                    acc_b = tl.dot(x_b, w, acc_b)
            else:
                acc_b = tl.dot(x_b, w, acc_b)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if SCATTER:
            rows = off_a + tl.arange(0, BLOCK_M)
            row_mask = rows < count
            slots = tl.load(ScatterIdx + row_lo + rows, mask=row_mask, other=0)
            acc_a *= tl.load(Gammas + slots, mask=row_mask, other=0.0)[:, None]
            store_tile(Y, acc_a, slots, row_mask, offs_n, offs_n < N, stride_ym, stride_yn, index)
            rows = off_b + tl.arange(0, BLOCK_M)
            row_mask = rows < count
            slots = tl.load(ScatterIdx + row_lo + rows, mask=row_mask, other=0)
            acc_b *= tl.load(Gammas + slots, mask=row_mask, other=0.0)[:, None]
            store_tile(Y, acc_b, slots, row_mask, offs_n, offs_n < N, stride_ym, stride_yn, index)
        else:
            c0, c1, c2 = to_ragged_indices(row_lo, count, off_a)
            YDesc.store([c0, c1, c2, off_n], acc_a.to(Y.dtype.element_ty).reshape([1, 1, BLOCK_M, BLOCK_N]))
            c0, c1, c2 = to_ragged_indices(row_lo, count, off_b)
            YDesc.store([c0, c1, c2, off_n], acc_b.to(Y.dtype.element_ty).reshape([1, 1, BLOCK_M, BLOCK_N]))


@triton.jit
def _split_map(ExpertOffsets, PairMap, PairCount, SingleMap, SingleCount, n_experts, n_slots, stride_map,
               BLOCK_M: tl.constexpr, EXPERTS_POW2: tl.constexpr, BLOCK: tl.constexpr):
    """Each expert's m-tiles as pairs (PairMap: expert, pair index) and, where the count is odd, its
    last m-tile alone (SingleMap: expert, m-block), like the library's ``_tile_map_kernel``."""
    experts, _, _, m_tiles, _, _ = expert_tiles(ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2)
    pairs = m_tiles // 2
    singles = m_tiles % 2
    pairs_end = tl.cumsum(pairs, axis=0)
    singles_end = tl.cumsum(singles, axis=0)
    if tl.program_id(0) == 0:
        tl.store(PairCount, tl.sum(pairs, axis=0))
        tl.store(SingleCount, tl.sum(singles, axis=0))
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_map = p < n_slots
    expert = tl.sum((pairs_end[None, :] <= p[:, None]).to(tl.int32), axis=1)
    first = tl.sum(tl.where(experts[None, :] == expert[:, None], (pairs_end - pairs)[None, :], 0), axis=1)
    tl.store(PairMap + p, expert, mask=in_map)
    tl.store(PairMap + stride_map + p, p - first, mask=in_map)
    expert = tl.sum((singles_end[None, :] <= p[:, None]).to(tl.int32), axis=1)
    last = tl.sum(tl.where(experts[None, :] == expert[:, None], (m_tiles - 1)[None, :], 0), axis=1)
    tl.store(SingleMap + p, expert, mask=in_map)
    tl.store(SingleMap + stride_map + p, last, mask=in_map)


def split_launch(a: Any, w: Any, routing: Any, mode: str, tile: Any) -> tuple[Any, Any]:
    """(run, output): ``_paired`` (every half computed) over the experts' m-tile pairs, then the
    library's persistent kernel with ``tile`` over the odd m-tiles left, two launches after one map."""
    from resilient_moe._moe_details.launch import prepare
    from resilient_moe.config import TileConfig

    half = TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=3, is_persistent=True)
    paired = prepare(a, w, None, routing, mode, half)
    single = prepare(a, w, None, routing, mode, tile, out=paired.y if mode == "gather" else None)
    slots = paired.before.y.shape[1]
    device = a.device
    pair_map, single_map = (torch.empty((2, slots), dtype=torch.int32, device=device) for _ in range(2))
    pair_count, single_count = (torch.empty(1, dtype=torch.int32, device=device) for _ in range(2))
    map_args = (routing.expert_offsets, pair_map, pair_count, single_map, single_count, routing.n_experts, slots,
                pair_map.stride(0))
    map_constexprs = {"BLOCK_M": 128, "EXPERTS_POW2": triton.next_power_of_2(routing.n_experts), "BLOCK": 128}
    pair_args = (*paired.args[:10], pair_map, pair_count, *paired.args[12:-1], pair_map.stride(0))
    single_args = list(single.args)
    if mode == "scatter":
        single_args[4] = paired.y
    single_args[10:12] = [single_map, single_count]
    single_args[-1] = single_map.stride(0)

    def run() -> None:
        _split_map[(triton.cdiv(slots, 128),)](*map_args, **map_constexprs)
        _paired[paired.grid](*pair_args, **{**paired.constexprs, "SKIP": False})
        single.kernel[single.grid](*single_args, **single.constexprs)

    return run, paired.y


def paired_launch(a: Any, w: Any, routing: Any, mode: str, num_stages: int, skip: bool) -> tuple[Any, Any]:
    """(run, output) of ``_paired`` with 128 x 128 halves: the library's persistent launch of a 128 x 128
    tile gives the descriptors and arguments; its tile map is swapped for one built for 256 rows."""
    from resilient_moe._moe_details.launch import _tile_map, prepare
    from resilient_moe.config import TileConfig

    half = TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=num_stages, is_persistent=True)
    base = prepare(a, w, None, routing, mode, half)
    pairs = _tile_map(routing, 2 * half.block_m, base.before.y.shape[1])
    args = (*base.args[:10], pairs.y, pairs.result, *base.args[12:-1], pairs.y.stride(0))
    constexprs = {**base.constexprs, "SKIP": skip}

    def run() -> None:
        pairs.launch()
        _paired[base.grid](*args, **constexprs)

    return run, base.y


def variants_for(g: Any, tile: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The library's persistent, one-tile and 256-row launches, and the pair forms (``row`` records
    each pair form's largest difference from the persistent kernel's output)."""
    from breakdown import both_forms
    from resilient_moe._moe_details.launch import prepare

    routing, a, w, mode = g.routing, g.x, g.w, g.mode
    variants, ref = both_forms(g, tile)
    ref = ref.float()
    variants["m256"] = prepare(a, w, None, routing, mode, dataclasses.replace(tile, block_m=256, block_n=128)).launch
    runs = {name: paired_launch(a, w, routing, mode, stages, skip)
            for name, stages, skip in (("pair_skip_s3", 3, True), ("pair_all_s3", 3, False))}
    runs["split"] = split_launch(a, w, routing, mode, tile)
    for name, (run, y) in runs.items():
        y.zero_()
        run()
        row[f"{name}_max_err"] = float(((y.float() - ref).abs().max() / ref.abs().max()).item())
        variants[name] = run
    return variants


def main() -> None:
    from breakdown import against_ogs

    against_ogs("m-pairs", variants_for, ROUNDS)


if __name__ == "__main__":
    main()
