"""Experiment (not a library path): which detail of matmul_ogs's non-persistent kernel makes it faster
than ours in gather mode.

    python benchmarks/experiments/gather_form.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

``ogs_variants.py`` found matmul_ogs held non-persistent 4 to 18% ahead of ours on the gather-mode
up-projections and level on the scatter-mode down-projections, with the same tile (128x256x64, 4
stages, 8 warps). What differs in gather mode is how the tile is written, so this kernel is ours
with each of matmul_ogs's forms behind a flag:
- ASSUME: ``tl.assume`` that strides are non-negative;
- WRAP_ROWS: padding rows of a tile read the expert's own rows (row index modulo the expert's row
  count) through an unmasked index load, instead of a masked load of row 0;
- SCALAR_BASE: the expert's offset moves the scalar base pointer before the tensor offsets are added.

Run on an H100 (results/experiment-gather-form-h100.json): WRAP_ROWS alone closes the gap (DeepSeek up
265 -> 286 TFLOP/s, matmul_ogs 284; gpt-oss up 283 -> 315 and, skewed, 295 -> 347), the other two
change nothing: every padded tile read X[0] for its padding rows, one row read by the whole grid at
once. Reading the tile's first row there instead ("ours" in results/...-tile-first-row-h100.json)
fixed gpt-oss but not DeepSeek (267 against 286): all padding lanes of a tile then read one row.
The builtin kernel now wraps padding rows onto the tile's own rows ("ours" in
results/experiment-gather-form-wrapped-h100.json); form[] keeps the first, masked load.
"""
import functools
import os
import sys

import torch
import triton
import triton.language as tl

from resilient_moe._moe_details._kernel import expert_tiles, store_tile, tile_of

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@triton.jit
def _variant(X, W, Y, ExpertOffsets, GatherIdx, n_experts, N, K, stride_xm, stride_xk, stride_we, stride_wk,
             stride_wn, stride_ym, stride_yn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr, EXPERTS_POW2: tl.constexpr, INDEX_64: tl.constexpr, ASSUME: tl.constexpr,
             WRAP_ROWS: tl.constexpr, SCALAR_BASE: tl.constexpr):
    if ASSUME:
        tl.assume(stride_xm >= 0)
        tl.assume(stride_xk >= 0)
        tl.assume(stride_we >= 0)
        tl.assume(stride_wk >= 0)
        tl.assume(stride_wn >= 0)
        tl.assume(stride_ym >= 0)
        tl.assume(stride_yn >= 0)
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    pid = tl.program_id(0)
    experts, row_lo, row_hi, m_tiles, m_tiles_end, num_pid_m = expert_tiles(ExpertOffsets, n_experts, BLOCK_M,
                                                                            EXPERTS_POW2)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if pid >= num_pid_m * num_pid_n:
        return
    expert, pid_n, row_start, row_end = tile_of(pid, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m,
                                                num_pid_n, BLOCK_M, GROUP_M)
    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < row_end
    if WRAP_ROWS:
        first = tl.sum(tl.where(experts == expert, row_lo, 0), axis=0)
        x_rows = tl.load(GatherIdx + first + (rows - first) % (row_end - first))  # no contiguity hint: it wraps
    else:
        x_rows = tl.load(GatherIdx + rows, mask=row_mask, other=0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_n = tl.max_contiguous(tl.multiple_of(offs_n, BLOCK_N), BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + (x_rows.to(index)[:, None] * stride_xm + offs_k.to(index)[None, :] * stride_xk)
    if SCALAR_BASE:
        Wx = W + expert.to(index) * stride_we
        w_ptrs = Wx + (offs_k.to(index)[:, None] * stride_wk + offs_n.to(index)[None, :] * stride_wn)
    else:
        w_ptrs = W + expert.to(index) * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        acc = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs), acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    store_tile(Y, acc, rows, row_mask, offs_n, n_mask, stride_ym, stride_yn, index)


def launch(x, w, routing, config, index_64, **flags):
    E, K, N = w.shape
    y = torch.empty(routing.n_rows, N, dtype=x.dtype, device=x.device)
    tiles = min(triton.cdiv(routing.n_rows, config.block_m) + E, routing.n_rows) * triton.cdiv(N, config.block_n)
    _variant[(tiles,)](x, w, y, routing.expert_offsets, routing.gather_idx, E, N, K, *x.stride(), *w.stride(),
                       *y.stride(), BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                       GROUP_M=config.group_m, EXPERTS_POW2=triton.next_power_of_2(E), INDEX_64=index_64,
                       num_warps=config.num_warps, num_stages=config.num_stages, **flags)
    return y


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, cached_tile, gemms, rounds, upstream
    from breakdown import record
    from resilient_moe._moe_details.launch import prepare

    out_dir = sys.argv[1]
    up = upstream()
    if not up:
        raise SystemExit("needs upstream triton_kernels on PYTHONPATH")
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        if g.mode != "gather":
            continue
        routing, a, w = g.routing, g.x, g.w
        ref = rm.moe_matmul(a, w, routing, "gather")
        config = cached_tile(a, w, routing, "gather")
        index_64 = prepare(a, w, None, routing, "gather", config).constexprs["INDEX_64"]
        ogs_np = g.upstream_call(up[0], {"is_persistent": False})

        variants = {"ours": lambda: rm.moe_matmul(a, w, routing, "gather"), "ogs_non_persistent": ogs_np}
        for flags in ("", "ASSUME", "WRAP_ROWS", "SCALAR_BASE", "ASSUME WRAP_ROWS SCALAR_BASE"):
            on = dict.fromkeys(("ASSUME", "WRAP_ROWS", "SCALAR_BASE"), False) | dict.fromkeys(flags.split(), True)
            variants[f"form[{flags}]"] = functools.partial(launch, a, w, routing, config, index_64, **on)
        row = {"case": g.case.name, "skew": g.skew, "tile": config.as_dict(), "INDEX_64": index_64, "ms": {},
               "errors": {}}
        for name, fn in list(variants.items()):
            y = fn()
            if name.startswith("form") and not torch.equal(y, ref):
                row["errors"][name] = f"differs from ours: {float((y.float() - ref.float()).abs().max())}"
        row["ms"] = rounds(variants, 5, rep=25)
        row["tflops"] = {name: round(g.flops / t / 1e9) for name, t in row["ms"].items()}
        record(out_dir, "gather-form", rows, row)


if __name__ == "__main__":
    main()
