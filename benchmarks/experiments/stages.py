"""Experiment (not a library path): the default prefill tile's stage count and group size, per GEMM.

    python benchmarks/experiments/stages.py OUT_DIR     # GPU, upstream triton_kernels on PYTHONPATH

The recovery section's sweep keeps finding 128x256x64 at 3 stages fastest for the DeepSeek-V3 prefill
up-projection on an H100, and 4 stages for gpt-oss and Mixtral, while the default is 4 stages
everywhere. This times 3 and 4 stages, group_m 8 and 16, on every prefill GEMM of the kernel section
(rotating rounds, best round each), with matmul_ogs for scale.
"""
import functools
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROUNDS = 5


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, rounds, upstream
    from breakdown import record
    from resilient_moe._moe_details.launch import prepare

    out_dir = sys.argv[1]
    up = upstream()
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        variants = {}
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        for stages in (3, 4):
            for group_m in (8, 16):
                tile = rm.TileConfig(128, 256, 64, group_m=group_m, num_warps=8, num_stages=stages)
                variants[f"s{stages} g{group_m}"] = functools.partial(
                    lambda t: prepare(a, w, None, routing, mode, t).run(), tile)
        for fn in variants.values():
            fn()
        best = rounds(variants, ROUNDS, rep=25)
        row = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "k": g.k, "n": g.n,
               "rows_per_expert": -(-routing.n_rows // g.case.experts), "ms": best,
               "tflops": {name: round(g.flops / t / 1e9) for name, t in best.items()}}
        record(out_dir, "stages", rows, row, rounds=ROUNDS)


if __name__ == "__main__":
    main()
