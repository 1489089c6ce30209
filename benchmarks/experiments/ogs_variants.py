"""Experiment (not a library path): which of matmul_ogs's choices makes it faster than ours on prefill.

    python benchmarks/experiments/ogs_variants.py OUT_DIR [persistent|index]   # GPU, upstream triton_kernels on PYTHONPATH

matmul_ogs v3.5.1 runs the same tile as our default on Hopper prefill (128x256x64, 8 warps). Every
family times, in rotating rounds so that clock drift hits every variant alike (best round each), matmul_ogs as it
chooses, matmul_ogs held non-persistent, and ours, then:
- "persistent" (the default): the kernel of ``persistent_tma.py`` with W through TMA, with Y stored
  through a per-tile TMA descriptor (gather) or X loaded through one (scatter), persistent and with
  one tile per program (matmul_ogs is persistent with TMA on Hopper);
- "index": our kernel with 64-bit offsets everywhere, as it was before INDEX_64 (matmul_ogs computes
  offsets in int32 where no tensor spans 2**31 elements). A first run also tried reading W's columns
  modulo N instead of masking a ragged last n-tile, as matmul_ogs does: no faster on gpt-oss (N=5760
  and 2880), 0 to 4% slower, so it was not kept.
"""
import functools
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from persistent_tma import launch_persistent  # noqa: E402

ROUNDS = 5
TILE = (128, 256, 64)


def persistent_variants(a, w, routing, mode, n):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = (triton.cdiv(routing.n_rows, TILE[0]) + w.shape[0]) * triton.cdiv(n, TILE[1])
    gather = mode == "gather"
    run = functools.partial(launch_persistent, a, w, routing, mode, *TILE)
    return {
        "p_wtma_s3": lambda: run(3, 8, True, False, True, sms),
        "p_wtma_s4": lambda: run(4, 8, True, False, True, sms),
        "p_wtma_io_s3": lambda: run(3, 8, True, not gather, True, sms, y_tma=gather),
        "p_wtma_ws_s3": lambda: run(3, 8, True, False, True, sms, True),
        "p_wtma_io_ws_s3": lambda: run(3, 8, True, not gather, True, sms, True, y_tma=gather),
        "np_wtma_s4": lambda: run(4, 8, True, False, False, tiles),
        "np_wtma_io_s3": lambda: run(3, 8, True, not gather, False, tiles, y_tma=gather),
    }


def index_variants(a, w, routing, mode):
    """Ours on its cached tile, launched through the JIT as it is and with 64-bit offsets."""
    from bench_moe import cached_tile
    from resilient_moe._moe_details.launch import prepare

    winner = cached_tile(a, w, routing, mode)
    launch = prepare(a, w, None, routing, mode, winner)

    def run(changes):
        launch.kernel[launch.grid](*launch.args, **{**launch.constexprs, **changes})
        return launch.finish()

    return {
        "ours_same_kernel_jit": functools.partial(run, {}),
        "ours_int64": functools.partial(run, {"INDEX_64": True}),
    }, {"tile": winner.as_dict(), **{k: launch.constexprs[k] for k in ("INDEX_64", "EVEN_N")}}


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, rounds, upstream
    from breakdown import record

    out_dir = sys.argv[1]
    family = sys.argv[2] if len(sys.argv) > 2 else "persistent"
    up = upstream()
    if not up:
        raise SystemExit("needs upstream triton_kernels on PYTHONPATH")
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    rows = []
    for g in gemms(CASES[:3], (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        ogs = g.upstream_call(up[0])
        ogs_np = g.upstream_call(up[0], {"is_persistent": False})

        ref = rm.moe_matmul(a, w, routing, mode).float()
        row = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "ms": {}, "errors": {}}
        variants = {"ours": lambda: rm.moe_matmul(a, w, routing, mode), "ogs": ogs, "ogs_non_persistent": ogs_np}
        if family == "index":
            more, row["ours"] = index_variants(a, w, routing, mode)
            variants.update(more)
        else:
            variants.update(persistent_variants(a, w, routing, mode, g.n))
        for name, fn in list(variants.items()):
            try:
                y = fn()
                if not name.startswith("ogs"):
                    err = float(((y.float() - ref).abs().max() / ref.abs().max()).item())
                    if err > 2e-2:
                        raise AssertionError(f"wrong: relative error {err:.3g}")
            except Exception as err:
                row["errors"][name] = f"{type(err).__name__}: {str(err)[:200]}"
                del variants[name]
        row["ms"] = rounds(variants, ROUNDS, rep=25)
        row["tflops"] = {name: round(g.flops / t / 1e9) for name, t in row["ms"].items()}
        row["vs_ogs"] = {name: round(row["ms"]["ogs"] / t, 3) for name, t in row["ms"].items()}
        record(out_dir, f"ogs-variants-{family}", rows, row, rounds=ROUNDS)


if __name__ == "__main__":
    main()
