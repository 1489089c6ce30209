"""Experiment (not a library path): the MoE GEMM with its tile map precomputed, as matmul_ogs does.

    python benchmarks/experiments/tile_map.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

The builtin kernel finds its tile in the kernel: every program loads all expert offsets and takes a
cumsum and three reductions over them (EXPERTS_POW2 wide), so the host never reads routing data. With
256 experts that is work no program can overlap with its K loop. Here the map (m-tile -> expert, first
row) is built by torch ops on the device beforehand, and a program reads two ints; the rest of the
kernel is the builtin's own ``tile_matmul``. Same run, same operands: ours, the mapped variant, matmul_ogs.
"""
import functools
import json
import os
import sys

import torch
import triton
import triton.language as tl

from resilient_moe._moe_details._kernel import swizzle, tile_matmul


@triton.jit
def _mapped(X, W, Y, TileExpert, TileStart, TileCount, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, N, K,
            stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_ym, stride_yn,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
            SCATTER: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.load(TileCount)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if pid >= num_pid_m * num_pid_n:
        return
    pid_m, pid_n = swizzle(pid, num_pid_m, num_pid_n, GROUP_M)
    expert = tl.load(TileExpert + pid_m)
    row_start = tl.load(TileStart + pid_m)
    row_end = tl.load(ExpertOffsets + expert + 1)
    tile_matmul(X, W, None, Y, GatherIdx, ScatterIdx, Gammas, expert, pid_n, row_start, row_end, N, K,
                stride_xm, stride_xk, stride_we, stride_wk, stride_wn, 0, 0, stride_ym, stride_yn,
                BLOCK_M, BLOCK_N, BLOCK_K, SCATTER, False, EVEN_K, EVEN_N, False)


def tile_map(routing, block_m: int):
    """(expert, first row) of each m-tile in expert order, padded to the grid's upper bound, and the
    count of real m-tiles: torch ops on the device, no host sync."""
    offsets = routing.expert_offsets.long()
    tiles = (offsets[1:] - offsets[:-1] + block_m - 1) // block_m
    ends = torch.cumsum(tiles, 0)
    bound = min(triton.cdiv(routing.n_rows, block_m) + routing.n_experts, routing.n_rows)
    t = torch.arange(bound, device=offsets.device)
    expert = torch.searchsorted(ends, t, right=True).clamp_(max=routing.n_experts - 1)
    start = offsets[expert] + (t - (ends[expert] - tiles[expert])) * block_m
    return expert.int(), start.int(), ends[-1:].int(), bound


def launch_mapped(x, w, routing, mode, tmap, bm, bn, bk, stages, warps):
    E, K, N = w.shape
    scatter = mode == "scatter"
    out = torch.empty((routing.n_tokens * routing.top_k if scatter else routing.n_rows, N), dtype=x.dtype, device=x.device)
    expert, start, count, bound = tmap
    compiled = _mapped[(bound * triton.cdiv(N, bn),)](
        x, w, out, expert, start, count, routing.expert_offsets,
        None if scatter else routing.gather_idx, routing.scatter_idx if scatter else None,
        routing.flat_gammas if scatter else None, N, K,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, SCATTER=scatter, EVEN_K=K % bk == 0, EVEN_N=N % bn == 0,
        num_warps=warps, num_stages=stages)
    return (out.view(routing.n_tokens, routing.top_k, N).sum(1) if scatter else out), compiled


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench_moe import CASES, cached_tile, gemms, ms, upstream
    from experiments.persistent_tma import launch_persistent

    import resilient_moe as rm
    from resilient_moe._moe_details.launch import prepare

    up = upstream()
    rows = []
    for g in gemms(CASES, (False,), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        ref = rm.moe_matmul(a, w, routing, mode)
        tile = cached_tile(a, w, routing, mode)
        compiled = prepare(a, w, None, routing, mode, tile).launch()
        r = {"case": g.case.name, "gemm": g.label, "tile": str(tile), "ours_regs": compiled.n_regs,
             "ours_spills": compiled.n_spills, "ours_ms": ms(lambda: rm.moe_matmul(a, w, routing, mode))}
        if up:
            r["ogs_ms"] = ms(g.upstream_call(up[0]))
        cfg = (tile.block_m, tile.block_n, tile.block_k, tile.num_stages, tile.num_warps)
        tmap = tile_map(routing, tile.block_m)
        y, mapped = launch_mapped(a, w, routing, mode, tmap, *cfg)
        r["mapped_rel_err"] = float(((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
        r["mapped_regs"], r["mapped_spills"] = mapped.n_regs, mapped.n_spills
        r["mapped_ms"] = ms(lambda: launch_mapped(a, w, routing, mode, tmap, *cfg))
        r["mapped_with_map_ms"] = ms(lambda: launch_mapped(a, w, routing, mode, tile_map(routing, tile.block_m), *cfg))
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for stages in (3, 4):  # persistent, W through TMA, flattened loop: with and without the map
            p_cfg = (tile.block_m, tile.block_n, tile.block_k, stages, tile.num_warps, True, False, True, sms)
            for name, mapping in (("persistent", None), ("persistent_mapped", tmap)):
                fn = functools.partial(launch_persistent, a, w, routing, mode, *p_cfg, tmap=mapping)
                err = float(((fn().float() - ref.float()).abs().max() / ref.float().abs().max()).item())
                r[f"{name}_s{stages}_ms"] = ms(fn) if err < 2e-2 else f"wrong {err:.3g}"
        r["ours_ms_again"] = ms(lambda: rm.moe_matmul(a, w, routing, mode))
        r["tflops"] = {k: round(g.flops / v / 1e9, 1) for k, v in r.items() if k.endswith("_ms") and isinstance(v, float)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    with open(os.path.join(sys.argv[1], "experiment-tile-map.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
