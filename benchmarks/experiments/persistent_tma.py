"""Experiment (not a library path): persistent, TMA and warp-specialized variants of the MoE GEMM kernel.

    python benchmarks/experiments/persistent_tma.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

Run on an H200 on 2026-11-22 (results/experiment-persistent-tma-h200.json, ...-ws-h200.json): the persistent
loop with W (and, in scatter mode, X) through TMA descriptors reached 0.98 to 1.07 of matmul_ogs on Mixtral
and gpt-oss down, but not on the gather-mode many-expert prefills (0.76 to 0.87), so the builtin kernel
stays non-persistent; benchmarks/README.md has the table. Y_TMA (gather mode: Y stored through a
descriptor built per tile, ending at the expert's last row) was added for ogs_variants.py; rerun
there on an H100 after the padding-row fix, these variants were level with or behind the builtin
kernel (results/experiment-ogs-variants-persistent-wrapped-h100.json).
"""
import functools
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from resilient_moe._moe_details._kernel import expert_tiles, source_rows, store_tile, swizzle, tile_of


@triton.jit
def _persistent(X, W, WDesc, XDesc, Y, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, n_experts, N, K,
                stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_ym, stride_yn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                EXPERTS_POW2: tl.constexpr, SCATTER: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
                W_TMA: tl.constexpr, X_TMA: tl.constexpr, FLATTEN: tl.constexpr, WS: tl.constexpr = False,
                TileExpert=None, TileStart=None, TileCount=None, MAPPED: tl.constexpr = False,
                Y_TMA: tl.constexpr = False):
    if MAPPED:  # tile map precomputed (experiments/tile_map.py): two loads a tile instead of reductions
        num_pid_m = tl.load(TileCount)
    else:
        experts, row_lo, row_hi, m_tiles, m_tiles_end, num_pid_m = expert_tiles(ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for t in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WS):
        if MAPPED:
            pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
            expert = tl.load(TileExpert + pid_m)
            row_start = tl.load(TileStart + pid_m)
            row_end = tl.load(ExpertOffsets + expert + 1)
        else:
            expert, pid_n, row_start, row_end = tile_of(t, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m, num_pid_n, BLOCK_M, GROUP_M)
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        x_rows = source_rows(rows, row_start, row_end, GatherIdx, SCATTER)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        x_ptrs = X + x_rows.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = W + expert.to(tl.int64) * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            if X_TMA:
                x = XDesc.load([row_start, k * BLOCK_K])
            else:
                x = tl.load(x_ptrs)
            if W_TMA:
                w = WDesc.load([expert, k * BLOCK_K, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
            else:
                w = tl.load(w_ptrs)
            acc = tl.dot(x, w, acc)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        if Y_TMA:  # gather mode: a descriptor ending at the expert's last row, so the box stops there
            ydesc = tl.make_tensor_descriptor(Y, [row_end, N], [stride_ym, 1], [BLOCK_M, BLOCK_N])
            ydesc.store([row_start, pid_n * BLOCK_N], acc.to(Y.dtype.element_ty))
        else:
            if SCATTER:
                y_rows = tl.load(ScatterIdx + rows, mask=row_mask, other=0)
                acc *= tl.load(Gammas + y_rows, mask=row_mask, other=0.0)[:, None]
            else:
                y_rows = rows
            store_tile(Y, acc, y_rows, row_mask, offs_n, offs_n < N, stride_ym, stride_yn, tl.int64)


def launch_persistent(x, w, routing, mode, bm, bn, bk, stages, warps, w_tma, x_tma, flatten, programs, ws=False, tmap=None,
                      y_tma=False):
    E, K, N = w.shape
    scatter = mode == "scatter"
    slots = routing.n_tokens * routing.top_k
    out = torch.empty((slots if scatter else routing.n_rows, N), dtype=x.dtype, device=x.device)
    wdesc = TensorDescriptor(w, [E, K, N], [w.stride(0), w.stride(1), 1], [1, bk, bn]) if w_tma else None
    xdesc = TensorDescriptor(x, [x.shape[0], K], [x.stride(0), 1], [bm, bk]) if x_tma else None
    _persistent[(programs,)](x, w, wdesc, xdesc, out, routing.expert_offsets,
        None if scatter else routing.gather_idx, routing.scatter_idx if scatter else None,
        routing.gammas.view(-1) if scatter else None, E, N, K,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, EXPERTS_POW2=triton.next_power_of_2(E), SCATTER=scatter,
        NUM_PROGRAMS=programs, W_TMA=w_tma, X_TMA=x_tma, FLATTEN=flatten, WS=ws,
        TileExpert=None if tmap is None else tmap[0], TileStart=None if tmap is None else tmap[1],
        TileCount=None if tmap is None else tmap[2], MAPPED=tmap is not None, Y_TMA=y_tma, num_warps=warps,
        num_stages=stages)
    return out.view(routing.n_tokens, routing.top_k, N).sum(1) if scatter else out


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch
    from triton.testing import do_bench
    import resilient_moe as rm
    from resilient_moe._moe_details.launch import prepare
    from bench_moe import CASES, gemms, upstream

    out_dir = sys.argv[1]

    def ms(fn):
        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))

    up = upstream()
    flags = []
    if up:
        import triton_kernels.matmul_ogs as mo
        orig = mo.make_opt_flags
        def spy(*a, **k):
            f = orig(*a, **k)
            names = ("block_m", "block_n", "block_k", "num_warps", "num_stages", "is_persistent", "split_k",
                     "epilogue_subtile", "fused_scatter")
            flags.append({n: getattr(f, n) for n in names})
            return f
        mo.make_opt_flags = spy
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    SWEEP = [(128, 256, 64, 3, 8), (128, 256, 64, 4, 8), (64, 256, 64, 4, 4), (128, 128, 64, 4, 4), (128, 256, 128, 2, 8)]
    PERS = [(128, 256, 64, 3, 8), (128, 256, 64, 4, 8)]
    rows = []
    for g in gemms(CASES[:3], (False,), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        ref = rm.moe_matmul(a, w, routing, mode)
        r = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "ours_default_ms": ms(lambda: rm.moe_matmul(a, w, routing, mode))}
        if up:
            call = g.upstream_call(up[0])
            flags.clear()
            call()
            r["ogs_flags"] = flags[-1] if flags else None
            r["ogs_ms"] = ms(call)
        for cfg in SWEEP:
            tile = rm.TileConfig(block_m=cfg[0], block_n=cfg[1], block_k=cfg[2], group_m=8, num_stages=cfg[3], num_warps=cfg[4])
            try:
                r[f"np {cfg}"] = ms(lambda: prepare(a, w, None, routing, mode, tile).run())
            except Exception as e:
                r[f"np {cfg}"] = f"{type(e).__name__}"
        for cfg in PERS:
            for w_tma, x_tma, flat, ws in ((False, False, False, False), (True, False, False, False), (True, False, True, False), (True, False, True, True), (True, True, True, True), (True, True, True, False)):
                if x_tma and mode == "gather":
                    continue
                name = f"p {cfg} wtma={int(w_tma)} xtma={int(x_tma)} flat={int(flat)} ws={int(ws)}"
                fn = functools.partial(launch_persistent, a, w, routing, mode, *cfg, w_tma, x_tma, flat, sms, ws)
                try:
                    y = fn()
                    err = float(((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
                    r[name] = ms(fn) if err < 2e-2 else f"wrong {err:.3g}"
                except Exception as e:
                    r[name] = f"{type(e).__name__}: {str(e)[:120]}"
        best = min((v, kk) for kk, v in r.items() if isinstance(v, float) and kk not in ("ogs_ms",))
        r["best"] = best
        r["tflops"] = {kk: round(g.flops / v / 1e9) for kk, v in r.items() if isinstance(v, float)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(os.path.join(out_dir, "experiment-persistent-tma.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
