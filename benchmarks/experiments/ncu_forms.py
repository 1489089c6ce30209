"""Experiment (not a library path): where the persistent kernel's time goes on DeepSeek-V3 prefill, by Nsight Compute.

    ncu --profile-from-start off --csv --page raw --metrics METRICS python benchmarks/experiments/ncu_forms.py > ncu.csv
    python benchmarks/experiments/ncu_forms.py --parse ncu.csv order.json OUT.json    # anywhere

On an H100 the persistent kernel ran DeepSeek-V3 up uniform at 0.86 of matmul_ogs where the one-tile
kernel at 3 stages ran at 1.00, while on the skewed routing it was the other way round
(experiments/ogs_whole.py). Each variant runs once between cudaProfilerStart/Stop after a warm-up,
so ncu sees exactly one GEMM per variant, in the order printed to stderr as JSON (its last line).

H100 (results/experiment-ncu-forms*-h100.json), DeepSeek-V3 up uniform: all forms at 86 to 88% of DRAM
bandwidth, time following DRAM bytes read (persistent 20.3 to 20.7 GB, one-tile 18.4 to 18.5,
matmul_ogs 17.7 to 18.1, weights 15.0) while the SMs ask L2 for the same 32.2 to 32.8 GB.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

METRICS = ",".join([
    "gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_sector_hit_rate.pct",
    "lts__t_sectors_op_read.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed", "sm__warps_active.avg.pct_of_peak_sustained_active",
])
VARIANTS = {  # name: the sm_90 policy default (None: matmul_ogs)
    "persistent": {"is_persistent": True, "num_stages": 3},
    "persistent_g1": {"is_persistent": True, "num_stages": 3, "group_m": 1},
    "one_tile_s3": {"is_persistent": False, "num_stages": 3},
    "one_tile_s4": {"is_persistent": False, "num_stages": 4},
    "matmul_ogs": None,
}
GEMMS = [("up", False), ("up", True), ("down", False)]
if os.environ.get("NCU_FORMS_ONLY"):  # e.g. "up,0:persistent,matmul_ogs": one GEMM, some variants
    _gemm, _names = os.environ["NCU_FORMS_ONLY"].split(":")
    GEMMS = [(_gemm.split(",")[0], _gemm.split(",")[1] == "1")]
    VARIANTS = {name: VARIANTS[name] for name in _names.split(",")}


def run() -> None:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import resilient_moe as rm
    from bench_moe import CASES, gemms, upstream
    from resilient_moe.policy import parse_policy

    up = upstream()
    order: list[dict[str, Any]] = []
    for g in gemms(CASES[:1], (False, True), up):
        if (g.label, g.skew) not in GEMMS:
            continue
        for name, fields in VARIANTS.items():
            if fields is None:
                if up is None:
                    continue
                call = g.upstream_call(up[0])
            else:
                tile = {"block_m": 128, "block_n": 256, "block_k": 64, "num_warps": 8, **fields}
                policy = parse_policy({"version": 1, "ladder": {"compare_forms": False}, "arch": {"sm_90": {"default": tile}}})
                call = lambda policy=policy: rm.moe_matmul(g.x, g.w, g.routing, g.mode, policy=policy)  # noqa: E731
            call()
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            call()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            order.append({"gemm": g.label, "skew": g.skew, "variant": name})
    print(json.dumps(order), file=sys.stderr)


def parse(csv_path: str, order_path: str, out_path: str, metrics: str = METRICS) -> None:
    """Rows of ncu's raw CSV (a units row after the header), the GEMM kernel of each profiled range:
    ours ``_moe_matmul*`` (not the tile map or slot sum), matmul_ogs's ``_p_matmul``/``_matmul``."""
    lines = open(csv_path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = list(csv.DictReader(lines[start:]))[1:]
    gemm_rows = [r for r in rows if "matmul" in r["Kernel Name"] and "tile_map" not in r["Kernel Name"]
                 and "slot_sum" not in r["Kernel Name"] and "reduce" not in r["Kernel Name"]]
    order = json.load(open(order_path))
    assert len(gemm_rows) == len(order), (len(gemm_rows), len(order))
    out = []
    for what, r in zip(order, gemm_rows):
        m = {name: float(r[name].replace(",", "")) for name in metrics.split(",")}
        out.append({**what, "kernel": r["Kernel Name"][:60], **m})
        if metrics != METRICS:
            print(what, {name: f"{value:.4g}" for name, value in m.items()})
            continue
        print(f"{what['gemm']:4s} {str(what['skew']):5s} {what['variant']:14s} {m['gpu__time_duration.sum'] / 1e3:8.1f} us "
              f"dram read {m['dram__bytes_read.sum'] / 1e9:6.2f} GB write {m['dram__bytes_write.sum'] / 1e9:5.2f} GB "
              f"L2 hit {m['lts__t_sector_hit_rate.pct']:5.1f}% L2 read {m['lts__t_sectors_op_read.sum'] * 32 / 1e9:6.1f} GB "
              f"dram {m['dram__throughput.avg.pct_of_peak_sustained_elapsed']:5.1f}% sm {m['sm__throughput.avg.pct_of_peak_sustained_elapsed']:5.1f}%")
    json.dump(out, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--parse"]:
        parse(*sys.argv[2:6])
    elif sys.argv[1:2] == ["--metrics"]:
        print(METRICS)
    else:
        run()
