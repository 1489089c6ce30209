"""Experiment (not a library path): the persistent default tile at 4 stages, per prefill GEMM.

    git worktree add /tmp/s4 2ad125f && cd /tmp/s4    # the library with ``split_epilogue``, removed after
    python benchmarks/experiments/persistent_s4.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

The persistent default runs 3 stages because a fourth leaves no room, in gather mode, for the TMA
store's buffer of the whole 128x256 output tile: 262176 bytes against the sm_90 limit of 232448 (the
one-tile kernel's best tile ran 4). Scatter mode stores through pointers and fits 4 stages (229408
bytes). Storing gather mode's tile as two 128x128 halves (``split_epilogue``) halves that buffer, so 4
stages fit there too (229408 bytes; 3 stages: 213016 whole, 180248 split). This times the default
(3 stages, whole store), the split store at 3 stages (gather only) and 4 stages (gather: split) on
the 12 prefill GEMMs of the kernel section, both routings: device time of the GEMM kernels alone
(torch.profiler), rotating rounds, best round each, against matmul_ogs.

H100 (results/experiment-persistent-s4-h100.json): at 4 stages the uniform-routing GEMMs of
DeepSeek-V3 and gpt-oss lose 15 to 18% (0.820 to 0.842 of matmul_ogs, the default 0.971 to 1.007),
Mixtral's 1.5 and 1.9%; the skewed ones move by -0.8 to +1.5%. The split store alone is level or up
to 3.6% slower. Not adopted, so ``prepare``'s ``split_epilogue`` and the kernel's ``SPLIT_EPILOGUE``
were removed again: the script runs at commit 2ad125f only.
"""
import dataclasses
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5


def variants_for(g: Any, tile: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The library's default launch, its split store at 3 stages (gather mode) and 4 stages."""
    from resilient_moe._moe_details.launch import prepare

    gather = g.mode == "gather"
    variants = {"default": prepare(g.x, g.w, None, g.routing, g.mode, tile).launch}
    if gather:
        variants["split_s3"] = prepare(g.x, g.w, None, g.routing, g.mode, tile, split_epilogue=True).launch
    s4 = dataclasses.replace(tile, num_stages=4)
    variants["s4"] = prepare(g.x, g.w, None, g.routing, g.mode, s4, split_epilogue=gather).launch
    return variants


def main() -> None:
    from breakdown import against_ogs

    against_ogs("persistent-s4", variants_for, ROUNDS)


if __name__ == "__main__":
    main()
