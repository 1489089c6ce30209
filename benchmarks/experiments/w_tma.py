"""Experiment (not a library path): the builtin kernel with W (and in scatter mode X) loaded through
host-built TMA descriptors, one tile per program, everything else as the library's kernel.

    python benchmarks/experiments/w_tma.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

What is left against matmul_ogs is inside the K loop (experiments/kernel_ab.py: our GEMM kernel at 0.94
to 1.02 of its persistent TMA kernel). Earlier TMA variants were persistent, or stored Y through a
descriptor built on the device for every tile (persistent_tma.py, ogs_variants.py); this one changes
only how the K loop loads its operands. Scatter mode's X rows are contiguous in expert order, so a
descriptor over X loads a tile's rows directly (rows past the expert's end are read but never stored).
Device time of the GEMM kernel alone (torch.profiler), rotating rounds, best round each.

Run on an H100 (results/experiment-w-tma-h100.json): bit-for-bit equal to the library's kernel, and
no faster. At 4 stages W through TMA runs at 0.97 to 1.01 of the library's loads, X and W through TMA
(scatter) at 0.98 to 1.01; 3 stages help only uniform DeepSeek-V3 up (309 against 279 TFLOP/s, as
3 stages do with the library's loads) and Mixtral down uniform (780 against 767). TMA loads are not
what matmul_ogs gains in the K loop.
"""
import dataclasses
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from resilient_moe._moe_details._kernel import expert_tiles, source_rows, store_tile, tile_of

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5


@triton.jit
def _tma_loads(X, XDesc, WDesc, Y, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, n_experts, N, K, stride_xm, stride_xk,
               stride_ym, stride_yn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_M: tl.constexpr, EXPERTS_POW2: tl.constexpr, SCATTER: tl.constexpr, X_TMA: tl.constexpr,
               INDEX_64: tl.constexpr):
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    experts, row_lo, row_hi, m_tiles, m_tiles_end, num_pid_m = expert_tiles(ExpertOffsets, n_experts, BLOCK_M,
                                                                            EXPERTS_POW2)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    if pid >= num_pid_m * num_pid_n:
        return
    expert, pid_n, row_start, row_end = tile_of(pid, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m,
                                                num_pid_n, BLOCK_M, GROUP_M)
    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < row_end
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if SCATTER:
        y_rows = tl.load(ScatterIdx + rows, mask=row_mask, other=0)
        gamma = tl.load(Gammas + y_rows, mask=row_mask, other=0.0)
    else:
        y_rows = rows
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + source_rows(rows, row_start, row_end, GatherIdx, SCATTER).to(index)[:, None] * stride_xm \
        + offs_k[None, :] * stride_xk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if X_TMA:
            x = XDesc.load([row_start, k * BLOCK_K])
        else:
            x = tl.load(x_ptrs)
        w = WDesc.load([expert, k * BLOCK_K, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K * stride_xk
    if SCATTER:
        acc *= gamma[:, None]
    store_tile(Y, acc, y_rows, row_mask, offs_n, offs_n < N, stride_ym, stride_yn, index)


def tma_launch(launch: Any, x: torch.Tensor, w: torch.Tensor, x_tma: bool, stages: int) -> Any:
    """The library launch's operands and grid through ``_tma_loads``."""
    c = launch.constexprs
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    y, offsets, gather, scatter, gammas = launch.args[3:8]
    wdesc = TensorDescriptor(w, list(w.shape), list(w.stride()), [1, bk, bn])
    xdesc = TensorDescriptor(x, list(x.shape), list(x.stride()), [bm, bk]) if x_tma else None
    args = (x, xdesc, wdesc, y, offsets, gather, scatter, gammas, w.shape[0], w.shape[2], w.shape[1],
            *x.stride(), *y.stride())
    constexprs = {name: c[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EXPERTS_POW2", "SCATTER",
                                              "INDEX_64", "num_warps")}
    constexprs.update(X_TMA=x_tma, num_stages=stages)
    return dataclasses.replace(launch, kernel=_tma_loads, args=args, constexprs=constexprs)


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, upstream
    from breakdown import profiled_rounds, save
    from resilient_moe._moe_details.launch import prepare

    out_dir = sys.argv[1]
    up = upstream()
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        launch = prepare(a, w, None, routing, mode, rm.TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=4))
        launch.launch()
        ref = launch.y.clone()
        forms: dict[str, Any] = {"library s4": launch}
        for stages in (3, 4):
            forms[f"w_tma s{stages}"] = tma_launch(launch, a, w, False, stages)
            if mode == "scatter":
                forms[f"xw_tma s{stages}"] = tma_launch(launch, a, w, True, stages)
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "equal": {}, "errors": {}}
        variants: dict[str, Any] = {}
        for name, form in forms.items():
            launch.y.fill_(float("nan"))
            try:
                form.launch()
            except Exception as err:  # a form that does not compile is a result too
                row["errors"][name] = f"{type(err).__name__}: {err}"[:300]
                continue
            row["equal"][name] = bool(torch.equal(launch.y, ref))
            row.setdefault("max_abs_diff", {})[name] = float((launch.y.float() - ref.float()).abs().max())
            variants[name] = form.launch
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        save(out_dir, "w-tma", rows, row, profiled_rounds(variants, ROUNDS), g.flops, rounds=ROUNDS)


if __name__ == "__main__":
    main()
