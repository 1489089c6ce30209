"""Experiment (not a library path): the persistent default tile against 128x128 persistent tiles, per
prefill GEMM.

    python benchmarks/experiments/tile_shape.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

The recovery section's sweep put 128x128x64 at 4 stages and 4 warps, persistent, first on DeepSeek-V3
up (uniform routing) on both the H100 (318 TFLOP/s against 258 for the default 128x256 at 3 stages)
and the H200 (403 against 391), while 128x256 led on gpt-oss and Mixtral. That sweep timed each tile
once, in a row. This times the default and 128x128 persistent tiles (4 and 5 stages, 4 and 8 warps) on
the 12 prefill GEMMs of the kernel section, both routings: device time of the GEMM kernels alone
(torch.profiler), rotating rounds, best round each, against matmul_ogs.

H100, two runs (results/experiment-tile-shape{,-second-run}-h100.json): 128x128 s4 w4 runs DeepSeek-V3
up uniform at 1.159 and 1.073 of matmul_ogs (the default 0.974 and 0.912), but its skewed twin, the
same shape class, at 0.92 both times (the default 1.034 and 1.019), and the other 10 GEMMs at 0.80
to 0.92 (the default 0.96 to 1.06). H200 (results/experiment-tile-shape-h200.json): 128x128 loses on
all 12, DeepSeek-V3 up uniform included (0.912 against the default's 1.048), so its lead is the
H100's alone. The default stays 128x256.
"""
import dataclasses
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5
SHAPES = {"n128_s4_w4": (4, 4), "n128_s4_w8": (4, 8), "n128_s5_w4": (5, 4)}
"""Variant name -> (num_stages, num_warps) of a 128x128x64 persistent tile."""


def variants_for(g: Any, tile: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The library's default launch and its 128x128 persistent launches."""
    from resilient_moe._moe_details.launch import prepare

    variants = {"default": prepare(g.x, g.w, None, g.routing, g.mode, tile).launch}
    for name, (stages, warps) in SHAPES.items():
        small = dataclasses.replace(tile, block_n=128, num_stages=stages, num_warps=warps, is_persistent=True)
        variants[name] = prepare(g.x, g.w, None, g.routing, g.mode, small).launch
    return variants


def main() -> None:
    from breakdown import against_ogs

    against_ogs("tile-shape", variants_for, ROUNDS)


if __name__ == "__main__":
    main()
