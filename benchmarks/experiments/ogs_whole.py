"""Experiment (not a library path): matmul_ogs's Hopper kernel structure as one whole, in our kernel family.

    python benchmarks/experiments/ogs_whole.py OUT_DIR [sweep]    # GPU, upstream triton_kernels on PYTHONPATH

Earlier experiments took matmul_ogs's choices one at a time (persistent_tma.py, tile_map.py,
ogs_variants.py, w_tma.py) and none closed the last 0 to 12% on prefill. This kernel has them all at
once, as matmul_ogs v3.5.1 runs them on an H100 (written from scratch here):
- persistent: one program per SM, a flattened loop over tiles (so the next tile's loads can start
  under this tile's epilogue), optionally warp-specialized;
- a tile map read with two loads a tile: m-tile -> (expert | block << 16), built beforehand on the
  device (matmul_ogs gets its map from the routing; its cost here is timed apart, ``map_us``);
- W through a host-built TMA descriptor; 3 stages (4 leave no room for the epilogue's buffer);
- gather mode: X rows through pointers wrapped into the expert, Y stored through a ragged TMA
  descriptor (triton.tools.ragged_tma: clipped at the expert's last row by the hardware, one
  descriptor for the whole call instead of one built per tile);
- scatter mode: X through a ragged TMA descriptor, Y through pointers into each row's slot.
``IO_TMA`` off keeps pointer stores (gather) and pointer loads (scatter), to tell that part apart.

Device time of the GEMM kernel alone (torch.profiler; slot sums and matmul_ogs's reduction left out),
rotating rounds, best round each, against the library's one-tile kernel on its default tile and matmul_ogs.

Run on an H100 twice and an H200 once (results/experiment-ogs-whole*-h*.json), "whole" against
matmul_ogs: H200 0.989 to 1.007 on the 12 prefill GEMMs (the one-tile kernel 0.901 to 0.985); H100
0.982 to 1.050 except DeepSeek-V3 up uniform, 0.855 and 0.860 (one-tile 0.917 to 1.027); decode 0.89
to 1.00 (one-tile 0.98 to 1.02). Adopted as the library's persistent kernel for sm_90 prefill tiles
(``TileConfig.is_persistent``); "sweep" looked at that DeepSeek-V3 row (group_m, stages, flattening).
"""
import dataclasses
import functools
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.ragged_tma import create_ragged_descriptor, load_ragged, store_ragged
from triton.tools.tensor_descriptor import TensorDescriptor

from resilient_moe._moe_details._kernel import expert_tiles, swizzle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5
TILE = (128, 256, 64, 3, 8)  # block_m, block_n, block_k, num_stages, num_warps: matmul_ogs's on H100 prefill
VARIANTS = {  # name: launch_whole's options. ws: warp-specialized; io_tma: Y (gather) or X (scatter) through
    # TMA; y_device: Y's descriptor rebuilt on the device, as matmul_ogs does
    "whole": dict(ws=False, io_tma=True), "whole_ws": dict(ws=True, io_tma=True),
    "whole_ptr": dict(ws=False, io_tma=False), "whole_ws_ptr": dict(ws=True, io_tma=False),
    "whole_ws_ydev": dict(ws=True, io_tma=True, y_device=True),
}
SWEEP = {  # "sweep": DeepSeek-V3 prefill only, where the persistent kernel lost on the uniform routing
    "whole": dict(ws=False, io_tma=True), "whole_ptr": dict(ws=False, io_tma=False),
    "whole_ptr_s4": dict(ws=False, io_tma=False, stages=4), "whole_noflat": dict(ws=False, io_tma=True, flatten=False),
    "whole_ptr_s4_noflat": dict(ws=False, io_tma=False, stages=4, flatten=False),
    "whole_g4": dict(ws=False, io_tma=True, group_m=4), "whole_g16": dict(ws=False, io_tma=True, group_m=16),
    "whole_g1": dict(ws=False, io_tma=True, group_m=1),
}


@triton.jit
def _tile_map_kernel(ExpertOffsets, TileData, TileCount, n_experts, bound, BLOCK_M: tl.constexpr,
                     EXPERTS_POW2: tl.constexpr, BLOCK: tl.constexpr):
    """TileData[p] = expert | (m-block within the expert) << 16 for each m-tile p in expert order, and
    TileCount = the number of m-tiles: one program, no host sync."""
    experts, _, _, tiles, ends, total = expert_tiles(ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2)
    tl.store(TileCount, total)
    for first in range(0, bound, BLOCK):
        p = first + tl.arange(0, BLOCK)
        expert = tl.sum((ends[None, :] <= p[:, None]).to(tl.int32), axis=1)
        start = tl.sum(tl.where(experts[None, :] == expert[:, None], (ends - tiles)[None, :], 0), axis=1)
        tl.store(TileData + p, expert | ((p - start) << 16), mask=p < bound)


@triton.jit
def _whole(X, XDesc, WDesc, YDesc, Y, TileData, TileCount, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, N, K,
           stride_xm, stride_xk, stride_ym, stride_yn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SCATTER: tl.constexpr, NUM_SMS: tl.constexpr,
           WS: tl.constexpr, IO_TMA: tl.constexpr, Y_DEVICE: tl.constexpr, FLATTEN: tl.constexpr):
    if Y_DEVICE:  # the ragged descriptor rebuilt once per program on the device, as matmul_ogs does
        YDesc = tl.make_tensor_descriptor(Y, YDesc.shape, YDesc.strides[:-1] + (1,), YDesc.block_shape)
    num_pid_m = tl.load(TileCount)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for t in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
        data = tl.load(TileData + pid_m)
        expert = data & 0xFFFF
        off_m = (data >> 16) * BLOCK_M
        row_lo = tl.load(ExpertOffsets + expert)
        count = tl.load(ExpertOffsets + expert + 1) - row_lo
        off_n = pid_n * BLOCK_N
        wrapped = tl.max_contiguous(tl.multiple_of((off_m + tl.arange(0, BLOCK_M)) % count, BLOCK_M), BLOCK_M)
        if SCATTER:
            x_rows = row_lo + wrapped
        else:
            x_rows = tl.load(GatherIdx + row_lo + wrapped)
        x_ptrs = X + x_rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(k_tiles):
            if SCATTER and IO_TMA:
                x = load_ragged(XDesc, row_lo, count, [off_m, ki * BLOCK_K])
            else:
                x = tl.load(x_ptrs)
                x_ptrs += BLOCK_K * stride_xk
            w = WDesc.load([expert, ki * BLOCK_K, off_n]).reshape(BLOCK_K, BLOCK_N)
            acc = tl.dot(x, w, acc)
        rows = off_m + tl.arange(0, BLOCK_M)
        row_mask = rows < count
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if SCATTER:
            slots = tl.load(ScatterIdx + row_lo + rows, mask=row_mask, other=0)
            acc *= tl.load(Gammas + slots, mask=row_mask, other=0.0)[:, None]
            y_ptrs = Y + slots[:, None] * stride_ym + offs_n[None, :] * stride_yn
            tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_mask[:, None] & (offs_n < N)[None, :])
        elif IO_TMA:
            store_ragged(YDesc, row_lo, count, [off_m, off_n], acc.to(Y.dtype.element_ty))
        else:
            y_ptrs = Y + (row_lo + rows)[:, None] * stride_ym + offs_n[None, :] * stride_yn
            tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_mask[:, None] & (offs_n < N)[None, :])


def tile_map(routing: Any, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    bound = min(triton.cdiv(routing.n_rows, block_m) + routing.n_experts, max(routing.n_rows, 1))
    data = torch.empty(bound, dtype=torch.int32, device=routing.expert_offsets.device)
    count = torch.empty(1, dtype=torch.int32, device=data.device)
    _tile_map_kernel[(1,)](routing.expert_offsets, data, count, routing.n_experts, bound, BLOCK_M=block_m,
                           EXPERTS_POW2=triton.next_power_of_2(routing.n_experts), BLOCK=64)
    return data, count


def launch_whole(x: torch.Tensor, w: torch.Tensor, routing: Any, mode: str, tmap: tuple[torch.Tensor, torch.Tensor],
                 out: torch.Tensor, ws: bool, io_tma: bool, y_device: bool = False, stages: int = TILE[3],
                 flatten: bool = True, group_m: int = 8) -> None:
    bm, bn, bk, _, warps = TILE
    E, K, N = w.shape
    scatter = mode == "scatter"
    wdesc = TensorDescriptor(w, [E, K, N], [w.stride(0), w.stride(1), 1], [1, bk, bn])
    xdesc = create_ragged_descriptor(x, [bm, bk]) if scatter and io_tma else None
    ydesc = create_ragged_descriptor(out, [bm, bn]) if not scatter and io_tma else None
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 3  # 3: the interpreter
    _whole[(sms,)](x, xdesc, wdesc, ydesc, out, tmap[0], tmap[1], routing.expert_offsets,
                   None if scatter else routing.gather_idx, routing.scatter_idx if scatter else None,
                   routing.flat_gammas if scatter else None, N, K, x.stride(0), x.stride(1), out.stride(0),
                   out.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, SCATTER=scatter, NUM_SMS=sms,
                   WS=ws, IO_TMA=io_tma, Y_DEVICE=y_device and not scatter, FLATTEN=flatten, num_warps=warps, num_stages=stages)


def main() -> None:
    from bench_moe import CASES, gemms, upstream
    from breakdown import kernel_times, profiled_rounds, save
    from resilient_moe._moe_details.launch import default_config, prepare
    from resilient_moe.targets import placement

    out_dir = sys.argv[1]
    sweep = sys.argv[2:] == ["sweep"]
    table = SWEEP if sweep else VARIANTS
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    up = upstream()
    arch = placement().arch
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES[:1] if sweep else CASES, (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        tile = default_config(routing.n_rows, g.n, g.k, g.case.experts, a.dtype, arch)
        launch = prepare(a, w, None, routing, mode, tile)
        launch.launch()
        ref = launch.y.clone()
        tmap = tile_map(routing, TILE[0])
        variants: dict[str, Any] = {"ours": launch.launch}
        if sweep:  # 3 stages helped the library's kernel on uniform DeepSeek-V3 up alone (experiments/stages.py)
            variants["ours_s3"] = prepare(a, w, None, routing, mode, dataclasses.replace(tile, num_stages=3)).launch
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "tile": tile.as_dict(),
                               "map_us": round(sum(kernel_times(lambda: tile_map(routing, TILE[0])).values()), 2)}
        for name, options in table.items():
            if options.get("y_device") and mode == "scatter":
                continue
            out = torch.full_like(ref, float("nan"))
            try:
                launch_whole(a, w, routing, mode, tmap, out, **options)
            except Exception as e:  # noqa: BLE001 - an experiment records what did not compile
                row[name] = f"{type(e).__name__}: {str(e)[:160]}"
                continue
            row[f"{name}_equal"] = bool(torch.equal(out, ref))
            variants[name] = functools.partial(launch_whole, a, w, routing, mode, tmap, out, **options)
        best = profiled_rounds(variants, ROUNDS)
        if "ogs" in best:
            row["vs_ogs"] = {k: round(best["ogs"] / v, 3) for k, v in best.items()}
        save(out_dir, "ogs-whole-sweep" if sweep else "ogs-whole", rows, row, best, g.flops, rounds=ROUNDS, tile=TILE)


if __name__ == "__main__":
    main()
