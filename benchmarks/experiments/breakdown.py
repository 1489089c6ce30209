"""Experiment (not a library path): where the last few percent of prefill go, kernel by kernel.

    python benchmarks/experiments/breakdown.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

For every prefill GEMM of the kernel section, in one process:
- profile: the device time of each kernel a call launches (torch.profiler), ours against matmul_ogs,
  so a scatter-mode call splits into its GEMM and its slot sum; with the opt flags matmul_ogs chose;
- slot_sum (down-projections): the sum over each token's slots alone, torch.sum against a Triton
  kernel of one token's slots per program, on the rows our kernel wrote;
- tiles: a wider sweep of our tiles than experiments/stages.py, against matmul_ogs, in rotating rounds.

Run on an H100 (results/experiment-breakdown-h100.json): on the down-projections torch.sum over
[T, top_k, N] took 54 to 89 us where matmul_ogs's own reduction took 30 to 39 (Mixtral, top_k 2: 78
against 31), and alone it ran at 1.2 to 2.0 TB/s where the Triton slot sum ran at 2.5: the builtin
scatter mode now sums with that kernel. Our GEMM kernel alone was at 0.93 to 1.04 of matmul_ogs's, the
skewed routings behind most (experiments/grid.py looks at the grid); no tile of the sweep beat the
default 128x256x64 s4 by more than 1% except 3 stages on uniform DeepSeek-V3 up.
"""
import dataclasses
import functools
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROUNDS = 3
TILES = [  # (block_m, block_n, block_k, num_warps, num_stages, group_m)
    (128, 256, 64, 8, 4, 8),
    (128, 256, 64, 8, 3, 8),
    (128, 256, 128, 8, 2, 8),
    (128, 128, 128, 8, 3, 8),
    (128, 128, 64, 8, 5, 8),
    (256, 128, 64, 8, 3, 8),
    (64, 256, 64, 4, 5, 8),
    (128, 256, 64, 8, 4, 4),
]


@triton.jit
def _slot_sum(Y, Out, N, stride_y, stride_o, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(Y + (t * TOP_K + j) * stride_y + offs, mask=mask).to(tl.float32)
    tl.store(Out + t * stride_o + offs, acc.to(Out.dtype.element_ty), mask=mask)


def slot_sum_triton(y: torch.Tensor, top_k: int, out: torch.Tensor, block_n: int, warps: int) -> torch.Tensor:
    tokens, n = out.shape
    _slot_sum[(tokens, triton.cdiv(n, block_n))](y, out, n, y.stride(0), out.stride(0), top_k, block_n,
                                                  num_warps=warps)
    return out


def kernel_times(fn: Any, calls: int = 20) -> dict[str, float]:
    """Device us per call of each kernel ``fn`` launches, by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for item in prof.key_averages():
        us = getattr(item, "self_device_time_total", None)
        if us is None:
            us = item.self_cuda_time_total
        if us > 0 and not item.key.startswith(("aten::", "cuda", "Memcpy", "Memset")):
            totals[item.key[:80]] += us / calls
    return dict(totals)


def profiled_rounds(variants: dict[str, Any], rounds: int = ROUNDS) -> dict[str, float]:
    """Device us per call of each variant's kernels (a scatter call's slot sum and matmul_ogs's
    reduction left out), the best of ``rounds`` rotating rounds."""
    best: dict[str, float] = {}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            us = sum(v for k, v in kernel_times(variants[name]).items() if "reduce" not in k.lower() and "slot_sum" not in k)
            best[name] = min(us, best.get(name, us))
    return best


def save(out_dir: str, name: str, rows: list[dict[str, Any]], row: dict[str, Any], best: dict[str, float],
         flops: float, **fields: Any) -> None:
    """``record`` ``row`` with each variant's device us (``best``) and TFLOP/s."""
    row["gemm_us"] = {variant: round(us, 1) for variant, us in best.items()}
    row["tflops"] = {variant: round(flops / us / 1e6, 1) for variant, us in best.items()}
    record(out_dir, name, rows, row, **fields)


def record(out_dir: str, name: str, rows: list[dict[str, Any]], row: dict[str, Any], **fields: Any) -> None:
    """Print ``row``, add it to ``rows`` and rewrite OUT_DIR/experiment-NAME.json (the device, ``fields``,
    the rows), so a run cut short still leaves what it measured."""
    print(json.dumps(row), flush=True)
    rows.append(row)
    with open(os.path.join(out_dir, f"experiment-{name}.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), **fields, "rows": rows}, f, indent=1)


def both_forms(g: Any, tile: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """The library's persistent and one-tile launches of ``tile`` on ``g``, as variants, and the
    persistent launch's output (run once), which the experiments' own kernels are checked against."""
    from resilient_moe._moe_details.launch import prepare

    persistent = prepare(g.x, g.w, None, g.routing, g.mode, tile)
    one_tile = prepare(g.x, g.w, None, g.routing, g.mode, dataclasses.replace(tile, is_persistent=False))
    persistent.launch()
    return {"persistent": persistent.launch, "one_tile": one_tile.launch}, persistent.y.clone()


def against_ogs(name: str, variants_for: Callable[[Any, Any, dict[str, Any]], dict[str, Any]], rounds: int) -> None:
    """The loop of the experiments that time variants of the library's default tile: for each prefill
    GEMM of the kernel section (both routings), ``variants_for(gemm, tile, row)`` gives the variants
    (and may add fields to ``row``); matmul_ogs runs beside them; each variant's GEMM kernels' device
    time, best of ``rounds``, goes to OUT_DIR/experiment-NAME.json with its ratio to matmul_ogs's."""
    from bench_moe import CASES, gemms, upstream
    from resilient_moe._moe_details.launch import default_config
    from resilient_moe.targets import placement

    out_dir = sys.argv[1]
    up = upstream()
    arch = placement().arch
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES[:3], (False, True), up):
        tile = default_config(g.routing.n_rows, g.n, g.k, g.case.experts, g.x.dtype, arch)
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "tile": tile.as_dict()}
        variants = variants_for(g, tile, row)
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        for run in variants.values():
            run()
        best = profiled_rounds(variants, rounds)
        if "ogs" in best:
            row["vs_ogs"] = {k: round(best["ogs"] / v, 3) for k, v in best.items()}
        save(out_dir, name, rows, row, best, g.flops, rounds=rounds)


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, rounds, upstream
    from resilient_moe._moe_details.launch import prepare

    out_dir = sys.argv[1]
    up = upstream()
    flags_seen: list[Any] = []
    if up:
        import triton_kernels.matmul_ogs as ogs_module

        make = ogs_module.make_opt_flags

        def recording(*args: Any, **kwargs: Any) -> Any:
            flags = make(*args, **kwargs)
            flags_seen.append(flags)
            return flags

        ogs_module.make_opt_flags = recording
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "k": g.k, "n": g.n,
                               "rows": routing.n_rows, "rows_per_expert": -(-routing.n_rows // g.case.experts)}
        peers = {"ours": lambda: rm.moe_matmul(a, w, routing, mode)}
        if up:
            peers["ogs"] = g.upstream_call(up[0])
            flags_seen.clear()
            peers["ogs"]()
            if flags_seen:
                f = flags_seen[-1]
                row["ogs_flags"] = {name: getattr(f, name) for name in (
                    "block_m", "block_n", "block_k", "num_warps", "num_stages", "group_m", "split_k",
                    "is_persistent", "fused_scatter", "epilogue_subtile", "arch", "target_kernel_kwargs",
                ) if hasattr(f, name)}
                row["ogs_flags"] = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                                    for k, v in row["ogs_flags"].items()}
        row["profile_us"] = {name: kernel_times(fn) for name, fn in peers.items()}
        print(json.dumps(row), flush=True)

        if mode == "scatter":
            slots = routing.n_tokens * routing.top_k
            y = torch.randn(slots, g.n, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(routing.n_tokens, g.n, device="cuda", dtype=torch.bfloat16)
            view = y.view(routing.n_tokens, routing.top_k, g.n)
            sums = {"torch_sum": lambda: torch.sum(view, dim=1, out=out)}
            for block_n, warps in ((512, 4), (1024, 4), (2048, 8)):
                sums[f"triton_{block_n}_w{warps}"] = functools.partial(
                    slot_sum_triton, y, routing.top_k, out, block_n, warps)
            ref = torch.sum(view.float(), dim=1)
            row["slot_sum_max_err"] = {}
            for name, fn in sums.items():
                row["slot_sum_max_err"][name] = float((fn().float() - ref).abs().max())
            best = rounds(sums, ROUNDS, rep=25)
            row["slot_sum_us"] = {name: round(t * 1e3, 1) for name, t in best.items()}
            row["slot_sum_gbps"] = {name: round((y.numel() + out.numel()) * 2 / t / 1e6)
                                    for name, t in best.items()}
            del y, out, view

        variants = dict(peers)
        for bm, bn, bk, nw, ns, gm in TILES:
            tile = rm.TileConfig(bm, bn, bk, group_m=gm, num_warps=nw, num_stages=ns)
            variants[f"{bm}x{bn}x{bk} w{nw} s{ns} g{gm}"] = functools.partial(
                lambda t: prepare(a, w, None, routing, mode, t).run(), tile)
        for name, fn in list(variants.items()):
            try:
                fn()
            except Exception as err:  # a tile that does not fit this chip is a result too
                row.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"[:200]
                del variants[name]
        best = rounds(variants, ROUNDS, rep=25)
        row["tflops"] = {name: round(g.flops / t / 1e9) for name, t in best.items()}
        record(out_dir, "breakdown", rows, row, rounds=ROUNDS)


if __name__ == "__main__":
    main()
