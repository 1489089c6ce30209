"""Experiment (not a library path): the builtin kernel against an earlier version of itself, same run.

    git show REV:resilient_moe/_moe_details/_kernel.py > /tmp/kernel_before.py
    python benchmarks/experiments/kernel_ab.py OUT_DIR /tmp/kernel_before.py   # GPU; matmul_ogs if on PYTHONPATH

Every GEMM of the kernel section, on the tile the dispatcher picks by default, launched once with the
library's ``_moe_matmul_kernel`` and once with the given file's (same arguments: the signature must not
have changed), with matmul_ogs for scale: device time of the GEMM kernel alone (torch.profiler; the
slot sum and matmul_ogs's reduction left out), rotating rounds, best round each.

Run on an H100 against the kernel of e99c95a, whose epilogue loaded scatter mode's slots and gammas
after the K loop (results/experiment-kernel-ab-h100.json): loading them before it is bit-for-bit equal
and never slower, 1.000 to 1.009 on the scatter-mode GEMMs, 1.02 and 1.05 on Mixtral up, 1.00 on
decode; the GEMM kernel then runs at 0.94 to 1.02 of matmul_ogs's.
"""
import dataclasses
import importlib.util
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 5


def load_kernel(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("kernel_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._moe_matmul_kernel


def main() -> None:
    from bench_moe import CASES, gemms, upstream
    from breakdown import profiled_rounds, save
    from resilient_moe._moe_details.launch import default_config, prepare
    from resilient_moe.targets import placement

    out_dir, before_path = sys.argv[1], sys.argv[2]
    before = load_kernel(before_path)
    up = upstream()
    arch = placement().arch
    rows = []
    for g in gemms(CASES, (False, True), up):
        routing, a, w, mode = g.routing, g.x, g.w, g.mode
        tile = default_config(routing.n_rows, g.n, g.k, g.case.experts, a.dtype, arch)
        launch = prepare(a, w, None, routing, mode, tile)
        variants: dict[str, Any] = {"now": launch.launch, "before": dataclasses.replace(launch, kernel=before).launch}
        if up:
            variants["ogs"] = g.upstream_call(up[0])
        outputs = {}
        for name in ("now", "before"):
            launch.y.fill_(float("nan"))
            variants[name]()
            outputs[name] = launch.y.clone()
        best = profiled_rounds(variants, ROUNDS)
        row = {"case": g.case.name, "gemm": g.label, "skew": g.skew, "tile": tile.as_dict(),
               "equal": bool(torch.equal(outputs["now"], outputs["before"])),
               "now_vs_before": round(best["before"] / best["now"], 4)}
        if "ogs" in best:
            row["now_vs_ogs"] = round(best["ogs"] / best["now"], 4)
        save(out_dir, "kernel-ab", rows, row, best, g.flops, rounds=ROUNDS, before=before_path)


if __name__ == "__main__":
    main()
