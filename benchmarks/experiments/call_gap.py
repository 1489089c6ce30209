"""Experiment (not a library path): a whole call's time against the device time of its kernels.

    python benchmarks/experiments/call_gap.py OUT_DIR    # GPU, upstream triton_kernels on PYTHONPATH

The kernel section times whole calls (do_bench); the experiments time GEMM kernels alone
(torch.profiler). Our whole calls came out further below our GEMM kernels than matmul_ogs's did (a few
percent), in different runs. This measures, in one run, per prefill GEMM of the kernel section and per
callable (ours, matmul_ogs): the whole call's median ms (do_bench, rotating rounds, the median round),
the summed device time of every kernel a call launches (torch.profiler), their difference (the gap:
time the GPU is idle or waiting inside a call), and the host time a call takes to return, with the GPU
busy.

H100, two runs (results/experiment-call-gap{,-second-run}-h100.json): no gap of ours to close. Whole
call minus device time ran -551 to +103 us for ours and -233 to +148 for matmul_ogs, both signs on
both, the size of the clock drift between the two measurements, not a cost inside a call; the tile
map kernel takes 1.7 to 10 us. A call returns to the host in 147 to 364 us (one 1364) for ours, 366 to
1595 for matmul_ogs,
hidden behind the milliseconds of GPU work either way. So the whole-call ratios of the kernel section
are the kernels' own.
"""
import os
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 4


def host_us(fn: Any, calls: int = 30) -> float:
    """Host us per call, queued behind GPU work so that no call waits on the device."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # keep the GPU busy while the calls are queued
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, round_times, upstream
    from breakdown import kernel_times, record

    out_dir = sys.argv[1]
    up = upstream()
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES[:3], (False, True), up):
        fns = {"ours": lambda g=g: rm.moe_matmul(g.x, g.w, g.routing, g.mode)}
        if up:
            fns["ogs"] = g.upstream_call(up[0])
        for fn in fns.values():
            fn()
        whole = {name: statistics.median(found) * 1e3 for name, found in round_times(fns, ROUNDS).items()}
        row: dict[str, Any] = {"case": g.case.name, "gemm": g.label, "skew": g.skew}
        for name, fn in fns.items():
            kernels = kernel_times(fn)
            device = sum(kernels.values())
            row[name] = {"whole_us": round(whole[name], 1), "device_us": round(device, 1),
                         "gap_us": round(whole[name] - device, 1), "host_us": round(host_us(fn), 1),
                         "kernels": {k: round(v, 1) for k, v in kernels.items()}}
        record(out_dir, "call-gap", rows, row, rounds=ROUNDS)


if __name__ == "__main__":
    main()
